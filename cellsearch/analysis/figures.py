"""The report's figures, drawn with seaborn on ``matplotlib.figure.Figure`` objects.

No figure goes through ``pyplot``: each function builds and returns a ``Figure`` (the Agg canvas
renders it when saved), so drawing changes no global state and needs no display. ``save_png``
writes one to a file and returns its bytes (the HTML report embeds them).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .data import higher_is_better, metric_label
from .stats import ALPHA, MIN_TOP, TOP_FRACTION, pareto_mask

WORSE = "#d62728"
BETTER = "#1f77b4"
NEUTRAL = "#d9d9d9"
VANILLA = "#a6a6a6"
TOP = "#ff7f0e"
DPI = 110

HP_LABELS = {
    "lr": "learning rate",
    "hidden": "hidden units",
    "momentum": "momentum",
    "input_noise": "input noise (std)",
    "init_scale": "initial weight scale",
    "clip": "gradient clip",
    "batch": "batch size",
}


@contextmanager
def style() -> Iterator[None]:
    """seaborn's whitegrid style and notebook context, for the figures drawn inside."""
    import seaborn as sns

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        yield


def save_png(fig: Figure, path: Path | None = None) -> bytes:
    """Render ``fig`` as PNG; write it to ``path`` when given; return the bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    data = buf.getvalue()
    if path is not None:
        path.write_bytes(data)
    return data


def _log_scale_wanted(values: Any, hib: bool) -> bool:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return (not hib) and len(v) > 1 and bool((v > 0).all()) and float(v.max()) > 10 * float(v.min())


def _log_y(ax: Any) -> None:
    """A log y axis with plain 1-2-5 tick labels (10, 20, 50, 100 rather than 10¹, 10²)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _integer_log_ticks(ax: Any, low: float, high: float) -> None:
    """Plain integer ticks (16, 24, 32, 48, 64, ...) on a log x axis of sizes, instead of 3×10¹."""
    from matplotlib.ticker import FixedLocator, NullLocator, StrMethodFormatter

    nice = sorted({int(k * 2**n) for n in range(0, 20) for k in (1, 1.5)})
    ticks = [t for t in nice if low <= t <= high] or [round(low), round(high)]
    while len(ticks) > 7:
        ticks = ticks[::2]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:.0f}"))
    ax.xaxis.set_minor_locator(NullLocator())


def _empty(fig: Figure, message: str) -> Figure:
    ax = fig.subplots()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    return fig


# ---- studies ---------------------------------------------------------------------------------------


