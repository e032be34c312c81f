"""``summary.md``, ``claims.json`` and the figures of a claims run (seaborn on Agg canvases)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from .analysis import ArmResult, Verdict, fmt, format_p
from .experiments import Claim

DPI = 100


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _metric_label(metric: str | None) -> str:
    from ..analysis.data import METRIC_UNITS

    return "test " + METRIC_UNITS.get(metric or "", metric or "result")


def plot_trained(items: Sequence[Claim], arms: dict[str, list[ArmResult]], path: Path) -> Path | None:
    """One panel per trained two- or three-arm claim: each seed's test result per arm (points), the
    arm's mean (bar), and the task's baselines (dashed)."""
    import pandas as pd
    import seaborn as sns

    panels = [c for c in items if c.kind == "train" and c.number != 6 and arms.get(str(c.number))]
    if not panels:
        return None
    fig = _figure(4.0 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, c in zip(axes, panels, strict=True):
        res = arms[str(c.number)]
        rows = [
            {"arm": f"{a.label}\n{a.task}" if len({r.task for r in res}) > 1 else a.label, "value": t}
            for a in res
            for s, t in zip(a.statuses, a.tests, strict=True)
            if t is not None and math.isfinite(t) and s not in ("failed", "diverged")
        ]
        df = pd.DataFrame(rows, columns=["arm", "value"])
        order = list(dict.fromkeys(f"{a.label}\n{a.task}" if len({r.task for r in res}) > 1 else a.label for a in res))
        if len(df):
            sns.barplot(data=df, x="arm", y="value", order=order, ax=ax, color="#c6dbef", errorbar=None)
            sns.stripplot(data=df, x="arm", y="value", order=order, ax=ax, color="#08519c", size=5, jitter=0.15)
        drawn = False
        for i, a in enumerate(res):  # each arm's baselines over its own bar: arms may be on different tasks
            for name, value in (("chance / mean predictor", a.baseline), *a.extra_baselines.items()):
                if value is not None and math.isfinite(value):
                    drawn = True
                    ax.hlines(value, i - 0.45, i + 0.45, colors="#e6550d" if "persist" in name else "#636363",
                              linestyles="--", lw=1.2, label=name)  # fmt: skip
        diverged = sum(a.diverged for a in res)
        title = f"claim {c.number}: {c.slug}" + (f"\n({diverged} diverged runs not shown)" if diverged else "")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel(_metric_label(res[0].metric))
        ax.tick_params(axis="x", labelsize=8)
        if drawn:
            handles, labels = ax.get_legend_handles_labels()
            uniq = dict(zip(labels, handles, strict=True))
            ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="best")
    fig.suptitle("Trained claims: each seed's test result (points) and the mean (bars)", fontsize=11)
    fig.savefig(path)
    return path


def plot_slim(arms: list[ArmResult], path: Path) -> Path | None:
    """Claim 6: each variant's mean test result against its parameter count, one panel per task."""
    import pandas as pd
    import seaborn as sns

    rows = [
        {"task": a.task, "cell": a.cell, "params": a.params, "value": a.mean, "metric": a.metric}
        for a in arms
        if a.params and math.isfinite(a.mean)
    ]
    if not rows:
        return None
    df = pd.DataFrame(rows)
    tasks = list(dict.fromkeys(df["task"]))
    fig = _figure(5.0 * len(tasks), 4.2)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        d = df[df["task"] == task]
        sns.scatterplot(data=d, x="params", y="value", hue="cell", style="cell", s=90, ax=ax, alpha=0.85)
        ax.set_xlabel("model parameters (cell, encoder and head)")
        ax.set_ylabel(f"mean {_metric_label(d['metric'].iloc[0])}")
        ax.set_title(f"claim 6 on {task}", fontsize=10)
        lo, hi = float(d["value"].min()), float(d["value"].max())
        if d["metric"].iloc[0] in ("mse", "nrmse") and lo > 0 and hi / lo > 10:
            ax.set_yscale("log")
        ax.legend(fontsize=7, title="cell", title_fontsize=8)
    fig.suptitle("Simplified gating: result against parameter count (mean over seeds)", fontsize=11)
    fig.savefig(path)
    return path


def plot_cost(measurement: dict[str, Any], path: Path) -> Path:
    """Claim 8: step time against parameter count, one labelled point per cell."""
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(measurement["rows"])
    fig = _figure(6.0, 4.2)
    ax = fig.subplots()
    sns.scatterplot(data=df, x="params", y="step_ms", hue="cell", s=80, ax=ax, legend=False)
    for _, r in df.iterrows():
        ax.annotate(r["cell"], (r["params"], r["step_ms"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    B, T, I, H = measurement["config"]
    ax.set_xlabel(f"cell parameters (input {I}, H {H})")
    ax.set_ylabel("one training step, fastest round (ms)")
    ax.set_title(f"claim 8: what the gates cost (cpu backend, B={B}, T={T})", fontsize=10)
    fig.savefig(path)
    return path


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(v: str) -> str:
        return v.replace("|", "\\|").replace("\n", " ")

    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cell(v) for v in r) + " |" for r in rows),
    ]


