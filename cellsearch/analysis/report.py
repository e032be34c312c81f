"""``write_report``: every run of a results database as PNG figures, one self-contained HTML page
(figures embedded as base64, tables, the cells' DSL text) and a Markdown summary that links the PNGs.

Sections, one per run in creation order:

* a Greff et al. 2016 study: conclusions beside the paper's, Welch's t-tests against vanilla, box
  plots per task, fANOVA hyperparameter importance, test result against learning rate and hidden
  size, failures;
* a Jozefowicz et al. 2015 study: the best trial per cell and task relative to the GRU, the paper's
  claims beside ours, box plots per task, Welch's t-tests against the GRU, failures;
* a search (``cellsearch run``, or a study's evolutionary search): progress over generations, the
  Pareto front of score against parameters, score against gradient reach (when the run stored
  diagnostics: ``diagnose = true``), the leaderboard with each cell's DSL text, and the lineage of
  the best evolved cell.
"""

from __future__ import annotations

import base64
import html
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ConfigError
from ..store import Store, diagnostics_frame, evaluations_frame, lineage_frame, runs_frame, top_frame
from ..store.schema import RunRow
from . import figures as F
from . import stats as S
from .data import Study, load_study, metric_label, paper_names, run_kind, select_runs

STUDY_TITLES = {
    "greff2016": "Greff et al. 2016, “LSTM: A Search Space Odyssey”",
    "jozefowicz2015": "Jozefowicz et al. 2015, “An Empirical Exploration of Recurrent Network Architectures”",
}


@dataclass
class Report:
    """What ``write_report`` wrote."""

    out: Path
    html: Path
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)  # one title per run reported


# ---- formatting ----------------------------------------------------------------------------------


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT


