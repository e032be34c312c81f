"""The numbers of a report: Welch's t-tests, the Greff and Jozefowicz conclusions, fANOVA importance,
best-of-trials tables, search progress and the Pareto front.

Conventions, the same everywhere:

* a trial's score is its **test** result; failed or diverged trials are counted, never averaged;
* the *best 10%* of a (variant, task) group are its best ``ceil(10% of all its trials)`` finished
  trials by **validation** result (at least ``MIN_TOP`` = 3, so that a t-test is possible at small
  scale), as in Greff et al.'s Figure 3; failed trials count in the 10% base and rank last;
* a difference is significant at p < ``ALPHA`` = 0.05 (Welch's two-sided t-test, ``equal_var=False``,
  no correction for multiple comparisons);
* Jozefowicz et al. report the best of their hyperparameter trials: ``best_of_trials`` takes the
  trial with the best validation result and reports its test result (not the best test result,
  which would select on the test set), relative to the GRU's as the search's fitness does.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import numpy as np
import pandas as pd

from ..search.score import relative
from .data import Study, higher_is_better, paper_names, role_of

ALPHA = 0.05
TOP_FRACTION = 0.10
MIN_TOP = 3
#: two best-of-trials results relative to the GRU closer than this count as equal ("≈")
TOLERANCE = 0.05
MUSIC, TRANSCRIPTION, LM = "JSB-like", "TIMIT/IAM-like", "language model"


# ---- subsets and tests -----------------------------------------------------------------------------


def mark_top(trials: pd.DataFrame, fraction: float = TOP_FRACTION, minimum: int = MIN_TOP) -> pd.DataFrame:
    """``trials`` with a boolean ``top`` column: the best ``fraction`` of each (variant, task) group."""
    out = trials.copy()
    out["top"] = False
    if not len(out):
        return out
    for (_, task), group in out.groupby(["variant", "task"], sort=False):
        k = max(math.ceil(fraction * len(group)), minimum)
        ok = group[group["ok"]]
        hib = higher_is_better(str(task))
        key = ok["valid"].where(ok["valid"].notna(), ok["test"])  # no validation result: rank by test
        order = key.sort_values(ascending=not hib, na_position="last").index
        out.loc[order[:k], "top"] = True
    return out


def welch(a: Any, b: Any) -> tuple[float | None, float | None]:
    """Welch's t statistic and two-sided p-value of ``a`` against ``b``; (None, None) when undefined."""
    from scipy import stats

    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        return None, None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        t, p = stats.ttest_ind(x, y, equal_var=False)
    t, p = float(t), float(p)
    if not math.isfinite(p):
        return None, None
    return t, p


def verdict(p: float | None, mean: float, ref_mean: float, hib: bool, alpha: float = ALPHA) -> str:
    """``worse`` / ``better`` (significantly, in the metric's direction), ``no difference`` or ``n/a``."""
    if p is None:
        return "n/a"
    if p >= alpha:
        return "no difference"
    return "better" if (mean > ref_mean) == hib else "worse"


def welch_table(trials: pd.DataFrame, vanilla: str, subset: str = "top", alpha: float = ALPHA) -> pd.DataFrame:
    """Each variant against ``vanilla`` on each task: Welch's t-test of test results.

    ``subset`` is ``top`` (the best 10% by validation, see ``mark_top``) or ``all`` (every finished
    trial). Columns: task, variant, n (trials tested), trials, failed, mean, median, vanilla_mean,
    vanilla_median, delta_mean (variant - vanilla), t, p, significant, verdict."""
    cols = [
        "task",
        "variant",
        "subset",
        "n",
        "trials",
        "failed",
        "mean",
        "median",
        "vanilla_mean",
        "vanilla_median",
        "delta_mean",
        "t",
        "p",
        "significant",
        "verdict",
    ]
    if not len(trials):
        return pd.DataFrame(columns=cols)
    df = trials if "top" in trials.columns else mark_top(trials)
    rows = []
    for task in dict.fromkeys(df["task"]):
        hib = higher_is_better(str(task))
        here = df[df["task"] == task]

        def chosen(v: str, here: pd.DataFrame = here) -> pd.Series:
            g = here[(here["variant"] == v) & here["ok"]]
            return (g[g["top"]] if subset == "top" else g)["test"].astype(float)

        ref = chosen(vanilla)
        for v in dict.fromkeys(here["variant"]):
            if v == vanilla:
                continue
            x = chosen(v)
            group = here[here["variant"] == v]
            t, p = welch(x, ref)
            mean = float(x.mean()) if len(x) else math.nan
            ref_mean = float(ref.mean()) if len(ref) else math.nan
            rows.append(
                {
                    "task": task,
                    "variant": v,
                    "subset": subset,
                    "n": len(x),
                    "trials": len(group),
                    "failed": int((~group["ok"]).sum()),
                    "mean": mean,
                    "median": float(x.median()) if len(x) else math.nan,
                    "vanilla_mean": ref_mean,
                    "vanilla_median": float(ref.median()) if len(ref) else math.nan,
                    "delta_mean": mean - ref_mean,
                    "t": t,
                    "p": p,
                    "significant": p is not None and p < alpha,
                    "verdict": verdict(p, mean, ref_mean, hib, alpha),
                }
            )
    return pd.DataFrame(rows, columns=cols)