def _trials(c: Claim, m: dict[str, Any] | None) -> str:
    if c.kind == "train":
        return f"{c.seeds} seeds × {len(c.arms)} arms"
    if c.kind == "reach" and m:
        return f"{c.settings['seeds']} seed(s) per cell and initialisation"
    if c.kind == "cost":
        return f"fastest of {c.settings['rounds']} interleaved rounds"
    return "–"


def write(
    out: Path,
    items: Sequence[Claim],
    verdicts: Sequence[Verdict],
    arms: dict[str, list[ArmResult]],
    summary: dict[str, Any],
    run: dict[str, Any],
) -> dict[str, Any]:
    """Write ``summary.md``, ``claims.json`` and the PNGs into ``out``; what was written."""
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path | None] = {"trained": plot_trained(items, arms, out / "claims-trained.png")}
    if "6" in arms:
        figures["slim"] = plot_slim(arms["6"], out / "claims-slim.png")
    by_slug = {c.slug: c for c in items}
    if "vanishing-gradients" in summary and by_slug.get("vanishing-gradients"):
        from ..inspect.figures import plot_grad_flow

        figures["reach"] = plot_grad_flow(summary["vanishing-gradients"]["curves"], out / "claims-gradient-flow.png")
    if "gate-cost" in summary:
        figures["cost"] = plot_cost(summary["gate-cost"], out / "claims-cost.png")
    v_of = {v.number: v for v in verdicts}
    lines = [
        "# The review's claims, measured",
        "",
        f"Run `{run['name']}` (scale `{run['scale']}`, seed {run['seed']}) in `{run['db']}`; written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} by cellsearch {__version__}; {run['evaluations']} evaluations, "
        f"{run['hours']:.2f} CPU-hours of training.",
        "",
        f"Regenerate: `{run['command']}` (resumes from the database: stored evaluations are not trained again).",
        "",
        "Each claim of the LSTM review (`shared/seed/`) as one experiment. A comparison of two cells is Welch's "
        "t-test over seeds (p in the table); the verdict follows the rule written under each claim below. "
        "`inconclusive at this scale` means our budget cannot decide, not that the claim is false.",
        "",
    ]
    header = ["#", "claim", "experiment", "cells", "trials/seeds", "measured", "p", "verdict"]
    rows = []
    for c in items:
        v = v_of[c.number]
        rows.append(
            [
                str(c.number),
                c.quote,
                c.experiment,
                ", ".join(c.cells),
                _trials(c, summary.get(c.slug)),
                v.measured,
                format_p(v.p),
                f"**{v.verdict}**",
            ]
        )
    lines += _table(header, rows)
    lines += ["", "## Claim by claim", ""]
    for c in items:
        v = v_of[c.number]
        lines += [f"### {c.number}. {c.quote}", "", f"*Experiment:* {c.experiment}.", "", f"*Rule:* {c.rule}.", ""]
        if c.kind == "train":
            res = arms.get(str(c.number), [])
            lines += _table(
                ["arm", "task", "params", "test (mean ± sd)", "per seed", "diverged/failed", "baseline"],
                [
                    [
                        a.label,
                        a.task,
                        str(a.params or "–"),
                        f"{fmt(a.mean)} ± {fmt(a.sd, 2)}",
                        ", ".join(fmt(t) for t in a.tests),
                        f"{a.diverged}/{a.failed}",
                        ", ".join(
                            f"{k} {fmt(val)}"
                            for k, val in (("chance", a.baseline), *a.extra_baselines.items())
                            if val is not None
                        ),
                    ]
                    for a in res
                ],
            )
            lines.append("")
        lines += [
            f"*Measured:* {v.measured}",
            "",
            f"*Verdict:* **{v.verdict}**" + (f" (p {format_p(v.p)})" if v.p is not None else ""),
            "",
        ]
    lines += ["## Figures", ""]
    captions = {
        "trained": "Trained claims (1, 3, 4, 5, 7): each seed's test result and the arm's mean; dashed: the baselines.",
        "slim": "Claim 6: each SLIM variant's mean test result against its parameter count, beside LSTM.",
        "reach": "Claim 2: mean gradient norm |dL/ds_(t-k)| against the lag k at initialisation (log axis).",
        "cost": "Claim 8: the time of one training step (one thread, fastest round) against the cell's parameter count.",
    }
    for key, path in figures.items():
        if path is not None:
            lines += [f"![{key}]({path.name})", "", f"*{captions[key]}*", ""]
    (out / "summary.md").write_text("\n".join(lines), encoding="utf-8")
    data = {
        "run": run,
        "claims": [
            {
                "number": c.number,
                "slug": c.slug,
                "quote": c.quote,
                "experiment": c.experiment,
                "rule": c.rule,
                "cells": c.cells,
                "verdict": v_of[c.number].verdict,
                "measured": v_of[c.number].measured,
                "p": v_of[c.number].p,
                "arms": [a.as_dict() for a in arms.get(str(c.number), [])],
                "details": v_of[c.number].details,
            }
            for c in items
        ],
        "measurements": {k: {kk: vv for kk, vv in m.items() if kk != "curves"} for k, m in summary.items()},
    }
    (out / "claims.json").write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return {"summary": str(out / "summary.md"), "figures": [str(p) for p in figures.values() if p is not None]}
