"""The studies as data, their trial lists, and running/resuming a (miniature) study."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellsearch import zoo
from cellsearch.errors import ConfigError
from cellsearch.reproduce import (
    GREFF,
    JOZEFOWICZ,
    STUDIES,
    get,
    open_study_run,
    run_study,
    sample,
    study_config,
    summary_rows,
    trial_specs,
)
from cellsearch.reproduce.studies import Scale
from cellsearch.search.executor import InProcess
from cellsearch.store import Store, evaluations_frame


def test_the_studies_name_real_zoo_cells_and_tasks() -> None:
    for study in STUDIES.values():
        assert study.vanilla in study.variants
        for v in study.variants:
            zoo.get(v)
        for scale in ("smoke", "small", "paper"):
            specs = list(trial_specs(study, scale))
            assert len(specs) == len(study.variants) * len(study.tasks) * study.scale(scale).trials
    assert set(GREFF.variants) == {"lstm_peephole", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr"}
    assert {"jz_lstm", "jz_lstm_b", "jz_lstm_i", "jz_lstm_f", "jz_lstm_o", "gru_jz", "mut1", "mut2", "mut3"} <= set(
        JOZEFOWICZ.variants
    )


def test_the_papers_ranges_at_paper_scale() -> None:
    space = GREFF.scale("paper").space
    assert space["lr"] == {"dist": "loguniform", "low": 1e-6, "high": 1e-2}
    assert space["hidden"]["low"] == 20 and space["hidden"]["high"] == 200
    draws = [sample(space, np.random.default_rng(k)) for k in range(400)]
    assert all(0.0 <= d["momentum"] <= 0.99 + 1e-9 for d in draws)  # 1 - logU[0.01, 1]
    assert all(1e-6 <= d["lr"] <= 1e-2 for d in draws) and all(20 <= d["hidden"] <= 200 for d in draws)
    assert all(0 <= d["input_noise"] <= 1 for d in draws)
    assert GREFF.scale("paper").trials == 200
    assert GREFF.scale("paper").hp["optimizer"] == "sgd" and GREFF.scale("paper").hp["clip"] == 0.0


def test_trials_are_paired_across_cells_and_deterministic() -> None:
    specs = list(trial_specs(GREFF, "smoke", seed=3))
    again = list(trial_specs(GREFF, "smoke", seed=3))
    assert [s.key for s in specs] == [s.key for s in again]
    first_trial = specs[: len(GREFF.variants)]
    assert len({json.dumps(s.hp, sort_keys=True) for s in first_trial}) == 1  # every cell meets the same draw
    assert len({s.cell_hash for s in first_trial}) == len(GREFF.variants)
    other = list(trial_specs(GREFF, "smoke", seed=4))
    assert specs[0].hp != other[0].hp


def _mini() -> object:
    scale = Scale(
        trials=2,
        hp={"optimizer": "sgd", "clip": 0.0, "batch": 8, "steps": 8, "eval_every": 4, "eval_size": 16},
        task_options={"copy": {"length": 4, "n": 2}},
        space={
            "lr": {"dist": "loguniform", "low": 1e-3, "high": 1e-1},
            "hidden": {"dist": "int_loguniform", "low": 4, "high": 8},
        },
    )
    return dataclasses.replace(GREFF, variants=("lstm_peephole", "np"), tasks=("copy",), stand_ins={}, scales={"smoke": scale})


def test_a_study_runs_resumes_and_summarises(tmp_path: Path) -> None:
    study = _mini()
    store = Store(str(tmp_path / "s.db"), create=True)
    config = study_config(study, "smoke", 0, None)
    run_id = open_study_run(store, "mini", config)
    specs = list(trial_specs(study, "smoke"))
    prog = run_study(store, run_id, specs, InProcess())
    assert prog.total == 4 and prog.done == 4 and prog.cached == 0
    again = run_study(store, open_study_run(store, "mini", config), specs, InProcess())
    assert again.cached == 4  # resumed: nothing trained twice
    df = evaluations_frame(store, run="mini")
    assert len(df) == 4 and set(df["seed"]) == {0, 1}
    rows = summary_rows(store, "mini")
    assert [r["cell"] for r in rows] == ["lstm_peephole", "np"]  # np is the plain LSTM: matched by hash, not name
    assert all(r["trials"] == 2 for r in rows)
    with pytest.raises(ConfigError, match="pick another --name"):
        open_study_run(store, "mini", {**config, "scale": "small"})


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cellsearch", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["reproduce", "greff2017"], "unknown study 'greff2017'"),
        (["reproduce", "greff2016", "--ptb", "nowhere"], "no language-modelling task"),
        (["reproduce", "jozefowicz2015", "--ptb", "nowhere"], "option 'path'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    proc = cli(*args, "--db", str(tmp_path / "x.db"), cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()


def test_get_names_the_known_studies() -> None:
    with pytest.raises(ConfigError, match="greff2016, jozefowicz2015"):
        get("nope")


def test_a_study_can_grow_or_shrink_its_trial_count(tmp_path: Path) -> None:
    study = _mini()
    store = Store(str(tmp_path / "s.db"), create=True)
    config = study_config(study, "smoke", 0, None)
    run_id = open_study_run(store, "mini", config)
    more = {**config, "trials": 5}
    assert open_study_run(store, "mini", more) == run_id
    assert store.run_by_name("mini").config["trials"] == 5
    fewer = list(trial_specs(study, "smoke"))[:2]
    grown = dataclasses.replace(study, scales={"smoke": dataclasses.replace(study.scale("smoke"), trials=5)})
    assert [s.key for s in list(trial_specs(grown, "smoke"))[:2]] == [s.key for s in fewer]  # trial k: the same draw