def box_plot(
    trials: pd.DataFrame,
    task: str,
    variants: list[str],
    vanilla: str,
    names: dict[str, str] | None = None,
    verdicts: dict[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """Greff-style box plot of one task's test results per variant: the box spans the quartiles and
    the whiskers the whole range of the finished trials, the dot is the mean; each trial is a point,
    the best 10% (by validation) highlighted. ``verdicts`` (variant -> ``worse``/``better``/...)
    colours the significantly different boxes. ``trials`` needs the ``top`` column of ``mark_top``."""
    import seaborn as sns

    names = names or {}
    verdicts = verdicts or {}
    here = trials[trials["task"] == task]
    order = [v for v in variants if v in set(here["variant"])]
    with style():
        fig = Figure(figsize=(max(6.0, 0.85 * len(order) + 2.5), 5.2))
        ok = here[here["ok"]].copy()
        if not len(ok):
            return _empty(fig, f"{task}: no finished trials")
        hib = higher_is_better(task)
        palette = {}
        for v in order:
            verdict = verdicts.get(v)
            palette[v] = WORSE if verdict == "worse" else BETTER if verdict == "better" else VANILLA if v == vanilla else NEUTRAL
        ax = fig.subplots()
        sns.boxplot(
            data=ok,
            x="variant",
            y="test",
            hue="variant",
            order=order,
            hue_order=order,
            palette=palette,
            legend=False,
            whis=(0, 100),
            showfliers=False,
            showmeans=True,
            width=0.6,
            linewidth=1.0,
            ax=ax,
            meanprops={"marker": "o", "markerfacecolor": "black", "markeredgecolor": "black", "markersize": 4},
        )
        rest = ok[~ok["top"]]
        top = ok[ok["top"]]
        if len(rest):
            sns.stripplot(data=rest, x="variant", y="test", order=order, color="#555555", size=3, alpha=0.5, jitter=0.2, ax=ax)
        if len(top):
            sns.stripplot(
                data=top,
                x="variant",
                y="test",
                order=order,
                color=TOP,
                size=5.5,
                jitter=0.12,
                ax=ax,
                edgecolor="black",
                linewidth=0.5,
            )
        ticks = []
        for v in order:
            g = here[here["variant"] == v]
            failed = int((~g["ok"]).sum())
            mark = " *" if verdicts.get(v) in ("worse", "better") else ""
            ticks.append(f"{names.get(v, v)}{mark}\nn={len(g)}" + (f", {failed} failed" if failed else ""))
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(ticks, fontsize=8)
        ax.set_xlabel("")
        ax.set_ylabel(metric_label(str(ok["metric"].dropna().iloc[0]) if ok["metric"].notna().any() else None, task))
        if _log_scale_wanted(ok["test"], hib):
            _log_y(ax)
        ax.set_title(title or f"{task}: test result of every trial, per variant")
        frac = f"best {round(100 * TOP_FRACTION)}% of trials (by validation; at least {MIN_TOP})"
        handles = [
            Line2D([], [], marker="o", ls="", color=TOP, markeredgecolor="black", markersize=6, label=frac),
            Line2D([], [], marker="o", ls="", color="#555555", alpha=0.5, markersize=4, label="other finished trials"),
            Line2D([], [], marker="o", ls="", color="black", markersize=4, label="mean; line: median; whiskers: range"),
            Patch(
                facecolor=WORSE,
                edgecolor="black",
                label=f"* worse than {names.get(vanilla, vanilla)} (Welch p<{ALPHA}, best 10%)",
            ),
            Patch(
                facecolor=BETTER,
                edgecolor="black",
                label=f"* better than {names.get(vanilla, vanilla)} (Welch p<{ALPHA}, best 10%)",
            ),
            Patch(facecolor=VANILLA, edgecolor="black", label=f"{names.get(vanilla, vanilla)} (the reference)"),
        ]
        fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.02))
        fig.subplots_adjust(bottom=0.3)
        fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig


def fanova_plot(importance: pd.DataFrame, title: str | None = None) -> Figure:
    """Bar chart of fANOVA main effects: per hyperparameter (its analysed scale in brackets) the share
    of test-result variance it explains alone, one bar per task."""
    import seaborn as sns

    with style():
        if not len(importance):
            return _empty(Figure(figsize=(6, 2)), "fANOVA: too few finished trials")
        df = importance.copy()
        df["percent"] = 100 * df["importance"]
        df["label"] = [
            f"{HP_LABELS.get(h, h)}" + ("" if s == "linear" else f"  [{s}]")
            for h, s in zip(df["hyperparameter"], df["scale"], strict=True)
        ]
        order = df.groupby("label")["percent"].mean().sort_values(ascending=False).index.tolist()
        fig = Figure(figsize=(7.5, 1.2 + 0.45 * len(order) * max(1, df["task"].nunique()) ** 0.5))
        ax = fig.subplots()
        sns.barplot(data=df, y="label", x="percent", hue="task", order=order, orient="h", ax=ax, palette="deep")
        ax.set_xlabel("share of test-result variance explained by this hyperparameter alone (%)")
        ax.set_ylabel("")
        ax.set_xlim(0, max(5.0, float(df["percent"].max()) * 1.15))
        ax.legend(title="task", fontsize=8, title_fontsize=8, loc="lower right")
        ax.set_title(title or "fANOVA hyperparameter importance (main effects)")
        fig.tight_layout()
    return fig