# ---- Greff et al. 2016 ------------------------------------------------------------------------------

#: what the paper found for each variant, in its words (STUDIES.md 1.6)
GREFF_PAPER = {
    "nfg": "significantly worse: the forget gate is critical",
    "noaf": "significantly worse: without h the unbounded cell state destabilises learning",
    "cifg": "no significant loss (and fewer parameters)",
    "np": "no significant loss (and fewer parameters)",
    "fgr": "no gain for its 9N² extra parameters",
    "nig": "worse on TIMIT and IAM, not on JSB",
    "nog": "worse on TIMIT and IAM, not on JSB",
    "niaf": "worse on TIMIT and IAM, not on JSB",
}


def task_kind(task: str, stand_in: str = "") -> str:
    """The paper's kind of data set a task stands in for: ``JSB-like`` (music), ``TIMIT/IAM-like``
    (speech or handwriting transcription), ``language model`` or ``other`` (from the task's name and
    the study's stand-in note)."""
    text = stand_in.lower()

    def says(*words: str) -> bool:
        return any(re.search(rf"\b{w}\b", text) for w in words)

    if task == "chorales" or says("jsb", "music"):
        return MUSIC
    if task == "text" or says("ptb", "language modelling", "language modeling"):
        return LM
    if task in ("digits", "temporal_order") or says("timit", "iam"):
        return TRANSCRIPTION
    return "other"


def greff_expectation(variant: str, kind: str) -> str | None:
    """What the paper predicts for ``variant`` on a task of ``kind``: ``worse``, ``not worse``,
    ``no gain`` (not better), or None (no claim)."""
    if variant in ("nfg", "noaf"):
        return "worse"
    if variant in ("cifg", "np"):
        return "not worse"
    if variant == "fgr":
        return "no gain"
    if variant in ("nig", "nog", "niaf"):
        return {TRANSCRIPTION: "worse", MUSIC: "not worse"}.get(kind)
    return None


def agrees(expected: str | None, found: str) -> bool | None:
    if expected is None or found == "n/a":
        return None
    if expected == "worse":
        return found == "worse"
    if expected == "not worse":
        return found != "worse"
    if expected == "no gain":
        return found != "better"
    return None


def _agreement(flags: list[bool | None]) -> str:
    known = [f for f in flags if f is not None]
    if not known:
        return "n/a"
    if all(known):
        return "yes"
    if not any(known):
        return "no"
    return f"partly ({sum(known)}/{len(known)} tasks)"


