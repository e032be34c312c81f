"""Fitness arithmetic: Jozefowicz's accuracy ratio, the log-error skill, failures, the GRU floor."""

from __future__ import annotations

import math

import pytest

from cellsearch.search.score import FLOOR, cell_score, relative, skill, task_value


def test_accuracy_is_jozefowicz_ratio() -> None:
    assert relative(0.45, 0.9, 0.125, True) == pytest.approx(0.5)
    assert relative(0.9, 0.9, 0.125, True) == pytest.approx(1.0)


def test_errors_are_log_units_below_the_baseline() -> None:
    assert skill(0.0167, 0.167, False) == pytest.approx(math.log(10))
    assert skill(0.5, 0.167, False) == 0.0  # worse than the baseline: no skill, never negative
    assert relative(0.00167, 0.0167, 0.167, False) == pytest.approx(2.0)  # ten times smaller error than the GRU's 10x
    assert skill(0.0, 0.167, False) < 30  # a perfect cell gets a large, finite skill


def test_failures_score_zero_and_a_clueless_gru_is_not_a_yardstick() -> None:
    assert relative(None, 0.9, 0.125, True) == 0.0
    assert relative(float("nan"), 0.01, 0.167, False) == 0.0
    clueless = 0.167 * math.exp(-FLOOR / 2)  # the GRU barely below the baseline
    assert relative(0.0167, clueless, 0.167, False) == pytest.approx(math.log(10))


def test_task_value_and_cell_score() -> None:
    assert task_value([{"status": "ok", "valid": 0.5}, {"status": "timeout", "valid": 0.7}]) == pytest.approx(0.6)
    assert task_value([{"status": "ok", "valid": 0.5}, {"status": "diverged", "valid": None}]) is None
    assert cell_score({"copy": {"relative": 1.2}, "adding": {"relative": 0.8}}) == 0.8