def fmt_value(v: Any, column: str = "") -> str:
    """A table cell as text: 3 decimals (3 significant digits when tiny or huge), p-values with a star
    when significant, yes/no for booleans, hashes cut to 12 hex digits."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes, dict, list)):
        v = v.item()
    if _missing(v):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if column in ("p", "p_all", "p (best 10%)", "p (all)"):
        return S.format_p(float(v)) + (" *" if float(v) < S.ALPHA else "")
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) < 0.01 or abs(v) >= 1e5:
            return f"{v:.3g}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 1000 else str(v)
    if isinstance(v, str) and len(v) >= 32 and all(c in "0123456789abcdef" for c in v):
        return v[:12]
    return str(v)


def display(df: pd.DataFrame, columns: dict[str, str] | None = None) -> pd.DataFrame:
    """``df`` restricted to and renamed by ``columns`` (old -> new), every cell formatted as text."""
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]].rename(columns=columns)
    out = pd.DataFrame(index=range(len(df)))
    for c in df.columns:
        out[c] = [fmt_value(v, str(c)) for v in df[c]]
    return out


def markdown_table(df: pd.DataFrame) -> str:
    if not len(df.columns):
        return ""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


# ---- the document ---------------------------------------------------------------------------------


class _Doc:
    """The HTML page and the Markdown summary, written side by side."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.html: list[str] = []
        self.md: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.figures: list[Path] = []
        self._ids: set[str] = set()

    def _anchor(self, text: str) -> str:
        base = slug(text).lower()
        a, k = base, 1
        while a in self._ids:
            k += 1
            a = f"{base}-{k}"
        self._ids.add(a)
        return a

    def heading(self, level: int, text: str, toc: bool = False) -> None:
        a = self._anchor(text)
        if toc:
            self.toc.append((a, text))
        self.html.append(f'<h{level} id="{a}">{html.escape(text)}</h{level}>')
        self.md.append(f"{'#' * level} {text}\n")

    def para(self, text: str, md: bool = True) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        if md:
            self.md.append(text + "\n")

    def bullets(self, items: list[str]) -> None:
        if not items:
            return
        self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        self.md.append("\n".join(f"- {i}" for i in items) + "\n")

    def table(self, df: pd.DataFrame, caption: str = "", md: bool = True, collapsed: bool = False) -> None:
        if not len(df):
            self.para(f"{caption}: (no rows)" if caption else "(no rows)", md=md)
            return
        body = df.to_html(index=False, escape=True, border=0, classes="t")
        cap = f"<p class='cap'>{html.escape(caption)}</p>" if caption else ""
        if collapsed:
            self.html.append(f"<details><summary>{html.escape(caption or 'table')}</summary>{body}</details>")
        else:
            self.html.append(cap + body)
        if md:
            self.md.append((f"*{caption}*\n\n" if caption else "") + markdown_table(df) + "\n")

    def code(self, text: str, title: str = "", md: bool = True) -> None:
        summary = f"<div class='cap'>{html.escape(title)}</div>" if title else ""
        self.html.append(f"{summary}<pre>{html.escape(text.rstrip())}</pre>")
        if md:
            self.md.append((f"{title}\n\n" if title else "") + "```python\n" + text.rstrip() + "\n```\n")

    def figure(self, fig: Any, name: str, caption: str) -> None:
        path = self.out / f"{name}.png"
        data = F.save_png(fig, path)
        self.figures.append(path)
        b64 = base64.b64encode(data).decode("ascii")
        self.html.append(
            f"<figure><img alt='{html.escape(name, quote=True)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        self.md.append(f"![{name}]({path.name})\n\n*{caption}*\n")

    def write(self, title: str, intro: list[str]) -> tuple[Path, Path]:
        toc = "".join(f"<li><a href='#{a}'>{html.escape(t)}</a></li>" for a, t in self.toc)
        page = (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>"
            + "".join(f"<p>{html.escape(i)}</p>" for i in intro)
            + (f"<nav><b>Contents</b><ol>{toc}</ol></nav>" if toc else "")
            + "\n".join(self.html)
            + "</body></html>\n"
        )
        html_path = self.out / "report.html"
        html_path.write_text(page, encoding="utf-8")
        md_path = self.out / "summary.md"
        md_path.write_text(f"# {title}\n\n" + "".join(i + "\n\n" for i in intro) + "\n".join(self.md), encoding="utf-8")
        return html_path, md_path


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2.2em}h3{margin-top:1.6em}
table.t{border-collapse:collapse;font-size:.85em;margin:.4em 0 1em}
table.t th,table.t td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
table.t th{background:#f2f2f2}table.t tr:nth-child(even) td{background:#fafafa}
pre{background:#f6f8fa;border:1px solid #ddd;padding:.6em .8em;font-size:.85em;overflow-x:auto}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption,.cap{font-size:.85em;color:#555}
nav{background:#f8f8f8;border:1px solid #e3e3e3;padding:.5em 1em;margin:1em 0}
details{margin:.5em 0}summary{cursor:pointer;color:#1f4e99}
"""


# ---- studies -------------------------------------------------------------------------------------


def _study_intro(doc: _Doc, st: Study) -> None:
    t = st.trials
    n = len(t)
    failed = int((~t["ok"]).sum()) if n else 0
    timeouts = int((t["status"] == "timeout").sum()) if n else 0
    names = paper_names(st.study, st.variants, st.vanilla)
    doc.para(
        f"Scale '{st.scale}': {len(st.variants)} cells × {len(st.tasks)} tasks × {st.trials_per or '?'} trials "
        f"of random hyperparameter search = {n} trials recorded, {failed} failed or diverged"
        f" (counted, shown, left out of every statistic), {timeouts} stopped by their time budget. "
        f"Reference cell: {st.vanilla} ({names.get(st.vanilla, st.vanilla)}). "
        f"Cells: {', '.join(f'{v} ({names[v]})' if names.get(v, v) != v else v for v in st.variants)}."
    )
    if 0 < st.trials_per < 2 * S.MIN_TOP:
        doc.para(
            f"Note: {st.trials_per} trials per cell and task give the t-tests and fANOVA almost no power; read this "
            "scale as a check of the pipeline, not as evidence for or against the paper."
        )
    items = [f"{task}: {st.stand_ins[task]}" for task in st.tasks if task in st.stand_ins]
    if items:
        doc.para("Stand-in tasks (the paper's data sets are out of reach on a CPU):")
        doc.bullets(items)
    if st.search_space:
        space = []
        for k, spec in st.search_space.items():
            spec = spec or {}
            rng = f"{spec.get('choices')}" if spec.get("dist") == "choice" else f"[{spec.get('low')}, {spec.get('high')}]"
            space.append(f"{k}: {spec.get('dist', '?')} {rng}")
        doc.para("Search space: " + "; ".join(space) + ".")


def _failures(doc: _Doc, st: Study) -> None:
    t = st.trials
    if not len(t):
        return
    bad = t[~t["ok"] | (t["status"] == "timeout")]
    if not len(bad):
        doc.para("No trial failed, diverged or timed out.")
        return
    table = bad.groupby(["variant", "task", "status"]).size().reset_index(name="trials")
    reasons = bad.groupby(["variant", "task", "status"])["reason"].agg(lambda r: next((x for x in r if x), "")).reset_index()
    table = table.merge(reasons, on=["variant", "task", "status"])
    table["reason"] = [str(r)[:120] for r in table["reason"]]
    doc.table(
        display(table, {"variant": "cell", "task": "task", "status": "status", "trials": "trials", "reason": "first reason"}),
        "Failed, diverged and timed-out trials",
    )


def _box_plots(doc: _Doc, st: Study, stem: str, trials: pd.DataFrame, welch: pd.DataFrame) -> None:
    names = paper_names(st.study, st.variants, st.vanilla)
    for task in st.tasks:
        mine = welch[welch["task"] == task] if len(welch) else welch
        verdicts = dict(zip(mine["variant"], mine["verdict"], strict=True)) if len(mine) else {}
        fig = F.box_plot(
            trials,
            task,
            st.variants,
            st.vanilla,
            names,
            verdicts,
            title=f"{st.run} · {task}: test result of every trial, per cell",
        )
        doc.figure(
            fig,
            f"{stem}-box-{slug(task)}",
            f"{task}: test results per cell ({metric_label(None, task)}). Boxes span the quartiles and whiskers the whole "
            f"range of finished trials; the best 10% of trials by validation are highlighted; a coloured box and * mark a "
            f"significant difference from {names.get(st.vanilla, st.vanilla)} (Welch's t-test on the best 10%, p < {S.ALPHA}).",
        )


def _welch_display(w: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    w = w.copy()
    w["cell"] = [f"{v} ({names.get(v, v)})" if names.get(v, v) != v else v for v in w["variant"]]
    return display(
        w,
        {
            "task": "task",
            "cell": "cell",
            "subset": "trials tested",
            "n": "n",
            "failed": "failed",
            "mean": "mean",
            "vanilla_mean": "reference mean",
            "median": "median",
            "vanilla_median": "reference median",
            "t": "t",
            "p": "p",
            "verdict": "verdict",
        },
    )


def _greff_section(doc: _Doc, st: Study, stem: str) -> None:
    names = paper_names(st.study, st.variants, st.vanilla)
    trials = S.mark_top(st.trials)
    detail, summary = S.greff_conclusions(st)
    doc.heading(3, "Conclusions: ours beside the paper's")
    doc.para(
        f"Each cell against vanilla ({st.vanilla}) on each task: Welch's t-test (scipy, equal_var=False) of the test "
        f"results of the best 10% of trials by validation (at least {S.MIN_TOP}); p < {S.ALPHA} is significant (*), with "
        f"no correction for multiple comparisons. 'p (all)' tests every finished trial. Tasks are read as the paper's "
        "kinds from their stand-in notes: JSB-like (music) or TIMIT/IAM-like; the paper's NIG/NOG/NIAF finding "
        "differs between them."
    )
    doc.table(
        display(
            summary,
            {
                "variant": "cell",
                "paper_name": "paper",
                "ours": "our verdict (per task)",
                "paper": "paper's finding",
                "agrees": "agrees",
            },
        ),
        "Per cell",
    )
    if len(detail):
        d = detail.copy()
        d["cell"] = [f"{v} ({names.get(v, v)})" for v in d["variant"]]
        d["n"] = [f"{a}/{b}" for a, b in zip(d["n"], d["trials"], strict=True)]
        doc.table(
            display(
                d,
                {
                    "cell": "cell",
                    "task": "task",
                    "kind": "kind",
                    "n": "tested/trials",
                    "failed": "failed",
                    "mean": "mean",
                    "vanilla_mean": "vanilla mean",
                    "median": "median",
                    "vanilla_median": "vanilla median",
                    "p": "p (best 10%)",
                    "p_all": "p (all)",
                    "ours": "ours",
                    "paper": "paper",
                    "agrees": "agrees",
                },
            ),
            "Per cell and task: test results of the best 10% against vanilla's",
        )
    welch_top = S.welch_table(trials, st.vanilla, "top")
    welch_all = S.welch_table(trials, st.vanilla, "all")
    doc.heading(3, "Test results per cell")
    _box_plots(doc, st, stem, trials, welch_top)
    doc.table(
        _welch_display(pd.concat([welch_top, welch_all], ignore_index=True), names),
        "Welch's t-tests against vanilla, on the best 10% and on every finished trial",
        md=False,
        collapsed=True,
    )
    doc.heading(3, "Hyperparameters")
    imp = S.fanova_importance(st.trials, st.search_space)
    doc.para(
        "fANOVA (Hutter et al. 2014) with Optuna's FanovaImportanceEvaluator (a random forest of 64 trees) on an "
        "in-memory Optuna study built from the finished trials, per task, pooled over the cells as in Greff et al.'s "
        "Figure 5. Log-uniformly sampled hyperparameters are analysed in log10 (momentum as log10(1 − momentum)); "
        "a bar is the share of test-result variance that hyperparameter explains alone; the rest is interactions and noise."
    )
    if len(imp):
        doc.figure(
            F.fanova_plot(imp, f"{st.run}: fANOVA hyperparameter importance (main effects)"),
            f"{stem}-fanova",
            "fANOVA: share of test-result variance explained by each hyperparameter alone, per task.",
        )
        rest = imp.groupby("task")["importance"].sum().rename("sum").reset_index()
        table = imp.merge(rest, on="task")
        table["importance"] = 100 * table["importance"]
        table["interactions and noise"] = 100 * (1 - table["sum"])
        doc.table(
            display(
                table,
                {
                    "task": "task",
                    "hyperparameter": "hyperparameter",
                    "scale": "analysed as",
                    "importance": "% of variance",
                    "interactions and noise": "% left (interactions, noise)",
                    "trials": "trials",
                    "settings": "distinct settings",
                },
            ),
            "fANOVA main effects",
        )
    else:
        doc.para("fANOVA needs at least 8 distinct hyperparameter settings with finished trials per task: no task has them here.")
    for task in st.tasks:
        doc.figure(
            F.marginal_plot(
                trials, task, st.variants, names, title=f"{st.run} · {task}: test result against learning rate and hidden size"
            ),
            f"{stem}-marginal-{slug(task)}",
            f"{task}: test result of each finished trial against learning rate and hidden size (log axes), coloured "
            "by cell; the line is the median over all cells in log-spaced bins; crosses at the bottom are trials "
            "that failed or diverged.",
        )
    doc.heading(3, "Failures")
    _failures(doc, st)


def _jozefowicz_section(doc: _Doc, st: Study, stem: str, searches: list[RunRow]) -> None:
    names = paper_names(st.study, st.variants, st.vanilla)
    best = S.best_of_trials(st)
    wide = S.best_of_trials_wide(best, st)
    doc.heading(3, "Best trial per cell, relative to the GRU")
    doc.para(
        f"As in the paper's Table 1, each cell's best of its hyperparameter trials: the test result of the trial with the "
        f"best validation result (choosing on validation, not test), and that result relative to {st.vanilla}'s "
        "(accuracy: a plain ratio; an error metric: a ratio of log-error skills, as the search's fitness). "
        "'min / GRU' is the paper's fitness, the minimum over the tasks."
    )
    if len(wide):
        wide = wide.rename(columns={"variant": "cell", "paper_name": "paper"})
        doc.table(display(wide), "Best-of-trials test result per task, and relative to the GRU")
        doc.figure(
            F.relative_bar_plot(best, st.variants, names, f"{st.run}: best trial per cell, relative to the GRU ({st.vanilla})"),
            f"{stem}-relative",
            "Best-of-trials test result of each cell relative to the GRU's, per task (dashed line: the GRU).",
        )
    doc.heading(3, "Conclusions: ours beside the paper's")
    concl = S.jozefowicz_conclusions(st, best)
    doc.para(
        f"Decided on the best-of-trials results relative to the GRU; two results within {S.TOLERANCE} of each "
        "other count as equal (≈). A claim about cells the study did not run is left out."
    )
    doc.table(display(concl), "The paper's claims")
    trials = S.mark_top(st.trials)
    welch_top = S.welch_table(trials, st.vanilla, "top")
    welch_all = S.welch_table(trials, st.vanilla, "all")
    doc.heading(3, "Test results per cell")
    _box_plots(doc, st, stem, trials, welch_top)
    doc.table(
        _welch_display(pd.concat([welch_top, welch_all], ignore_index=True), names),
        f"Welch's t-tests against {st.vanilla}, on the best 10% and on every finished trial",
        md=False,
    )
    linked = [r.name for r in searches if r.config.get("study_of") == st.run]
    if linked:
        doc.para(f"The evolutionary search of this study: {', '.join(linked)} (its own section below).")
    doc.heading(3, "Failures")
    _failures(doc, st)


# ---- searches -----------------------------------------------------------------------------------


def best_evolved(cells: pd.DataFrame) -> tuple[pd.Series | None, pd.Series | None]:
    """(the run's best evolved cell, the evolved cell with the highest search score) from a
    ``top_frame``: as ``cellsearch run`` reports it, the best is the non-zoo cell that held up best on
    held-out training seeds where the run confirmed some, else the one with the highest search score."""
    evolved = cells[cells["name"].isna()] if len(cells) else cells
    if not len(evolved):
        return None, None
    by_search = evolved.iloc[0]
    confirmed = evolved[evolved["confirmed"].notna()] if "confirmed" in evolved.columns else evolved.iloc[:0]
    if len(confirmed):
        return confirmed.loc[confirmed["confirmed"].astype(float).idxmax()], by_search
    return by_search, by_search


def _reach_section(doc: _Doc, store: Store, run: RunRow, stem: str) -> None:
    """Score against gradient reach, when the run stored diagnostics with its evaluations (``diagnose = true``)."""
    try:
        diag = diagnostics_frame(store, run=run.name)
    except ConfigError:
        return
    if not len(diag) or int(diag["diagnosed"].sum()) == 0:
        return
    doc.heading(3, "Score against gradient reach")
    lags = diag["max_lag"].dropna()
    window = f"lags up to {int(lags.max())}" if len(lags) else "the lags measured"
    doc.figure(
        F.reach_plot(diag, f"{run.name}: score against gradient reach"),
        f"{stem}-reach",
        "One point per cell that entered a population: its score against its gradient reach (the first lag where "
        "the gradient of a random projection of the states falls below 1e-3 of its lag-0 value; median over the "
        f"cell's evaluations, on 8 sequences of each task, {window}), at initialisation and after training. "
        "Triangles: reach beyond the lags measured.",
    )
    doc.table(
        display(
            diag.head(15),
            {
                "rank": "rank",
                "hash": "hash",
                "name": "name",
                "score": "score",
                "reach": "reach",
                "reach_init": "reach (init)",
                "spectral_radius": "ρ(J)",
                "spectral_radius_init": "ρ(J) (init)",
                "singular_max": "σ_max(J)",
                "saturation": "gate saturation",
                "diagnosed": "evaluations",
            },
        ),
        "Cells by gradient reach after training (medians over their evaluations)",
        md=False,
        collapsed=True,
    )


def _search_section(doc: _Doc, store: Store, run: RunRow, stem: str, runs_table: pd.DataFrame) -> None:
    cfg = run.config
    row = runs_table.set_index("run").loc[run.name] if len(runs_table) and run.name in set(runs_table["run"]) else None
    of = cfg.get("study_of")
    facts = [
        f"status {run.status}, {run.generation} generation(s) finished of {int(cfg.get('generations', 0)) + 1}",
        f"population {cfg.get('population')}, selection {cfg.get('selection', 'single')}",
        f"tasks {', '.join(cfg.get('tasks', []))}",
    ]
    if row is not None:
        facts.append(
            f"{int(row['evaluations'])} evaluations, {int(row['failures'])} failed or diverged, "
            f"{int(row['timeouts'])} timed out, {run.seconds:.0f} s"
        )
    if of:
        facts.insert(0, f"the evolutionary search of study {of}")
    doc.para("; ".join(facts) + ".")
    progress = S.search_progress(store.logbook(run.id))
    doc.heading(3, "Progress over generations")
    doc.figure(
        F.progress_plot(progress, f"{run.name}: population score per generation"),
        f"{stem}-progress",
        "Population score per generation (DEAP's logbook): best, mean ± std, worst. Score = min over the tasks of "
        "the cell's validation result relative to the GRU's (the GRU scores 1).",
    )
    if len(progress):
        p = progress.copy()
        p["best"] = [str(h)[:12] if isinstance(h, str) else h for h in p["best"]]
        doc.table(
            display(
                p,
                {
                    "generation": "generation",
                    "nevals": "evaluations",
                    "max": "best",
                    "avg": "mean",
                    "std": "std",
                    "min": "worst",
                    "best": "best cell",
                },
            ),
            "Logbook",
            md=False,
            collapsed=True,
        )
    try:
        cells = top_frame(store, run=run.name, limit=10**9)
    except ConfigError:
        cells = pd.DataFrame()
    if not len(cells):
        doc.para("No finished generation yet: no leaderboard.")
        return
    below = float((cells["score"].astype(float) < 0.9).mean())
    best, by_search = best_evolved(cells)
    msg = f"{len(cells)} distinct cells entered a population; {100 * below:.0f}% of them score below 0.9 of the GRU."
    if best is not None:
        held = "" if _missing(best.get("confirmed")) else f" and {float(best['confirmed']):.3f} on held-out training seeds"
        msg += (
            f" The best evolved cell, {str(best['hash'])[:12]} (first in generation {int(best['generation'])}), scores "
            f"{float(best['score']):.3f} in the search{held}."
        )
        if by_search is not None and by_search["hash"] != best["hash"]:
            msg += (
                f" The highest search score, {float(by_search['score']):.3f}, is {str(by_search['hash'])[:12]}'s, "
                "which held up less well on held-out seeds."
            )
    doc.para(msg)
    doc.heading(3, "Score against size")
    doc.figure(
        F.pareto_plot(cells, f"{run.name}: score against parameter count", None if best is None else str(best["hash"])),
        f"{stem}-pareto",
        "Every cell that entered a population: score against parameter count, coloured by the generation it first "
        "appeared in; the Pareto front (the best score for its size) is circled and joined.",
    )
    front = cells[S.pareto_mask(cells["score"], cells["params"])].sort_values("params")
    doc.table(
        display(front, {"hash": "hash", "name": "name", "score": "score", "params": "parameters", "generation": "generation"}),
        "Pareto front",
        md=False,
    )
    _reach_section(doc, store, run, stem)
    doc.heading(3, "Leaderboard")
    lead = pd.concat([cells.head(10), cells.iloc[10:][cells.iloc[10:]["reference"]]])
    task_cols = {c: c.replace("_relative", " / GRU") for c in cells.columns if c.endswith("_relative")}
    doc.table(
        display(
            lead,
            {
                "rank": "rank",
                "hash": "hash",
                "name": "name",
                "score": "score",
                "confirmed": "confirmed",
                **task_cols,
                "params": "parameters",
                "flops": "FLOPs/step",
                "generation": "generation",
            },
        ),
        "Best cells (LSTM and GRU always listed); 'confirmed' is the score on held-out training seeds",
    )
    for r in lead.to_dict(orient="records"):
        label = f"#{r['rank']} {str(r['hash'])[:12]}" + (f" ({r['name']})" if isinstance(r.get("name"), str) else "")
        doc.code(
            str(r["text"]),
            f"{label}: score {fmt_value(r['score'])}, {fmt_value(r['params'])} parameters",
            md=bool(best is not None and r["hash"] == best["hash"]),
        )
    doc.heading(3, "Lineage of the best evolved cell")
    if best is None:
        doc.para("No evolved cell entered a population.")
        return
    lineage = lineage_frame(store, str(best["hash"]))
    if not len(lineage):
        doc.para(f"{str(best['hash'])[:12]} is a random cell of the seed population: it has no ancestors.")
        return
    info: dict[str, dict[str, Any]] = {}
    for r in lineage.to_dict(orient="records"):
        info.setdefault(r["child"], {"name": r["child_name"]})
        info.setdefault(r["parent"], {"name": r["parent_name"]})
    for r in cells.to_dict(orient="records"):
        info[r["hash"]] = {"name": r.get("name"), "score": r.get("score"), "generation": r.get("generation")}
    doc.figure(
        F.lineage_plot(lineage, str(best["hash"]), info, f"{run.name}: lineage of {str(best['hash'])[:8]}"),
        f"{stem}-lineage",
        f"Ancestry of the best evolved cell {str(best['hash'])[:12]} up to the seed cells; "
        "scores are population scores in this run where the cell entered one.",
    )
    doc.table(
        display(
            lineage,
            {
                "depth": "depth",
                "child": "child",
                "child_name": "child name",
                "parent": "parent",
                "parent_name": "parent name",
                "operator": "operator",
                "run": "run",
                "generation": "generation",
            },
        ),
        "Lineage edges (child ← parent)",
        md=False,
    )


# ---- the report ---------------------------------------------------------------------------------


def write_report(
    db: Store | str,
    out: str | Path,
    runs: list[str] | tuple[str, ...] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Write ``out/report.html`` (self-contained), ``out/summary.md`` and the PNG figures for every run
    of ``db`` (or only ``runs``). ``ConfigError`` for a missing database, an unknown run, or an ``out``
    that cannot be a folder."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display needed; figures never go through pyplot anyway
    store = db if isinstance(db, Store) else Store(db, create=False)
    chosen = select_runs(store, runs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the report folder {out}: {err.strerror}") from None
    ev = evaluations_frame(store)
    runs_table = runs_frame(store)
    searches = [r for r in store.runs() if run_kind(r) == "search"]
    doc = _Doc(out)
    sections: list[str] = []
    overview = []
    for r in chosen:
        row = runs_table[runs_table["run"] == r.name]
        overview.append(
            {
                "run": r.name,
                "kind": "claims"
                if run_kind(r) == "claims"
                else r.config.get("study") or (f"search of {r.config['study_of']}" if r.config.get("study_of") else "search"),
                "scale": r.config.get("scale", "–"),
                "status": r.status,
                "tasks": ", ".join(r.config.get("tasks", [])),
                "evaluations": int(row["evaluations"].iloc[0]) if len(row) else 0,
                "failures": int(row["failures"].iloc[0]) if len(row) else 0,
                "created": row["created"].iloc[0] if len(row) else "",
            }
        )
    doc.heading(2, "Runs")
    doc.table(display(pd.DataFrame(overview)), "The runs in this report")
    stems: set[str] = set()
    for r in chosen:
        stem = slug(r.name)
        while stem in stems:
            stem += "_"
        stems.add(stem)
        if progress is not None:
            progress(r.name)
        if run_kind(r) == "study":
            st = load_study(store, r, ev)
            title = f"Study {r.name}: {STUDY_TITLES[st.study]}"
            doc.heading(2, title, toc=True)
            _study_intro(doc, st)
            if not len(st.trials):
                doc.para("No trials recorded yet.")
            elif st.study == "greff2016":
                _greff_section(doc, st, stem)
            else:
                _jozefowicz_section(doc, st, stem, searches)
        elif run_kind(r) == "claims":
            title = f"Claims {r.name}: the LSTM review's claims"
            doc.heading(2, title, toc=True)
            scale, seed = r.config.get("scale", "smoke"), r.config.get("seed", 0)
            doc.para(
                f"{len(r.config.get('claims', []))} claims at scale '{scale}'. Their verdicts, per-seed tables and figures "
                f"are written by `cellsearch claims --scale {scale} --db URL --out DIR`"
                + (f" --seed {seed}" if seed else "")
                + " (DIR/summary.md), which reads this database and trains nothing already stored."
            )
        else:
            title = f"Search {r.name}" + (f" (evolutionary search of {r.config['study_of']})" if r.config.get("study_of") else "")
            doc.heading(2, title, toc=True)
            _search_section(doc, store, r, stem, runs_table)
        sections.append(title)
    from .. import __version__

    intro = [
        f"Database {store.url}; {len(chosen)} run(s); written {time.strftime('%Y-%m-%d %H:%M:%S')} by cellsearch {__version__}.",
        "Test scores are test-set results of each trial; failed or diverged trials are counted and shown but left out of "
        "every statistic. Figures are drawn with seaborn.",
    ]
    html_path, md_path = doc.write("cellsearch report", intro)
    return Report(out=out, html=html_path, markdown=md_path, figures=doc.figures, sections=sections)