def greff_conclusions(study: Study, alpha: float = ALPHA) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The conclusions of a Greff study: (per variant and task, per variant).

    Per variant and task: mean and median test result of the best 10% against vanilla's, Welch's p on
    them and on all finished trials, our verdict, the paper's expectation, and whether they agree.
    Per variant: our verdicts over the tasks beside the paper's finding, and the agreement."""
    trials = mark_top(study.trials)
    top = welch_table(trials, study.vanilla, "top", alpha)
    every = welch_table(trials, study.vanilla, "all", alpha).set_index(["task", "variant"])
    names = paper_names(study.study, study.variants, study.vanilla)
    rows = []
    for r in top.to_dict(orient="records"):
        kind = task_kind(r["task"], study.stand_ins.get(r["task"], ""))
        expected = greff_expectation(r["variant"], kind)
        key = (r["task"], r["variant"])
        p_all = every.loc[key, "p"] if key in every.index else None
        rows.append(
            {
                "variant": r["variant"],
                "paper_name": names.get(r["variant"], r["variant"]),
                "task": r["task"],
                "kind": kind,
                "n": r["n"],
                "trials": r["trials"],
                "failed": r["failed"],
                "mean": r["mean"],
                "vanilla_mean": r["vanilla_mean"],
                "median": r["median"],
                "vanilla_median": r["vanilla_median"],
                "p": r["p"],
                "p_all": None if p_all is None or (isinstance(p_all, float) and math.isnan(p_all)) else float(p_all),
                "ours": r["verdict"],
                "paper": expected or "no claim",
                "agrees": agrees(expected, r["verdict"]),
            }
        )
    detail = pd.DataFrame(rows)
    if len(detail):
        rank = {v: k for k, v in enumerate(study.variants)} | {t: k for k, t in enumerate(study.tasks)}
        detail = detail.sort_values(["variant", "task"], key=lambda s: s.map(rank)).reset_index(drop=True)
    summary = []
    for v in study.variants:
        if v == study.vanilla or not len(detail):
            continue
        mine = detail[detail["variant"] == v]
        if not len(mine):
            continue
        ours = "; ".join(f"{r['ours']} on {r['task']} ({p_equals(r['p'])})" for r in mine.to_dict(orient="records"))
        summary.append(
            {
                "variant": v,
                "paper_name": names.get(v, v),
                "ours": ours,
                "paper": GREFF_PAPER.get(v, "no claim"),
                "agrees": _agreement(list(mine["agrees"])),
            }
        )
    if len(detail):
        listed = set(study.config.get("variants") or study.variants)  # the study's own variants, not cells from files
        wins = detail[(detail["ours"] == "better") & detail["variant"].isin(listed)]
        summary.append(
            {
                "variant": "(every variant)",
                "paper_name": "–",
                "ours": "none is significantly better than vanilla on any task"
                if not len(wins)
                else "better: "
                + "; ".join(f"{r['variant']} on {r['task']} ({p_equals(r['p'])})" for r in wins.to_dict(orient="records")),
                "paper": "no variant significantly beats vanilla",
                "agrees": "yes" if not len(wins) else "no",
            }
        )
    return detail, pd.DataFrame(summary, columns=["variant", "paper_name", "ours", "paper", "agrees"])


def format_p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_equals(p: float | None) -> str:
    """``p=0.012``, ``p<0.001`` or ``p n/a``."""
    text = format_p(p)
    return f"p{text}" if text.startswith("<") else f"p {text}" if text == "n/a" else f"p={text}"


# ---- Jozefowicz et al. 2015 ----------------------------------------------------------------------------


def best_of_trials(study: Study, reference: str | None = None) -> pd.DataFrame:
    """Per variant and task: the test result of the trial with the best validation result, and that
    result relative to the reference cell's (the GRU's by default) as the search's fitness computes
    it (accuracy: a ratio; an error: a ratio of log-error skills, see ``cellsearch.search.score``).
    Columns: variant, task, value, valid, relative, learned (the value beats the task's baseline, the
    result of an input-blind predictor), trials, failed, seed (of the chosen trial)."""
    ref_variant = reference or study.vanilla
    cols = ["variant", "task", "value", "valid", "relative", "learned", "trials", "failed", "seed"]
    t = study.trials
    if not len(t):
        return pd.DataFrame(columns=cols)
    rows = []
    for task in study.tasks:
        hib = higher_is_better(task)
        here = t[t["task"] == task]
        baseline = here["baseline"].dropna()
        base = float(baseline.median()) if len(baseline) else None
        best: dict[str, tuple[float, float, int] | None] = {}
        for v in study.variants:
            g = here[(here["variant"] == v) & here["ok"]]
            if not len(g):
                best[v] = None
                continue
            key = g["valid"].where(g["valid"].notna(), g["test"])
            i = key.idxmax() if hib else key.idxmin()
            best[v] = (float(g.loc[i, "test"]), float(key.loc[i]), int(g.loc[i, "seed"]))
        ref = best.get(ref_variant)
        for v in study.variants:
            g = here[here["variant"] == v]
            if not len(g):
                continue
            b = best[v]
            rows.append(
                {
                    "variant": v,
                    "task": task,
                    "value": None if b is None else b[0],
                    "valid": None if b is None else b[1],
                    "relative": None if b is None or ref is None else relative(b[0], ref[0], base, hib),
                    "learned": None if b is None or base is None else (b[0] > base if hib else b[0] < base),
                    "trials": len(g),
                    "failed": int((~g["ok"]).sum()),
                    "seed": None if b is None else b[2],
                }
            )
    return pd.DataFrame(rows, columns=cols)


