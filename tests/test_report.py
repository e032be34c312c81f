"""`cellsearch report` and the analysis library, on a small fixture database.

The fixture follows the data contract of `cellsearch reproduce`: a Greff study and a Jozefowicz
study as runs whose trials are evaluations (synthetic results with known effects, written through
the Store), plus one real tiny search made by `cellsearch run` as the Jozefowicz study's search.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats as sps

from cellsearch import parse, zoo
from cellsearch.analysis import (
    best_of_trials,
    fanova_importance,
    greff_conclusions,
    jozefowicz_conclusions,
    load_study,
    mark_top,
    pareto_mask,
    welch_table,
)
from cellsearch.analysis import figures as F
from cellsearch.analysis.stats import search_progress
from cellsearch.cli import cli, main
from cellsearch.store import Store, diagnostics_frame, lineage_frame, top_frame
from tests.search.helpers import tiny_config

GREFF_VARIANTS = ["lstm_peephole", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr"]
GREFF_TASKS = ["chorales", "digits", "copy"]
GREFF_SPACE = {
    "hidden": {"dist": "int_loguniform", "low": 16, "high": 64},
    "lr": {"dist": "loguniform", "low": 1e-4, "high": 1.0},
    "momentum": {"dist": "one_minus_loguniform", "low": 0.01, "high": 1.0},
    "input_noise": {"dist": "uniform", "low": 0.0, "high": 1.0},
}
JZ_VARIANTS = ["jz_lstm", "jz_lstm_b", "jz_lstm_i", "jz_lstm_f", "jz_lstm_o", "gru_jz", "mut1", "mut2", "mut3", "rnn"]
JZ_TASKS = ["arithmetic", "xml"]
JZ_SPACE = {
    "init_scale": {"dist": "uniform", "low": 0.3, "high": 2.8},
    "lr": {"dist": "loguniform", "low": 0.1, "high": 5.0},
    "clip": {"dist": "uniform", "low": 1.0, "high": 20.0},
}
#: the paper's Table 1 (Arith, XML): the fixture's best-of-trials targets
JZ_TABLE = {
    "rnn": (0.295, 0.321),
    "jz_lstm": (0.892, 0.425),
    "jz_lstm_f": (0.293, 0.234),
    "jz_lstm_i": (0.751, 0.414),
    "jz_lstm_o": (0.867, 0.421),
    "jz_lstm_b": (0.902, 0.444),
    "gru_jz": (0.896, 0.460),
    "mut1": (0.921, 0.475),
    "mut2": (0.897, 0.473),
    "mut3": (0.907, 0.465),
}
FILE_CELL = "state(h)\nz = sigmoid(linear(x, h))\nh = z * h + (1 - z) * tanh(linear(x))\nreturn h\n"
GREFF_TRIALS = 12
JZ_TRIALS = 8


def sample(space, rng):
    out = {}
    for k in sorted(space):
        d = space[k]
        if d["dist"] == "uniform":
            out[k] = float(rng.uniform(d["low"], d["high"]))
            continue
        u = rng.uniform(np.log(d["low"]), np.log(d["high"]))
        if d["dist"] == "loguniform":
            out[k] = float(np.exp(u))
        elif d["dist"] == "int_loguniform":
            out[k] = round(float(np.exp(u)))
        elif d["dist"] == "one_minus_loguniform":
            out[k] = 1.0 - float(np.exp(u))
    return out


def add(store, run_id, cell_hash, task, hp, seed, result):
    spec = {
        "cell_hash": cell_hash,
        "task": task,
        "task_options": {},
        "hp": {"steps": 100, "time_budget": 0.0, **hp},
        "seed": seed,
    }
    key = hashlib.blake2b(json.dumps([run_id, spec], sort_keys=True).encode(), digest_size=20).hexdigest()
    res = {"reason": "", "history": [], "steps": 100, "compile_seconds": 0.1, "train_seconds": 1.0, "worker": "fixture", **result}
    assert store.add_evaluation(key, spec, res, run_id, None)


def result(task, test, valid, status="ok", reason=""):
    metric, hib, baseline = {
        "chorales": ("nll", False, 11.06),
        "digits": ("accuracy", True, 0.1),
        "copy": ("accuracy", True, 0.2),
        "arithmetic": ("accuracy", True, 0.1),
        "xml": ("accuracy", True, 0.05),
    }[task]
    return {
        "status": status,
        "reason": reason,
        "metric": metric,
        "higher_is_better": hib,
        "valid": valid,
        "test": test,
        "baseline": baseline,
    }


def build_greff(store):
    config = {
        "study": "greff2016",
        "scale": "small",
        "seed": 0,
        "variants": GREFF_VARIANTS,
        "variant_hashes": {v: zoo.get(v).hash for v in GREFF_VARIANTS},
        "vanilla": "lstm_peephole",
        "tasks": GREFF_TASKS,
        "trials": GREFF_TRIALS,
        "search_space": GREFF_SPACE,
        "stand_ins": {
            "chorales": "JSB Chorales: music21's Bach chorales",
            "digits": "TIMIT: digits read row by row",
            "copy": "IAM Online: the copy task",
        },
    }
    run_id = store.create_run("greff2016-small", config, 0)
    file_cell = parse(FILE_CELL, name="mine")
    store.add_cells([zoo.get(v) for v in GREFF_VARIANTS] + [file_cell])
    for t, task in enumerate(GREFF_TASKS):
        for trial in range(GREFF_TRIALS):
            rng = np.random.default_rng([0, t, trial])
            hp = {"optimizer": "sgd", "clip": 0.0, "batch": 16, **sample(GREFF_SPACE, rng)}
            q_lr = math.exp(-((math.log10(hp["lr"]) + 1.3) ** 2) / 2.0)  # best near lr = 0.05
            q_h = math.log(hp["hidden"] / 16) / math.log(4)
            shared = rng.normal(0, 0.01)  # the same for every cell: cells without an effect tie with vanilla
            for v in [*GREFF_VARIANTS, "file"]:
                if task == "chorales":  # NLL, lower is better
                    test = 10.5 - 2.5 * q_lr - 0.3 * q_h + 10 * shared + {"nfg": 1.5, "noaf": 1.2}.get(v, 0.0)
                else:
                    penalty = {"nfg": 0.4, "noaf": 0.35, "nig": 0.3, "nog": 0.3, "niaf": 0.3}.get(v, 0.0)
                    test = min(1.0, max(0.0, 0.3 + 0.6 * q_lr + 0.05 * q_h + shared - penalty))
                h = file_cell.hash if v == "file" else zoo.get(v).hash
                if v == "noaf" and hp["lr"] > 0.3:
                    r = result(task, None, None, "diverged", "loss is nan at step 40")
                elif v == "fgr" and trial == 0 and task == "copy":
                    r = result(task, None, None, "failed", "MemoryError: out of memory")
                elif v == "cifg" and trial == 1:
                    r = result(task, test, test, "timeout", "time budget 120 s reached at step 300")
                else:
                    r = result(task, test, test)
                add(store, run_id, h, task, hp, trial, r)
    store.update_run(run_id, status="done")


def build_jozefowicz(store):
    config = {
        "study": "jozefowicz2015",
        "scale": "small",
        "seed": 0,
        "variants": JZ_VARIANTS,
        "variant_hashes": {v: zoo.get(v).hash for v in JZ_VARIANTS},
        "vanilla": "gru_jz",
        "tasks": JZ_TASKS,
        "trials": JZ_TRIALS,
        "search_space": JZ_SPACE,
        "stand_ins": {},
    }
    run_id = store.create_run("jozefowicz2015-small", config, 0)
    store.add_cells([zoo.get(v) for v in JZ_VARIANTS])
    for t, task in enumerate(JZ_TASKS):
        for trial in range(JZ_TRIALS):
            rng = np.random.default_rng([1, t, trial])
            hp = {"optimizer": "sgd", "momentum": 0.0, "batch": 20, "hidden": 64, **sample(JZ_SPACE, rng)}
            q = 1.0 if trial == 0 else 0.5 + 0.4 * rng.uniform()  # trial 0 is every cell's best
            for v in JZ_VARIANTS:
                best = JZ_TABLE[v][t]
                test = best * q + (0 if trial == 0 else rng.normal(0, 0.01))
                add(store, run_id, zoo.get(v).hash, task, hp, trial, result(task, test, test))
    store.update_run(run_id, status="done")


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    db = tmp / "studies.db"
    with Store(str(db), create=True) as store:
        build_greff(store)
        build_jozefowicz(store)
    cfg = tiny_config(tmp / "tiny.toml", generations=2, workers=0, steps=40)
    cfg.write_text('study_of = "jozefowicz2015-small"\ndiagnose = true\n' + cfg.read_text())  # diagnostics: the reach figure
    proc = CliRunner().invoke(cli, ["run", str(cfg), "--db", str(db), "--name", "jozefowicz2015-small-search"])
    assert proc.exit_code == 0, proc.output
    return db


@pytest.fixture(scope="module")
def report_dir(fixture_db, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "report"
    result = CliRunner().invoke(cli, ["report", "--db", str(fixture_db), "--out", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["html"] == str(out / "report.html") and info["markdown"] == str(out / "summary.md")
    return out


# ---- the command ------------------------------------------------------------------------------------


def test_report_writes_html_markdown_and_every_figure(report_dir):
    pngs = sorted(p.name for p in report_dir.glob("*.png"))
    stem, jz, search = "greff2016-small", "jozefowicz2015-small", "jozefowicz2015-small-search"
    expected = {f"{stem}-box-{t}.png" for t in GREFF_TASKS} | {f"{stem}-marginal-{t}.png" for t in GREFF_TASKS}
    expected |= {f"{stem}-fanova.png", f"{jz}-relative.png"} | {f"{jz}-box-{t}.png" for t in JZ_TASKS}
    expected |= {f"{search}-progress.png", f"{search}-pareto.png", f"{search}-reach.png"}
    assert expected <= set(pngs), sorted(expected - set(pngs))
    for name in pngs:
        data = (report_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name

    page = (report_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs)  # every figure embedded ...
    assert not re.search(r"<img[^>]+src='(?!data:)", page)  # ... and nothing loaded from elsewhere
    assert "<link" not in page and "<script" not in page
    for title in ("Study greff2016-small", "Study jozefowicz2015-small", "Search jozefowicz2015-small-search"):
        assert title in page
    assert "FanovaImportanceEvaluator" in page
    assert "state(" in page  # the cells' DSL text
    assert "Welch" in page and "conclusions" in page.lower()

    md = (report_dir / "summary.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert set(linked) == set(pngs)  # relative links, every one resolves
    assert all((report_dir / p).is_file() for p in linked)
    assert "| NFG" in md or "| nfg" in md


def test_report_restricted_to_one_run(fixture_db, tmp_path):
    out = tmp_path / "one"
    result = CliRunner().invoke(cli, ["report", "--db", str(fixture_db), "--out", str(out), "--run", "jozefowicz2015-small"])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "Study jozefowicz2015-small" in page and "greff2016-small" not in page
    assert {p.name for p in out.glob("*.png")} == {
        "jozefowicz2015-small-relative.png",
        "jozefowicz2015-small-box-arithmetic.png",
        "jozefowicz2015-small-box-xml.png",
    }


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["report", "--db", "{tmp}/missing.db", "--out", "{tmp}/r"], "no database at"),
        (["report", "--db", "{db}", "--out", "{tmp}/r", "--run", "nosuchrun"], "no run named 'nosuchrun'"),
        (["report", "--db", "{db}", "--out", "{db}"], "is a file, not a folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(fixture_db, tmp_path, capsys, args, fragment):
    args = [a.format(tmp=tmp_path, db=fixture_db) for a in args]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_empty_database_is_an_error(tmp_path, capsys):
    Store(str(tmp_path / "empty.db"), create=True).close()
    with pytest.raises(SystemExit) as info:
        main(["report", "--db", str(tmp_path / "empty.db"), "--out", str(tmp_path / "r")])
    assert info.value.code == 2 and "has no runs" in capsys.readouterr().err


# ---- the library ------------------------------------------------------------------------------------


def test_trials_are_labelled_by_variant_failures_kept_out_of_statistics(fixture_db):
    st = load_study(str(fixture_db), "greff2016-small")
    assert st.variants[: len(GREFF_VARIANTS)] == GREFF_VARIANTS
    file_label = parse(FILE_CELL).hash[:8]
    assert st.variants[-1] == file_label  # a cell from a file: its hash
    counts = st.trials.groupby("variant").size()
    assert (counts == GREFF_TRIALS * len(GREFF_TASKS)).all()
    assert counts["np"] == GREFF_TRIALS * len(GREFF_TASKS)  # NP is structurally the LSTM; matched by hash
    noaf = st.trials[st.trials["variant"] == "noaf"]
    assert (~noaf["ok"]).sum() > 0 and noaf.loc[~noaf["ok"], "test"].isna().all()
    w = welch_table(mark_top(st.trials), "lstm_peephole", "all")
    row = w[(w["variant"] == "noaf") & (w["task"] == "digits")].iloc[0]
    assert row["n"] == int(noaf[(noaf["task"] == "digits")]["ok"].sum()) and row["failed"] > 0


def test_welch_is_scipys_unequal_variance_test(fixture_db):
    st = load_study(str(fixture_db), "greff2016-small")
    trials = mark_top(st.trials)
    for subset in ("top", "all"):
        w = welch_table(trials, "lstm_peephole", subset)
        row = w[(w["variant"] == "nfg") & (w["task"] == "chorales")].iloc[0]
        pick = trials[(trials["task"] == "chorales") & trials["ok"]]
        if subset == "top":
            pick = pick[pick["top"]]
        a = pick[pick["variant"] == "nfg"]["test"]
        b = pick[pick["variant"] == "lstm_peephole"]["test"]
        ref = sps.ttest_ind(a, b, equal_var=False)
        assert row["p"] == pytest.approx(ref.pvalue) and row["t"] == pytest.approx(ref.statistic)
        assert row["verdict"] == "worse"  # NLL: a higher mean is worse
    top = trials[trials["top"]].groupby(["variant", "task"]).size()
    assert (top == 3).all()  # ceil(10% of 12) = 2, raised to the minimum of 3


def test_greff_conclusions_match_the_fixtures_effects(fixture_db):
    detail, summary = greff_conclusions(load_study(str(fixture_db), "greff2016-small"))
    verdict = summary.set_index("variant")["agrees"]
    for v in ("nfg", "noaf", "np", "cifg"):
        assert verdict[v] == "yes", summary
    d = detail.set_index(["variant", "task"])
    assert d.loc[("nig", "digits"), "ours"] == "worse" and d.loc[("nig", "digits"), "paper"] == "worse"
    assert d.loc[("nig", "chorales"), "paper"] == "not worse"  # the paper: NIG does not hurt JSB
    assert d.loc[("nfg", "chorales"), "kind"] == "JSB-like" and d.loc[("nfg", "copy"), "kind"] == "TIMIT/IAM-like"


def test_fanova_finds_the_learning_rate(fixture_db):
    st = load_study(str(fixture_db), "greff2016-small")
    imp = fanova_importance(st.trials, st.search_space)
    assert set(imp["task"]) == set(GREFF_TASKS)
    assert set(imp["hyperparameter"]) == set(GREFF_SPACE)
    for _, g in imp.groupby("task"):
        assert g.sort_values("importance").iloc[-1]["hyperparameter"] == "lr"
        assert 0 <= g["importance"].sum() <= 1.0 + 1e-9
    assert dict(zip(imp["hyperparameter"], imp["scale"], strict=False))["momentum"] == "log10(1 - ·)"


def test_jozefowicz_best_of_trials_and_conclusions(fixture_db):
    st = load_study(str(fixture_db), "jozefowicz2015-small")
    best = best_of_trials(st)
    b = best.set_index(["variant", "task"])
    assert b.loc[("jz_lstm", "arithmetic"), "value"] == pytest.approx(0.892)
    assert b.loc[("jz_lstm", "arithmetic"), "relative"] == pytest.approx(0.892 / 0.896)
    assert b.loc[("gru_jz", "xml"), "relative"] == pytest.approx(1.0)
    concl = jozefowicz_conclusions(st, best)
    assert set(concl["claim"]) >= {
        "forget bias 1 closes the LSTM–GRU gap",
        "output gate unimportant: LSTM-o ≈ LSTM",
        "input gate important: LSTM > LSTM-i",
        "forget gate critical: LSTM-f sinks to tanh level",
        "MUT1 vs GRU: at most a small edge",
    }
    assert concl["agrees"].all(), concl  # the paper's own numbers agree with the paper


def test_pareto_mask():
    score = [1.0, 0.9, 1.0, 0.5, 1.1]
    params = [100, 50, 120, 50, 300]
    assert list(pareto_mask(score, params)) == [True, True, False, False, True]


def test_search_figures_render(fixture_db):
    store = Store(str(fixture_db))
    run = store.run_by_name("jozefowicz2015-small-search")
    progress = search_progress(store.logbook(run.id))
    assert list(progress["generation"]) == [0, 1, 2]
    F.save_png(F.progress_plot(progress))
    cells = top_frame(store, run=run.name, limit=1000)
    F.save_png(F.pareto_plot(cells))
    diag = diagnostics_frame(store, run=run.name)
    assert set(diag["hash"]) == set(cells["hash"]) and (diag["diagnosed"] == 2).all()  # 2 tasks, 1 seed
    assert diag["reach"].notna().all() and list(diag["rank"]) == list(range(1, len(diag) + 1))
    assert F.save_png(F.reach_plot(diag))[:4] == b"\x89PNG"
    evolved = [h for h in cells["hash"] if len(lineage_frame(store, h))]
    assert evolved, "a two-generation search has children"
    lineage = lineage_frame(store, evolved[0])
    info = {r["hash"]: {"name": r["name"], "score": r["score"], "generation": r["generation"]} for r in cells.to_dict("records")}
    assert F.save_png(F.lineage_plot(lineage, evolved[0], info))[:4] == b"\x89PNG"
    store.close()


def test_empty_inputs_draw_a_placeholder_not_an_error():
    empty = pd.DataFrame(columns=["generation", "nevals", "avg", "std", "min", "max", "best"])
    for fig in (
        F.progress_plot(empty),
        F.pareto_plot(pd.DataFrame(columns=["score", "params", "name", "generation", "hash"])),
        F.fanova_plot(pd.DataFrame(columns=["task", "hyperparameter", "scale", "importance", "trials"])),
        F.reach_plot(pd.DataFrame(columns=["score", "reach", "reach_init", "name", "generation", "diagnosed"])),
    ):
        assert F.save_png(fig)[:4] == b"\x89PNG"


def _study(rows, study="jozefowicz2015", variants=None, vanilla="gru_jz"):
    from cellsearch.analysis.data import Study

    trials = pd.DataFrame(rows)
    trials["baseline"] = 0.1
    trials["metric"] = "accuracy"
    trials["status"] = ["ok" if ok else "diverged" for ok in trials["ok"]]
    variants = variants or list(dict.fromkeys(trials["variant"]))
    return Study(run="r", study=study, scale="small", variants=variants, vanilla=vanilla, tasks=["xml"], trials_per=3,
                 search_space={}, stand_ins={}, trials=trials)  # fmt: skip


def test_claims_about_cells_that_learned_nothing_are_undecided():
    rows = [{"variant": v, "task": "xml", "seed": s, "ok": True, "valid": 0.05, "test": 0.05}
            for v in ("jz_lstm", "jz_lstm_o", "gru_jz") for s in range(3)]  # fmt: skip
    concl = jozefowicz_conclusions(_study(rows))
    row = concl[concl["claim"] == "output gate unimportant: LSTM-o ≈ LSTM"].iloc[0]
    assert row["agrees"] is None and "none learned" in row["ours"]


def test_a_variant_whose_every_trial_failed_is_shown_not_tested():
    rows = [
        {"variant": "lstm_peephole", "task": "xml", "seed": s, "ok": True, "valid": 0.3 + s / 10, "test": 0.3 + s / 10}
        for s in range(3)
    ]
    rows += [{"variant": "noaf", "task": "xml", "seed": s, "ok": False, "valid": None, "test": None} for s in range(3)]
    st = _study(rows, "greff2016", vanilla="lstm_peephole")
    w = welch_table(mark_top(st.trials), "lstm_peephole")
    assert w.iloc[0]["verdict"] == "n/a" and w.iloc[0]["failed"] == 3 and w.iloc[0]["n"] == 0
    fig = F.box_plot(mark_top(st.trials), "xml", st.variants, st.vanilla)
    assert "3 failed" in fig.axes[0].get_xticklabels()[1].get_text()
    assert F.save_png(fig)[:4] == b"\x89PNG"
