"""`cellsearch claims`: the experiments as data, each verdict rule on made-up results, and the whole
pipeline end to end at a tiny budget (the real smoke scale is a slow test)."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from cellsearch import zoo
from cellsearch.claims import analysis as an
from cellsearch.claims import experiments as ex
from cellsearch.claims.analysis import ArmResult
from cellsearch.cli import cli
from cellsearch.model import Model
from cellsearch.tasks import make_task
from cellsearch.train.loop import make_hp


@pytest.mark.parametrize("scale", ex.SCALES)
def test_every_claim_is_a_runnable_experiment(scale):
    items = ex.claims(scale)
    assert [c.number for c in items] == list(range(1, 9))
    for c in items:
        assert c.quote and c.experiment and c.rule
        for name in c.cells:
            zoo.get(name)
        if c.kind == "train":
            assert c.seeds >= 2 and len(c.arms) >= 2  # a Welch test needs two groups of two
            for a in c.arms:
                make_task(a.task, **a.options)
                make_hp(**a.hp)
        else:
            assert c.kind in ("reach", "cost") and c.settings


def test_unknown_scale_is_a_config_error():
    from cellsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown scale 'huge'"):
        ex.claims("huge")


def _params(cell, task, hidden, bidirectional=False, embed=None):
    m = Model(zoo.get(cell), make_task(task), hidden, embed, "reference", np.float64, 1, bidirectional)
    return sum(v.size for v in m.init(np.random.default_rng(0)).values())


def test_bilstm_and_lstm_have_about_the_same_parameters():
    c = next(c for c in ex.claims("small") if c.slug == "bidirectional")
    bi, uni = c.arms
    assert bi.hp["bidirectional"] and not uni.hp.get("bidirectional")
    n_bi = ex.model_params("lstm", bi.task, bi.options, bi.hp)
    n_uni = ex.model_params("lstm", uni.task, uni.options, uni.hp)
    assert abs(n_bi - n_uni) / n_bi < 0.05, (n_bi, n_uni)


def arm(label, tests, statuses=None, metric="accuracy", hib=True, baseline=0.25, cell=None, task="t", params=None, **extra):
    return ArmResult(label, cell or label, task, metric, hib, baseline, extra, statuses or ["ok"] * len(tests), list(tests),
                     [None] * len(tests), params)  # fmt: skip


def claim(number):
    return next(c for c in ex.claims("small") if c.number == number)


def test_long_lags_rules():
    rnn = arm("rnn", [0.25, 0.24, 0.26])
    gru = arm("gru", [1.0, 1.0, 1.0])
    assert an.long_lags(claim(1), [arm("lstm", [1.0, 0.99, 1.0]), rnn, gru]).verdict == an.SUPPORTED
    # LSTM did not learn it at this budget: nothing decided
    assert an.long_lags(claim(1), [arm("lstm", [0.3, 0.25, 0.26]), rnn, gru]).verdict == an.INCONCLUSIVE
    # the RNN does as well: the claim fails
    assert an.long_lags(claim(1), [arm("lstm", [1.0, 1.0, 0.98]), arm("rnn", [1.0, 0.99, 1.0]), gru]).verdict == an.NOT_SUPPORTED


def test_clipping_rules():
    c = claim(3)
    clip = arm("clip", [0.17, 0.16, 0.15], metric="mse", hib=False, baseline=0.167)
    raw = arm("raw", [None, None, 0.3], ["diverged", "diverged", "ok"], metric="mse", hib=False, baseline=0.167)
    v = an.clipping(c, [clip, raw])
    assert v.verdict == an.SUPPORTED and "2 of 3 without" in v.measured
    same = arm("raw", [0.17, 0.16, 0.15], metric="mse", hib=False)
    assert an.clipping(c, [clip, same]).verdict == an.INCONCLUSIVE
    worse = arm("clip", [None, 0.1, 0.1], ["diverged", "ok", "ok"], metric="mse", hib=False)
    assert an.clipping(c, [worse, same]).verdict == an.NOT_SUPPORTED


def test_two_cell_rules():
    c = claim(4)
    good = arm("bi", [0.95, 0.97, 0.96, 0.95, 0.96])
    bad = arm("uni", [0.5, 0.52, 0.49, 0.51, 0.5])
    v = an.two_cells(c, [good, bad])
    assert v.verdict == an.SUPPORTED and v.p is not None and v.p < 0.001
    assert an.two_cells(c, [bad, good]).verdict == an.NOT_SUPPORTED
    # both at chance: no evidence either way
    chance = [arm("a", [0.25, 0.26, 0.24]), arm("b", [0.25, 0.25, 0.26])]
    assert an.two_cells(c, chance).verdict == an.INCONCLUSIVE
    # both learn, no significant difference: the spread decides whether a gain of 0.05 is excluded
    tight = [arm("a", [0.9, 0.91, 0.9, 0.91, 0.9]), arm("b", [0.9, 0.91, 0.91, 0.9, 0.9])]
    v = an.two_cells(c, tight)
    assert v.verdict == an.NOT_SUPPORTED and "95% CI" in v.measured
    wide = [arm("a", [1.0, 1.0, 1.0, 0.0, 1.0]), arm("b", [1.0, 0.0, 1.0, 0.0, 1.0])]
    assert an.two_cells(c, wide).verdict == an.INCONCLUSIVE
    lo, hi = an.welch_interval([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert lo < 0 < hi and abs(lo + hi) < 1e-12


def test_slim_rules_per_variant_and_task():
    c = claim(6)
    lstm = arm("lstm", [0.9, 0.91, 0.9], cell="lstm", task="digits", params=100)
    keeps = arm("slim1", [0.9, 0.9, 0.91], cell="slim1", task="digits", params=80)
    loses = arm("slim3", [0.5, 0.52, 0.51], cell="slim3", task="digits", params=60)
    v = an.slim(c, [lstm, keeps, loses])
    assert v.verdict == an.PARTLY and "keep: slim1" in v.measured and "slim3" not in v.measured.split("keep:")[1]
    assert an.slim(c, [lstm, keeps]).verdict == an.SUPPORTED
    assert an.slim(c, [lstm, loses]).verdict == an.NOT_SUPPORTED
    # an error metric: the 5% is on the log skill over the mean predictor
    m_lstm = arm("lstm", [0.001, 0.0012, 0.0011], metric="mse", hib=False, baseline=0.167, cell="lstm", task="adding")
    m_slim = arm("slim1", [0.0011, 0.001, 0.0012], metric="mse", hib=False, baseline=0.167, cell="slim1", task="adding")
    assert an.slim(c, [m_lstm, m_slim]).verdict == an.SUPPORTED


def test_forecasting_against_persistence():
    c = claim(7)
    win = arm("lstm", [0.05, 0.06, 0.055], metric="nrmse", hib=False, baseline=1.0, task="mackey_glass", persistence=0.3)
    lose = arm("lstm", [0.5, 0.6, 0.55], metric="nrmse", hib=False, baseline=1.0, task="sunspots", persistence=0.4)
    assert an.forecasting(c, [win, win]).verdict == an.SUPPORTED
    assert an.forecasting(c, [win, lose]).verdict == an.PARTLY
    assert an.forecasting(c, [lose, lose]).verdict == an.NOT_SUPPORTED


def test_measured_claims_rules():
    rows = [
        {"cell": "rnn", "init": "default", "reach": 9, "ratio_at_max_lag": 1e-30},
        {"cell": "lstm", "init": "chrono", "reach": 201, "ratio_at_max_lag": 0.5},
    ]
    assert an.vanishing(claim(2), {"rows": rows, "max_lag": 200}).verdict == an.SUPPORTED
    rows[0]["ratio_at_max_lag"] = 0.1
    assert an.vanishing(claim(2), {"rows": rows, "max_lag": 200}).verdict == an.NOT_SUPPORTED
    cost = {
        "config": [32, 100, 8, 64],
        "rows": [
            {"cell": "lstm", "params": 400, "step_ms": 3.0},
            {"cell": "gru", "params": 300, "step_ms": 2.0},
            {"cell": "rnn", "params": 100, "step_ms": 1.0},
            {"cell": "slim1", "params": 350, "step_ms": 2.5},
        ],
    }
    assert an.gate_cost(claim(8), cost).verdict == an.SUPPORTED
    cost["rows"][1]["step_ms"] = 4.0
    assert an.gate_cost(claim(8), cost).verdict == an.PARTLY


@pytest.fixture
def tiny_budget(monkeypatch):
    """Every claim at a few steps and two seeds, the measurements at their smallest."""
    monkeypatch.setitem(ex._BUDGET, "smoke", {"steps": 4, "eval_every": 2, "eval_size": 8, "seeds": 2, "long_steps": 2})
    real = ex.claims

    def small_claims(scale):
        out = []
        for c in real(scale):
            if c.kind == "reach":
                st = {**c.settings, "options": {"lag": 12, "symbols": 4}, "hp": {"hidden": 4, "batch": 2}, "seeds": 1}
                c = ex.Claim(**{**c.__dict__, "settings": st})
            elif c.kind == "cost":
                c = ex.Claim(**{**c.__dict__, "settings": {**c.settings, "config": [2, 5, 3, 4], "rounds": 1}})
            elif c.number == 1:  # lag 1000 is the claim; a handful of steps keeps it cheap
                arms = tuple(ex.Arm(a.label, a.cell, a.task, {**a.options, "lag": 20}, a.hp) for a in c.arms)
                c = ex.Claim(**{**c.__dict__, "arms": arms})
            out.append(c)
        return out

    import cellsearch.claims.run as run_mod

    monkeypatch.setattr(run_mod, "claims", small_claims)


def test_claims_command_end_to_end(tmp_path, tiny_budget):
    db = tmp_path / "claims.db"
    out = tmp_path / "out"
    args = ["claims", "--scale", "smoke", "--db", str(db), "--out", str(out), "--workers", "0"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    text = (out / "summary.md").read_text()
    table = [line for line in text.splitlines() if re.match(r"^\| \d \|", line)]
    assert [int(line.split("|")[1]) for line in table] == list(range(1, 9))  # one row per claim
    verdicts = {an.SUPPORTED, an.NOT_SUPPORTED, an.PARTLY, an.INCONCLUSIVE}
    assert all(any(f"**{v}**" in line for v in verdicts) for line in table)
    data = json.loads((out / "claims.json").read_text())
    assert len(data["claims"]) == 8 and data["run"]["evaluations"] > 0
    for png in ("claims-trained.png", "claims-slim.png", "claims-gradient-flow.png", "claims-cost.png"):
        assert (out / png).stat().st_size > 10_000, png
    # the same command again resumes: nothing is trained twice
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    from cellsearch.store import Store

    with Store(str(db)) as store:
        run = store.run_by_name("claims-smoke")
        assert store.count_evaluations(run.id) == data["run"]["evaluations"]
    # `cellsearch report` on the same database knows the run for what it is
    rep = CliRunner().invoke(cli, ["report", "--db", str(db), "--out", str(tmp_path / "report")])
    assert rep.exit_code == 0, rep.output
    assert "| claims-smoke | claims | smoke |" in (tmp_path / "report" / "summary.md").read_text()


def test_bad_database_url_is_one_line(tmp_path, capsys):
    from cellsearch.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["claims", "--db", "nosuchdialect://x/y", "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "database URL" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_smoke_scale_for_real(tmp_path):
    """The contract's command at its real smoke budget (under 15 minutes here)."""
    res = CliRunner().invoke(cli, ["claims", "--scale", "smoke", "--db", str(tmp_path / "c.db"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "summary.md").exists()
