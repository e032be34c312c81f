"""The figures of ``cellsearch inspect``, drawn with seaborn on Agg canvases (no pyplot state, no
display): gradient norm against lag, gate saturation, and one state heatmap per cell.

Each function takes diagnosis dicts from :func:`~cellsearch.inspect.diagnostics.diagnose` (with an
``"initial"`` entry holding the diagnosis at initialisation when the main one is after training)
and writes one PNG.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .diagnostics import HIGH, LOW, REACH

DPI = 100


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _options(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d["task_options"].items())


def _reach_text(d: dict[str, Any]) -> str:
    return f"reach {d['reach']}" if d["reached"] else f"reach > {d['max_lag']}"


def plot_grad_flow(diags: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Mean gradient norm against lag on a log axis, one line per cell (dashed: at initialisation,
    when the cell was also trained), with the reach threshold."""
    import pandas as pd
    import seaborn as sns

    both = any("initial" in d for d in diags)
    rows = []
    for d in diags:
        runs = [(d, "trained" if d["trained"] else "initial")]
        if "initial" in d:
            runs.append((d["initial"], "initial"))
        for run, when in runs:
            label = f"{d['cell']}, {'trained' if when == 'trained' else 'at init'}" if both else d["cell"]
            for k, v in enumerate(run["grad_norm_by_lag"]):
                if v is not None and v > 0:
                    rows.append({"cell": f"{label} ({_reach_text(run)})", "name": d["cell"], "when": when, "lag": k, "norm": v})
    df = pd.DataFrame(rows)
    fig = _figure(7.5, 4.6)
    ax = fig.subplots()
    palette = dict(zip([d["cell"] for d in diags], sns.color_palette("tab10", len(diags)), strict=False))
    for label, part in df.groupby("cell", sort=False):
        trained = part["when"].iloc[0] == "trained"
        ax.plot(part["lag"], part["norm"], label=label, color=palette[part["name"].iloc[0]], lw=2.0 if trained else 1.6,
                ls="-" if trained or not both else "--")  # fmt: skip
    ax.set_yscale("log")
    ax.axhline(REACH, color="0.4", ls=":", lw=1.2, label=f"reach threshold ({REACH:g} of lag 0)")
    ax.set_xlabel("lag k (steps between the state and the loss)")
    ax.set_ylabel("mean ‖∂L$_t$/∂s$_{t-k}$‖ (1 at lag 0)")
    ax.set_xlim(0, max(d["max_lag"] for d in diags))
    ax.grid(True, which="major", alpha=0.3)
    d0 = diags[0]
    when = " — dashed: at initialisation" if both else ""
    ax.set_title(f"Gradient flow on {d0['task']} ({_options(d0)}), H={d0['hp']['hidden']}{when}", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    out = Path(path)
    fig.savefig(out)
    return out


def plot_gates(diags: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Per cell (columns) and, when trained, before and after (rows): each sigmoid gate's mean
    activation and its fractions saturated shut (< 0.05) and open (> 0.95)."""
    import pandas as pd
    import seaborn as sns

    stats = {"mean": "mean activation", "low": f"fraction < {LOW:g} (shut)", "high": f"fraction > {HIGH:g} (open)"}
    trained = any("initial" in d for d in diags)
    rows_of = [("initial", lambda d: d.get("initial", d)), ("trained", lambda d: d)] if trained else [("", lambda d: d)]
    fig = _figure(max(3.2 * len(diags), 5.0), 3.2 * len(rows_of) + 0.6)
    axes = np.atleast_2d(np.asarray(fig.subplots(len(rows_of), len(diags), squeeze=False, sharey=True)))
    colours = dict(zip(stats.values(), sns.color_palette("colorblind", 3), strict=True))
    for i, (when, pick) in enumerate(rows_of):
        for j, d in enumerate(diags):
            ax = axes[i, j]
            run = pick(d)
            rows = [{"gate": g, "statistic": stats[k], "value": v} for g, s in run["gates"].items() for k, v in s.items()]
            title = d["cell"] + (f", {when}" if when else "")
            if rows:
                sns.barplot(data=pd.DataFrame(rows), x="gate", y="value", hue="statistic", palette=colours, ax=ax,
                            legend=(i == 0 and j == 0))  # fmt: skip
            else:
                ax.text(0.5, 0.5, "no sigmoid gates", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
            ax.set_ylim(0, 1)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("gate (sigmoid node)")
            ax.set_ylabel("activation / fraction of activations" if j == 0 else "")
    first = axes[0, 0]
    if first.get_legend() is not None:
        handles, labels = first.get_legend_handles_labels()
        first.get_legend().remove()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
    d0 = diags[0]
    fig.suptitle(f"Gate statistics on {d0['task']} ({_options(d0)}): every step, sequence and unit", fontsize=10)
    out = Path(path)
    fig.savefig(out)
    return out


def plot_states(d: dict[str, Any], path: str | Path) -> Path:
    """Each state's per-unit trace over the first sequence of the batch: units x time (as in
    Karpathy et al. 2015)."""
    import seaborn as sns

    traj = d["trajectory"]
    states = list(traj)
    fig = _figure(8.0, 0.6 + 2.6 * len(states))
    axes = np.atleast_1d(np.asarray(fig.subplots(len(states), 1, squeeze=False))).ravel()
    for ax, s in zip(axes, states, strict=True):
        v = np.asarray(traj[s], dtype=float).T  # [H, T]
        lim = float(np.nanmax(np.abs(v))) or 1.0
        H, T = v.shape
        with warnings.catch_warnings():  # seaborn's own use of a deprecated colormap call
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(v, ax=ax, cmap="RdBu_r", center=0.0, vmin=-lim, vmax=lim, rasterized=True,
                        xticklabels=max(T // 10, 1), yticklabels=max(H // 8, 1), cbar_kws={"label": f"{s} (value)"})  # fmt: skip
        ax.set_xlabel("time step")
        ax.set_ylabel("unit")
        ax.tick_params(axis="x", labelrotation=0)
        ax.tick_params(axis="y", labelrotation=0)
        ax.set_title(f"state {s}: range {d['states'][s]['min']:.3g} .. {d['states'][s]['max']:.3g}", fontsize=10)
    when = "after training" if d["trained"] else "at initialisation"
    fig.suptitle(f"{d['cell']} on {d['task']} ({_options(d)}), {when}: one sequence", fontsize=10)
    out = Path(path)
    fig.savefig(out)
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "cell"


def render_all(diags: Sequence[dict[str, Any]], out_dir: str | Path) -> dict[str, Any]:
    """Every figure for ``diags`` into ``out_dir`` (created): ``grad_flow.png`` and ``gates.png`` for
    all of them, ``states_<cell>.png`` for each (``states_<cell>_init.png`` too when trained).
    Returns ``{"shared": [paths], "cells": [[paths of diags[0]], ...]}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shared = [str(plot_grad_flow(diags, out / "grad_flow.png")), str(plot_gates(diags, out / "gates.png"))]
    cells: list[list[str]] = []
    seen: set[str] = set()
    for d in diags:
        slug, j = _slug(d["cell"]), 2
        while slug in seen:
            slug, j = f"{_slug(d['cell'])}_{j}", j + 1
        seen.add(slug)
        mine = []
        if "trajectory" in d:
            mine.append(str(plot_states(d, out / f"states_{slug}.png")))
        if "trajectory" in d.get("initial", {}):
            mine.append(str(plot_states(d["initial"], out / f"states_{slug}_init.png")))
        cells.append(mine)
    return {"shared": shared, "cells": cells}