def best_of_trials_wide(best: pd.DataFrame, study: Study) -> pd.DataFrame:
    """``best_of_trials`` as one row per variant: per task the value and the relative result, then the
    minimum relative result over the tasks (Jozefowicz et al.'s fitness)."""
    names = paper_names(study.study, study.variants, study.vanilla)
    rows = []
    for v in study.variants:
        mine = best[best["variant"] == v]
        if not len(mine):
            continue
        row: dict[str, Any] = {"variant": v, "paper_name": names.get(v, v)}
        rels = []
        for r in mine.to_dict(orient="records"):
            row[f"{r['task']}"] = r["value"]
            row[f"{r['task']} / GRU"] = r["relative"]
            rels.append(r["relative"])
        known = [x for x in rels if x is not None]
        row["min / GRU"] = min(known) if known and len(known) == len(rels) else None
        rows.append(row)
    return pd.DataFrame(rows)


def _rel(best: pd.DataFrame, variant: str | None, task: str) -> float | None:
    if variant is None:
        return None
    hit = best[(best["variant"] == variant) & (best["task"] == task)]
    if not len(hit):
        return None
    v = hit.iloc[0]["relative"]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def jozefowicz_conclusions(study: Study, best: pd.DataFrame | None = None, tol: float = TOLERANCE) -> pd.DataFrame:
    """Jozefowicz et al.'s findings against ours, one row per (claim, task): the best-of-trials
    results relative to the GRU that decide it, our verdict, the paper's, and whether they agree.
    Two results within ``tol`` (of the GRU's result) count as equal. A claim whose cells the study
    lacks is left out; one whose cells all learned nothing on a task (their best result no better than
    the task's baseline) is undecided (``agrees`` None)."""
    best = best_of_trials(study) if best is None else best
    role = {r: role_of(study, r) for r in ("LSTM", "LSTM-b", "LSTM-f", "LSTM-i", "LSTM-o", "tanh", "MUT1", "MUT2", "MUT3")}
    rows: list[dict[str, Any]] = []

    def add(claim: str, task: str, found: str, paper: str, ok: bool | None, cells: tuple[str, ...]) -> None:
        if all(_learned(best, role.get(c) or c, task) is False for c in cells):
            found, ok = found + " — none learned the task (no better than its baseline)", None
        rows.append({"claim": claim, "task": task, "ours": found, "paper": paper, "agrees": ok})

    for task in study.tasks:
        kind = task_kind(task, study.stand_ins.get(task, ""))
        L, Lb, Lf, Li, Lo, tanh = (_rel(best, role[r], task) for r in ("LSTM", "LSTM-b", "LSTM-f", "LSTM-i", "LSTM-o", "tanh"))
        if L is not None and Lb is not None:
            gap, gap_b = max(0.0, 1 - L), max(0.0, 1 - Lb)
            closes = gap_b <= gap + tol and (gap_b <= tol or gap_b < gap)
            state = "closed" if gap_b <= tol else "shrinks" if gap_b < gap else "not closed"
            add(
                "forget bias 1 closes the LSTM–GRU gap",
                task,
                f"LSTM {L:.3f}, LSTM-b {Lb:.3f} of the GRU: gap {state}",
                "LSTM-b ≥ LSTM, gap to the GRU closed (Arith 0.902 vs GRU 0.896)",
                closes,
                ("LSTM", "LSTM-b"),
            )
        if L is not None and Lo is not None:
            add(
                "output gate unimportant: LSTM-o ≈ LSTM",
                task,
                f"LSTM-o {Lo:.3f}, LSTM {L:.3f} ({_cmp(Lo, L, tol)})",
                "LSTM-o ≈ LSTM (Arith 0.867 vs 0.892)",
                abs(Lo - L) <= tol,
                ("LSTM-o", "LSTM"),
            )
        if L is not None and Li is not None:
            add(
                "input gate important: LSTM > LSTM-i",
                task,
                f"LSTM {L:.3f}, LSTM-i {Li:.3f} ({'>' if L > Li else '≤'})",
                "LSTM > LSTM-i (Arith 0.892 vs 0.751)",
                L > Li,
                ("LSTM", "LSTM-i"),
            )
        if Lf is not None and (tanh is not None or L is not None):
            if kind == LM:
                if L is not None:
                    add(
                        "forget gate matters except in language modelling: LSTM-f ≈ LSTM",
                        task,
                        f"LSTM-f {Lf:.3f}, LSTM {L:.3f} ({_cmp(Lf, L, tol)})",
                        "LSTM-f ≈ LSTM on PTB",
                        abs(Lf - L) <= tol,
                        ("LSTM-f", "LSTM"),
                    )
            elif tanh is not None:
                add(
                    "forget gate critical: LSTM-f sinks to tanh level",
                    task,
                    f"LSTM-f {Lf:.3f}, tanh {tanh:.3f} ({_cmp(Lf, tanh, tol)})",
                    "LSTM-f ≤ tanh on Arith/XML (0.293 vs 0.295; 0.234 vs 0.321)",
                    Lf <= tanh + tol,
                    ("LSTM-f", "tanh"),
                )
        for m in ("MUT1", "MUT2", "MUT3"):
            r = _rel(best, role[m], task)
            if r is not None:
                add(
                    f"{m} vs GRU: at most a small edge",
                    task,
                    f"{m} {r:.3f} of the GRU ({_cmp(r, 1.0, tol)})",
                    f"≈ GRU, within {tol} (MUT1: 1.03 on Arith and XML)",
                    abs(r - 1) <= tol,
                    (m, study.vanilla),
                )
    return pd.DataFrame(rows, columns=["claim", "task", "ours", "paper", "agrees"])