def marginal_plot(
    trials: pd.DataFrame,
    task: str,
    variants: list[str],
    names: dict[str, str] | None = None,
    params: tuple[str, ...] = ("lr", "hidden"),
    title: str | None = None,
) -> Figure:
    """Test result against each hyperparameter of ``params`` (log axes), one point per finished
    trial coloured by variant, the median over all variants in log-spaced bins as a line, and the
    trials that failed or diverged as crosses along the bottom."""
    import seaborn as sns

    names = names or {}
    here = trials[trials["task"] == task]
    shown = [p for p in params if f"hp_{p}" in here.columns and pd.to_numeric(here[f"hp_{p}"], errors="coerce").nunique() > 1]
    with style():
        if not shown:
            return _empty(Figure(figsize=(6, 2)), f"{task}: {', '.join(params)} did not vary")
        fig = Figure(figsize=(4.6 * len(shown) + 2.0, 4.4))
        axes = fig.subplots(1, len(shown), squeeze=False)[0]
        ok = here[here["ok"]].copy()
        ok["cell"] = [names.get(v, v) for v in ok["variant"]]
        hue_order = [names.get(v, v) for v in variants if v in set(ok["variant"])]
        hib = higher_is_better(task)
        metric = str(ok["metric"].dropna().iloc[0]) if ok["metric"].notna().any() else None
        for k, (p, ax) in enumerate(zip(shown, axes, strict=True)):
            col = f"hp_{p}"
            ok[col] = pd.to_numeric(ok[col], errors="coerce")
            sns.scatterplot(
                data=ok,
                x=col,
                y="test",
                hue="cell",
                hue_order=hue_order,
                palette="tab10",
                s=22,
                alpha=0.75,
                ax=ax,
                legend=k == len(shown) - 1,
            )
            x = ok[col].astype(float)
            positive = bool((x > 0).all()) and len(x) > 0
            if positive:
                ax.set_xscale("log")
            if len(ok) >= 8:
                edges = np.geomspace(x.min(), x.max(), 9) if positive else np.linspace(x.min(), x.max(), 9)
                b = pd.cut(x, edges, include_lowest=True)
                med = ok.groupby(b, observed=True).agg(x=(col, "median"), y=("test", "median")).dropna()
                ax.plot(med["x"], med["y"], color="black", lw=1.8, label="median (all variants)")
            failed = here[~here["ok"]]
            fx = pd.to_numeric(failed[col], errors="coerce").dropna()
            if len(fx):
                ax.plot(
                    fx,
                    np.full(len(fx), 0.02),
                    "x",
                    color=WORSE,
                    ms=6,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                    label="failed or diverged",
                )
            if positive and bool((x == x.round()).all()):
                _integer_log_ticks(ax, float(x.min()), float(x.max()))
            unit = " (log scale)" if positive else ""
            ax.set_xlabel(f"{HP_LABELS.get(p, p)}{unit}")
            ax.set_ylabel(metric_label(metric, task) if k == 0 else "")
            if _log_scale_wanted(ok["test"], hib):
                _log_y(ax)
        handles, labels = [], []
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
            if ax.get_legend() is not None:
                ax.get_legend().remove()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False, title="variant")
        fig.suptitle(title or f"{task}: test result against the hyperparameters")
        fig.tight_layout()
    return fig


