"""Diagnostics stored with each evaluation (a run's ``diagnose = true``): off by default and then
never computed; not part of an evaluation's identity; added to evaluations stored without them;
read back sorted by gradient reach."""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from cellsearch import zoo
from cellsearch.cli import cli, main
from cellsearch.errors import ConfigError
from cellsearch.inspect import diagnostics as D
from cellsearch.search.evaluation import EvalSpec, run_spec
from cellsearch.store import Store, diagnostics_frame
from cellsearch.train import make_hp
from tests.search.helpers import tiny_config

HP = dataclasses.asdict(make_hp(hidden=8, batch=8, steps=20, eval_every=10, eval_size=16, backend="reference"))


def _spec(name: str = "gru", **changes) -> EvalSpec:
    cell = zoo.get(name)
    return EvalSpec(cell.hash, cell.text, "adding", {"length": 12}, dict(HP, **changes), 0)


def test_switched_off_nothing_is_computed(monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("diagnostics computed without being asked for")

    monkeypatch.setattr(D, "evaluation_diagnostics", boom)
    result = run_spec(_spec())
    assert result["status"] == "ok" and "diagnostics" not in result and "params" not in result


def test_the_switch_changes_no_result_and_is_not_part_of_the_key() -> None:
    plain = _spec()
    asked = dataclasses.replace(plain, diagnose=True)
    assert asked.key == plain.key and asked.as_dict()["diagnose"] is True
    a, b = run_spec(plain), run_spec(asked)
    for k in ("status", "valid", "test", "valid_loss", "test_loss", "steps", "history", "baseline"):
        assert a[k] == b[k], k  # the same training, from the same seed
    assert "params" not in b  # the trained parameters are used, not returned
    d = b["diagnostics"]
    json.dumps(d)
    assert d["status"] == "ok" and d["budget"] == D.SEARCH_BUDGET
    for when in ("initial", "trained"):
        s = d[when]
        assert s["max_lag"] == 11 and len(s["grad_norm_by_lag"]) == 12  # T - 1 (adding, length 12)
        assert 1 <= s["reach"] <= 12 and s["spectral_radius"] > 0 and s["singular_max"] >= s["spectral_radius"] - 1e-9
        assert s["jacobian_method"] == "dense" and set(s["gates"]) and 0 <= s["saturation"] <= 1
        assert "trajectory" not in s
    assert d["initial"]["grad_norm_by_lag"] != d["trained"]["grad_norm_by_lag"]  # trained parameters were used
    assert 0 < d["seconds"] < b["train_seconds"] + 5


def test_the_rnn_reaches_less_far_than_the_lstm_at_initialisation() -> None:
    hp = make_hp(hidden=8, batch=8, forget_bias=1, backend="reference")
    got = {n: D.evaluation_diagnostics(zoo.get(n), "delayed_recall", {"lag": 40}, hp, 0, None) for n in ("rnn", "lstm")}
    rnn, lstm = got["rnn"]["initial"], got["lstm"]["initial"]
    assert got["rnn"]["trained"] is None  # no trained parameters, no trained diagnosis
    assert rnn["reached"] and rnn["reach"] < lstm["reach"]
    assert rnn["decay_rate"] > lstm["decay_rate"] and rnn["spectral_radius"] < lstm["spectral_radius"]
    assert rnn["saturation"] is None and lstm["saturation"] is not None  # the rnn has no gates


def test_a_diagnosis_that_cannot_run_is_recorded_not_raised() -> None:
    result = run_spec(dataclasses.replace(_spec(layers=2), diagnose=True))
    assert result["status"] == "ok"  # the evaluation itself is fine
    d = result["diagnostics"]
    assert d["status"] == "failed" and "one unidirectional layer" in d["reason"] and d["initial"] is None
    bad = run_spec(EvalSpec("0" * 32, "state(h)\nh = nope(h)\nreturn h\n", "adding", {"length": 12}, HP, 0, diagnose=True))
    assert bad["status"] == "failed" and bad["diagnostics"]["status"] == "failed"


def _run(cfg: Path, db: Path, name: str) -> dict:
    proc = CliRunner().invoke(cli, ["run", str(cfg), "--db", str(db), "--name", name, "--format", "json"])
    assert proc.exit_code == 0, proc.output
    return json.loads(proc.stdout)


def _query(db: Path, *args: str) -> list[dict]:
    proc = CliRunner().invoke(cli, ["query", *args, "--db", str(db), "--format", "json"])
    assert proc.exit_code == 0, proc.output
    return json.loads(proc.stdout)


def test_a_search_stores_diagnostics_only_when_asked_and_adds_them_to_stored_evaluations(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    plain = tiny_config(tmp_path / "plain.toml", generations=1, workers=0, steps=20)
    _run(plain, db, "plain")
    con = sqlite3.connect(db)
    n = con.execute("SELECT count(*) FROM evaluations").fetchone()[0]
    assert n > 0 and con.execute("SELECT count(*) FROM diagnostics").fetchone()[0] == 0  # off: nothing stored
    assert all(r["diagnosed"] == 0 and r["reach"] is None for r in _query(db, "diagnostics"))

    # the same search asking for diagnostics, in a worker process: the same evaluations (same keys), each
    # trained again for its diagnostics, which are added; the stored results stay
    asked = tmp_path / "asked.toml"
    asked.write_text("diagnose = true\n" + plain.read_text().replace("workers = 0", "workers = 1"))
    before = con.execute("SELECT key, id, valid, created FROM evaluations ORDER BY id").fetchall()
    summary = _run(asked, db, "asked")
    assert summary["rediagnosed"] == n and summary["reused"] == 0 and summary["trained_now"] == n
    assert con.execute("SELECT key, id, valid, created FROM evaluations ORDER BY id").fetchall() == before
    rows = con.execute("SELECT status, rerun, rerun_matches, init_reach, trained_reach, seconds FROM diagnostics").fetchall()
    assert len(rows) == n
    assert all(status == "ok" and rerun == 1 and matches == 1 for status, rerun, matches, *_ in rows)
    assert all(init >= 1 and trained >= 1 and 0 < seconds < 30 for *_, init, trained, seconds in rows)

    # a third run asks again: nothing to add, nothing trained
    again = _run(asked, db, "again")
    assert again["rediagnosed"] == 0 and again["trained_now"] == 0 and again["reused"] == n
    con.close()

    # read back by reach, largest first; JSON rows like the other queries
    by_reach = _query(db, "diagnostics", "--run", "asked")
    assert {"rank", "hash", "name", "score", "reach", "reach_init", "spectral_radius", "singular_max", "saturation"} <= set(
        by_reach[0]
    )
    reaches = [r["reach"] for r in by_reach]
    assert all(v is not None for v in reaches) and reaches == sorted(reaches, reverse=True)
    assert [r["rank"] for r in by_reach] == list(range(1, len(by_reach) + 1))
    assert {"lstm", "gru"} <= {r["name"] for r in by_reach} and all(r["diagnosed"] == 2 for r in by_reach)
    init = [r["reach_init"] for r in _query(db, "diagnostics", "--run", "asked", "--sort", "reach_init")]
    assert init == sorted(init, reverse=True)
    radius = [r["spectral_radius"] for r in _query(db, "diagnostics", "--run", "asked", "--sort", "spectral_radius")]
    assert radius == sorted(radius, reverse=True)
    one_task = diagnostics_frame(str(db), run="asked", task="adding")
    assert (one_task["diagnosed"] == 1).all() and set(one_task["hash"]) == {r["hash"] for r in by_reach}
    top = _query(db, "top", "--run", "asked")  # the leaderboard's contract is unchanged
    assert "reach" not in top[0] and {r["hash"] for r in top} == {r["hash"] for r in by_reach}
    table = CliRunner().invoke(cli, ["query", "diagnostics", "--db", str(db), "--run", "asked", "--limit", "1"])
    assert table.exit_code == 0 and "reach" in table.output and "gru" in table.output
    with Store(str(db)) as store:
        rows = store.diagnostics_by_key(list(store.diagnosed_keys([r for (r, *_) in before])))
        d = next(iter(rows.values()))
        assert set(d.detail) == {"initial", "trained", "budget"} and math.isfinite(d.detail["initial"]["grad_norm_by_lag"][0])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--run", "nope"], "no run named 'nope'"), (["--sort", "nope"], "Invalid value for '--sort'"), ([], "has no runs")],
)
def test_query_diagnostics_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, args: list[str], fragment: str) -> None:
    db = tmp_path / "e.db"
    Store(str(db), create=True).close()
    with pytest.raises(SystemExit) as info:
        main(["query", "diagnostics", "--db", str(db), *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and fragment in err and err.count("\n") == 1
    with pytest.raises(ConfigError, match="cannot sort by"):
        diagnostics_frame(str(db), sort="nope")