def _learned(best: pd.DataFrame, variant: str | None, task: str) -> bool | None:
    if variant is None:
        return None
    hit = best[(best["variant"] == variant) & (best["task"] == task)]
    if not len(hit) or _missing(hit.iloc[0]["learned"]):
        return None
    return bool(hit.iloc[0]["learned"])


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _cmp(a: float, b: float, tol: float) -> str:
    return "≈" if abs(a - b) <= tol else (">" if a > b else "<")


# ---- fANOVA ---------------------------------------------------------------------------------------

#: hyperparameters sampled on a log scale are analysed on that scale: fANOVA averages over a uniform
#: measure on the parameter's axis, so this matches the measure the trials were drawn from
_LOG = ("loguniform", "int_loguniform", "log")


def _hp_axis(name: str, spec: dict[str, Any], values: pd.Series) -> tuple[str, pd.Series] | None:
    """A hyperparameter as fANOVA sees it: (how, transformed values), or None when it did not vary."""
    dist = str(spec.get("dist", "uniform"))
    if dist == "choice":
        v = values.astype(str)
        return ("choice", v) if v.nunique() > 1 else None
    x = pd.to_numeric(values, errors="coerce").astype(float)
    if dist in _LOG:
        x = np.log10(x.clip(lower=1e-300))
        how = "log10"
    elif dist == "one_minus_loguniform":
        x = np.log10((1 - x).clip(lower=1e-12))
        how = "log10(1 - ·)"
    else:
        how = "linear"
    if x.isna().any() or x.nunique() < 2:
        return None
    return how, x