def relative_bar_plot(
    best: pd.DataFrame, variants: list[str], names: dict[str, str] | None = None, title: str | None = None
) -> Figure:
    """Jozefowicz-style: each cell's best-of-trials test result relative to the GRU's, per task."""
    import seaborn as sns

    names = names or {}
    with style():
        df = best.dropna(subset=["relative"]).copy()
        if not len(df):
            return _empty(Figure(figsize=(6, 2)), "no finished trials")
        df["cell"] = [names.get(v, v) for v in df["variant"]]
        order = [names.get(v, v) for v in variants if v in set(df["variant"])]
        fig = Figure(figsize=(max(6.0, 0.8 * len(order) + 2.5), 4.6))
        ax = fig.subplots()
        sns.barplot(data=df, x="cell", y="relative", hue="task", order=order, ax=ax, palette="deep")
        ax.axhline(1.0, color="black", ls="--", lw=1, label="GRU = 1")
        ax.set_xlabel("")
        ax.set_ylabel("best-of-trials test result / GRU's")
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(title="task", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        ax.set_title(title or "best trial per cell, relative to the GRU")
        fig.tight_layout()
    return fig


# ---- searches ---------------------------------------------------------------------------------------


def progress_plot(progress: pd.DataFrame, title: str | None = None) -> Figure:
    """A search's population score per generation: best, mean ± std, worst (DEAP's logbook)."""
    import seaborn as sns

    with style():
        if not len(progress):
            return _empty(Figure(figsize=(6, 2)), "no finished generation yet")
        df = progress.astype({"avg": float, "std": float, "min": float, "max": float})
        fig = Figure(figsize=(7, 4.2))
        ax = fig.subplots()
        ax.fill_between(
            df["generation"], df["avg"] - df["std"], df["avg"] + df["std"], color=BETTER, alpha=0.15, label="mean ± std"
        )
        long = df.melt(id_vars="generation", value_vars=["max", "avg", "min"], var_name="statistic", value_name="score")
        long["statistic"] = long["statistic"].map({"max": "best", "avg": "mean", "min": "worst"})
        sns.lineplot(
            data=long,
            x="generation",
            y="score",
            hue="statistic",
            style="statistic",
            markers=True,
            dashes=False,
            palette={"best": WORSE, "mean": BETTER, "worst": "#7f7f7f"},
            ax=ax,
        )
        ax.axhline(1.0, color="black", ls="--", lw=1, label="GRU = 1")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("generation (0 = seed population)")
        ax.set_ylabel("population score (min over tasks of result / GRU's)")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        ax.set_title(title or "search progress")
        fig.tight_layout()
    return fig


def pareto_plot(cells: pd.DataFrame, title: str | None = None, best: str | None = None) -> Figure:
    """Score against parameter count of every cell that entered a population; the Pareto front
    (highest score for its size) joined by a line; the zoo cells (the seeds) and the best evolved
    cell (``best``, a hash; by default the evolved cell with the highest score) labelled."""
    import seaborn as sns

    with style():
        df = cells.dropna(subset=["score", "params"]).copy()
        if not len(df):
            return _empty(Figure(figsize=(6, 2)), "no scored cells")
        df["params"] = df["params"].astype(float)
        df["score"] = df["score"].astype(float)
        front = pareto_mask(df["score"], df["params"])
        fig = Figure(figsize=(7.5, 4.8))
        ax = fig.subplots()
        sns.scatterplot(
            data=df, x="params", y="score", hue="generation", palette="viridis", s=40, alpha=0.85, ax=ax, edgecolor="none"
        )
        f = df[front].sort_values("params")
        ax.step(f["params"], f["score"], where="post", color=WORSE, lw=1.5, label="Pareto front")
        ax.scatter(f["params"], f["score"], s=90, facecolors="none", edgecolors=WORSE, lw=1.5)
        evolved = df[df["name"].isna()] if "name" in df.columns else df.iloc[:0]
        labelled = [r for r in df.to_dict(orient="records") if isinstance(r.get("name"), str) and r["name"]]
        if best is not None and best in set(df["hash"]):
            labelled.append(dict(df[df["hash"] == best].iloc[0]))
        elif len(evolved):
            labelled.append(dict(evolved.sort_values(["score", "params"], ascending=[False, True]).iloc[0]))
        logx = df["params"].max() > 10 * df["params"].min()
        if logx:
            ax.set_xscale("log")
        placed: list[tuple[float, float]] = []
        xs = np.log10(df["params"]) if logx else df["params"]
        xspan = max(float(xs.max() - xs.min()), 1e-9)
        yspan = max(float(df["score"].max() - df["score"].min()), 1e-9)
        for r in labelled:
            text = r["name"] if isinstance(r.get("name"), str) else f"best evolved {str(r['hash'])[:8]}"
            x = (math.log10(r["params"]) if logx else r["params"]) / xspan
            y = r["score"] / yspan
            near = sum(1 for px, py in placed if abs(px - x) < 0.15 and abs(py - y) < 0.05)  # stack close labels
            placed.append((x, y))
            ax.annotate(
                text,
                (r["params"], r["score"]),
                xytext=(6, 6 - 11 * near),
                textcoords="offset points",
                fontsize=8,
                bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7},
            )
        ax.set_xlabel("parameters (at the run's input and hidden size)")
        ax.set_ylabel("score (min over tasks of result / GRU's)")
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(
            handles,
            labels,
            title="first generation",
            fontsize=8,
            title_fontsize=8,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
        )
        ax.set_title(title or "score against size: every cell that entered a population")
        fig.tight_layout()
    return fig