def fanova_importance(
    trials: pd.DataFrame,
    search_space: dict[str, dict[str, Any]] | None = None,
    *,
    seed: int = 0,
    n_trees: int = 64,
    min_settings: int = 8,
) -> pd.DataFrame:
    """Hyperparameter importance per task by fANOVA (Hutter et al. 2014), with Optuna's
    ``FanovaImportanceEvaluator`` on an in-memory Optuna study built from the finished trials.

    The target is the test result (its log10 for an error metric spanning more than a factor of 10),
    pooled over the variants, as in Greff et al.'s Figure 5. Hyperparameters sampled log-uniformly are
    analysed in log10, momentum (``one_minus_loguniform``) as log10(1 - momentum). ``importance`` is
    the share of the target's variance explained by that hyperparameter alone (Optuna's first-order
    terms, not normalised); what the main effects leave is interactions and noise.
    Columns: task, hyperparameter, scale, importance, trials, settings (distinct hyperparameter
    settings among the trials). Tasks with fewer than ``min_settings`` settings are left out."""
    import optuna
    from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    cols = ["task", "hyperparameter", "scale", "importance", "trials", "settings"]
    if not len(trials):
        return pd.DataFrame(columns=cols)
    space = dict(search_space or {})
    if not space:  # no declared space: every numeric hyperparameter that varied
        space = {c[3:]: {"dist": "uniform"} for c in trials.columns if c.startswith("hp_") and c != "hp_seed"}
    rows = []
    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        for task in dict.fromkeys(trials["task"]):
            ok = trials[(trials["task"] == task) & trials["ok"]]
            y = ok["test"].astype(float)
            if not higher_is_better(str(task)) and (y > 0).all() and y.max() > 10 * y.min():
                y = np.log10(y)
            axes: dict[str, tuple[str, pd.Series]] = {}
            for name, spec in space.items():
                col = f"hp_{name}"
                if col in ok.columns:
                    got = _hp_axis(name, spec or {}, ok[col])
                    if got is not None:
                        axes[name] = got
            settings = len(pd.DataFrame({n: x for n, (_, x) in axes.items()}).drop_duplicates()) if axes else 0
            if settings < min_settings or y.nunique() < 2:
                continue
            dists: dict[str, BaseDistribution] = {}
            for name, (how, x) in axes.items():
                if how == "choice":
                    dists[name] = CategoricalDistribution(sorted(set(x)))
                else:
                    dists[name] = FloatDistribution(float(x.min()), float(x.max()))
            study = optuna.create_study(direction="maximize" if higher_is_better(str(task)) else "minimize")
            frozen = []
            for k, idx in enumerate(ok.index):
                params = {n: (str(x.loc[idx]) if how == "choice" else float(x.loc[idx])) for n, (how, x) in axes.items()}
                frozen.append(optuna.trial.create_trial(params=params, distributions=dists, value=float(y.iloc[k])))
            study.add_trials(frozen)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = get_param_importances(
                    study, evaluator=FanovaImportanceEvaluator(n_trees=n_trees, seed=seed), normalize=False
                )
            for name, value in imp.items():
                rows.append(
                    {
                        "task": task,
                        "hyperparameter": name,
                        "scale": axes[name][0],
                        "importance": float(value),
                        "trials": len(ok),
                        "settings": settings,
                    }
                )
    finally:
        optuna.logging.set_verbosity(old)
    return pd.DataFrame(rows, columns=cols)


# ---- searches --------------------------------------------------------------------------------------


def search_progress(logbook: list[Any]) -> pd.DataFrame:
    """A search's logbook (``Store.logbook(run_id)`` rows) as a frame: generation, nevals, avg, std,
    min, max, best (hash)."""
    rows = []
    for row in logbook:
        rec = dict(row.record or {})
        rows.append(
            {
                "generation": int(rec.get("gen", row.generation)),
                "nevals": rec.get("nevals"),
                "avg": rec.get("avg"),
                "std": rec.get("std"),
                "min": rec.get("min"),
                "max": rec.get("max"),
                "best": rec.get("best"),
            }
        )
    return pd.DataFrame(rows, columns=["generation", "nevals", "avg", "std", "min", "max", "best"])


def pareto_mask(score: Any, cost: Any) -> np.ndarray:
    """True where no other point has a score at least as high and a cost at least as low, and is
    better in one (maximise score, minimise cost)."""
    s = np.asarray(score, dtype=float)
    c = np.asarray(cost, dtype=float)
    keep = np.ones(len(s), dtype=bool)
    for i in range(len(s)):
        if not (math.isfinite(s[i]) and math.isfinite(c[i])):
            keep[i] = False
            continue
        dominated = (s >= s[i]) & (c <= c[i]) & ((s > s[i]) | (c < c[i]))
        keep[i] = not bool(dominated.any())
    return keep