def reach_plot(cells: pd.DataFrame, title: str | None = None) -> Figure:
    """Score against gradient reach (log x), one point per cell, from ``diagnostics_frame``: at
    initialisation (left) and after training (right), coloured by the generation the cell first
    appeared in; the zoo cells labelled. A triangle marks a cell whose gradient stayed above 1e-3 of
    its lag-0 value within the measured lags in at least half of its evaluations: its reach is a lower
    bound."""
    import seaborn as sns
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    with style():
        df = cells.copy()
        for c in ("score", "reach", "reach_init", "generation", "unreached", "unreached_init", "diagnosed"):
            df[c] = pd.to_numeric(df[c], errors="coerce") if c in df.columns else np.nan
        df = df[df["score"].notna() & (df["reach"].notna() | df["reach_init"].notna())]
        if not len(df):
            return _empty(Figure(figsize=(6, 2)), "no cells with diagnostics")
        df["generation"] = df["generation"].fillna(0).astype(int)
        generations = sorted(set(df["generation"]))
        palette = dict(zip(generations, sns.color_palette("viridis", len(generations)), strict=True))
        fig = Figure(figsize=(10.5, 4.4))
        axes = fig.subplots(1, 2, sharey=True)
        yspan = max(float(df["score"].max() - df["score"].min()), 1e-9)
        for ax, col, missed, when in (
            (axes[0], "reach_init", "unreached_init", "at initialisation"),
            (axes[1], "reach", "unreached", "after training"),
        ):
            d = df[df[col].notna()].copy()
            d[col] = d[col].clip(lower=1.0)  # a gradient gone at lag 1 sits at the left edge
            bound = (d[missed] * 2 >= d["diagnosed"]).fillna(False).astype(bool)
            for marker, part in (("o", d[~bound]), (">", d[bound])):
                if len(part):
                    sns.scatterplot(data=part, x=col, y="score", hue="generation", palette=palette, marker=marker, s=45,
                                    alpha=0.85, ax=ax, edgecolor="none", legend=False)  # fmt: skip
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            lo, hi = float(d[col].min()), float(d[col].max())
            ax.set_xlim(lo / 1.4, hi * 1.4)
            placed: list[tuple[float, float]] = []
            for r in d.sort_values(["score", col]).to_dict(orient="records"):
                if not (isinstance(r.get("name"), str) and r["name"]):
                    continue
                x, y = math.log10(r[col]), r["score"] / yspan
                near = sum(1 for px, py in placed if abs(px - x) < 0.12 and abs(py - y) < 0.06)  # stack close labels
                placed.append((x, y))
                box = {"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7}
                ax.annotate(r["name"], (r[col], r["score"]), xytext=(5, 4 + 10 * near), textcoords="offset points",
                            fontsize=8, bbox=box)  # fmt: skip
            ax.set_xlabel(f"gradient reach {when} (lags)")
        axes[0].set_ylabel("score (min over tasks of result / GRU's)")
        handles = [Line2D([], [], marker="o", ls="", color=palette[g], label=f"generation {g}") for g in generations]
        handles += [
            Line2D([], [], marker="o", ls="", color="#555555", label="reach"),
            Line2D([], [], marker=">", ls="", color="#555555", label="reach ≥ (not reached\nin the lags measured)"),
        ]
        axes[1].legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.suptitle(title or "score against gradient reach, one point per cell", fontsize=11)
        fig.text(0.5, -0.02, "reach: the first lag k where |dL_t/ds_(t-k)| < 1e-3 of its lag-0 value (median over "
                 "the cell's evaluations)", ha="center", fontsize=8, color="#555555")  # fmt: skip
        fig.tight_layout()
    return fig


def lineage_plot(
    lineage: pd.DataFrame,
    target: str,
    info: dict[str, dict[str, Any]] | None = None,
    title: str | None = None,
    max_levels: int = 16,
) -> Figure:
    """The ancestry of ``target`` as a layered graph: the seeds on top, ``target`` at the bottom, one
    arrow per (parent -> child) edge labelled with the operator. ``info`` (hash -> ``name``,
    ``score``, ``generation``) labels the boxes. Only the ``max_levels`` nearest levels are drawn."""
    import seaborn as sns

    info = info or {}
    level: dict[str, int] = {target: 0}
    for r in lineage.sort_values("depth").to_dict(orient="records"):
        level.setdefault(r["child"], int(r["depth"]) - 1)
        level[r["parent"]] = max(level.get(r["parent"], 0), int(r["depth"]))
    cut = max(level.values()) >= max_levels
    nodes = {h: lv for h, lv in level.items() if lv < max_levels}
    by_level: dict[int, list[str]] = {}
    for h, lv in sorted(nodes.items(), key=lambda kv: (kv[1], kv[0])):
        by_level.setdefault(lv, []).append(h)
    width = max(len(v) for v in by_level.values())
    depth = max(by_level) + 1
    palette = sns.color_palette("deep")
    with style():
        fig = Figure(figsize=(max(5.0, 2.6 * width), max(2.4, 1.35 * depth + 0.8)))
        ax = fig.subplots()
        ax.set_axis_off()
        pos: dict[str, tuple[float, float]] = {}
        for lv, hs in by_level.items():
            for k, h in enumerate(hs):
                pos[h] = ((k + 0.5) * width / len(hs), float(lv))
        for r in lineage.to_dict(orient="records"):
            if r["child"] not in pos or r["parent"] not in pos:
                continue
            (x0, y0), (x1, y1) = pos[r["parent"]], pos[r["child"]]
            ax.annotate(
                "", xy=(x1, y1 + 0.22), xytext=(x0, y0 - 0.22), arrowprops={"arrowstyle": "-|>", "color": "#555555", "lw": 1.2}
            )
            ax.text(
                (x0 + x1) / 2,
                (y0 + y1) / 2,
                str(r["operator"]),
                fontsize=7.5,
                ha="center",
                va="center",
                color="#333333",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.9},
            )
        for h, (x, y) in pos.items():
            meta = info.get(h, {})
            name = meta.get("name")
            label = str(name) if isinstance(name, str) and name else h[:8]
            extra = []
            if meta.get("generation") is not None and not (
                isinstance(meta["generation"], float) and math.isnan(meta["generation"])
            ):
                extra.append(f"gen {int(meta['generation'])}")
            if meta.get("score") is not None and not (isinstance(meta["score"], float) and math.isnan(meta["score"])):
                extra.append(f"score {float(meta['score']):.3f}")
            text = label + ("\n" + ", ".join(extra) if extra else "")
            colour = palette[3] if h == target else palette[2] if isinstance(name, str) and name else palette[0]
            ax.text(
                x,
                y,
                text,
                ha="center",
                va="center",
                fontsize=8.5,
                color="white" if h == target else "black",
                bbox={"boxstyle": "round,pad=0.35", "fc": colour, "ec": "black", "alpha": 0.95 if h == target else 0.35},
            )
        ax.set_xlim(-0.1, width + 0.1)
        ax.set_ylim(-0.6, depth - 0.4)  # the target at the bottom, its ancestors above
        handles = [
            Patch(facecolor=palette[3], edgecolor="black", label="the cell"),
            Patch(facecolor=palette[2], edgecolor="black", alpha=0.35, label="zoo cell (seed)"),
            Patch(facecolor=palette[0], edgecolor="black", alpha=0.35, label="evolved or random cell"),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        head = title or f"lineage of {target[:8]}"
        ax.set_title(
            head
            + (f" (the nearest {max_levels} levels)" if cut else "")
            + "\narrows: parent → child, labelled with the operator",
            fontsize=10,
        )
        fig.tight_layout()
    return fig
