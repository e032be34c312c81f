"""``cellsearch inspect``: gradient flow, Jacobian spectrum, gate statistics and state traces of cells."""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import ConfigError
from .main import _pairs, _stderr_console, cli, load_cell

#: lags shown in the text table (those within max_lag)
SHOWN_LAGS = (1, 10, 50, 100, 200)


@cli.command("inspect")
@click.argument("cell_refs", metavar="CELL...", nargs=-1, required=True)
@click.option("--task", "task_name", default="delayed_recall", show_default=True, help="Task whose data the cells run on.")
@click.option("--task-opt", "task_opts", multiple=True, metavar="K=V", help="A task option, e.g. lag=200 (repeatable).")
@click.option("--hp", "hps", multiple=True, metavar="K=V", help="A hyperparameter, e.g. forget_bias=1 (repeatable).")
@click.option("--trained", is_flag=True, help="Also train each cell (as `cellsearch eval` does) and diagnose it after training.")
@click.option("--max-lag", type=click.IntRange(min=0), default=None, help="Longest lag measured [default: T-1, at most 200].")
@click.option("--seed", type=int, default=0, show_default=True, help="Initialisation, data and training seed.")
@click.option("--out", "out_dir", default="inspect", show_default=True, help="Directory the PNG figures are written to.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format.")
def inspect_cmd(
    cell_refs: tuple[str, ...],
    task_name: str,
    task_opts: tuple[str, ...],
    hps: tuple[str, ...],
    trained: bool,
    max_lag: int | None,
    seed: int,
    out_dir: str,
    fmt: str,
) -> None:
    """Look inside cells: gradient flow across time lags, the step Jacobian's spectrum, gate
    saturation and state traces, on a batch (--hp batch=N) of a task's data.

    Prints the numbers behind the figures and writes them (seaborn PNGs) to --out: grad_flow.png
    (gradient norm against lag, one line per cell), gates.png (gate saturation bars) and
    states_<cell>.png (a state heatmap). The loss at step t is a fixed random projection of the
    states (README: "Looking inside a cell"). Without --trained the cells are diagnosed as
    `cellsearch eval` would start them (same seed and --hp, e.g. forget_bias=1 or gate_init=chrono);
    with it, before and after that training.

    \b
    Example:
      cellsearch inspect lstm rnn gru --task delayed_recall --task-opt lag=200 --hp forget_bias=1
      cellsearch inspect lstm_fb1 --task adding --task-opt length=200 --trained --hp steps=500 --format json
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..inspect.diagnostics import check_config, diagnose
    from ..inspect.figures import render_all
    from ..tasks import TASKS
    from ..train import evaluate, make_hp

    cells = [load_cell(ref) for ref in cell_refs]
    if task_name not in TASKS:
        raise ConfigError(f"unknown task '{task_name}' (known: {', '.join(TASKS)})")
    hp = make_hp(**_pairs(hps, "--hp"))
    options = _pairs(task_opts, "--task-opt")
    for cell in cells:  # bad input fails here, before any work
        check_config(cell, task_name, options, hp)
        if trained:
            from ..train.loop import check_config as check_train

            check_train(cell, task_name, options, hp)

    diags: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns, console=_stderr_console(), transient=True) as bar:
        for cell in cells:
            tid = bar.add_task(f"{cell.name}: diagnosing", total=hp.steps if trained else 1)
            d = diagnose(cell, task_name, options, hp, seed=seed, max_lag=max_lag)
            if trained:
                bar.update(tid, description=f"{cell.name}: training")

                def tick(step: int, total: int, loss: float, tid: Any = tid) -> None:
                    if step % 10 == 0 or step == total:
                        bar.update(tid, completed=step)

                result = evaluate(cell, task_name, options, hp, seed, progress=tick, return_params=True)
                summary = {k: result[k] for k in ("status", "reason", "metric", "valid", "test", "baseline", "steps", "seconds")}
                summary["best_step"] = _best_step(result)
                if "params" not in result:
                    raise ConfigError(f"training {cell.name} failed: {result['reason']}")
                bar.update(tid, description=f"{cell.name}: diagnosing the trained cell")
                initial = d
                d = diagnose(cell, task_name, options, hp, params=result["params"], seed=seed, max_lag=max_lag)
                d["initial"] = initial
                d["training"] = summary
            bar.update(tid, completed=hp.steps if trained else 1)
            diags.append(d)
        figures = render_all(diags, out_dir)

    printed = [_printable(d) for d in diags]
    if fmt == "json":
        for d, mine in zip(printed, figures["cells"], strict=True):
            d["figures"] = figures["shared"] + mine
        click.echo(json.dumps(printed, indent=2))
        return
    _table(printed)
    click.echo("\nfigures: " + " ".join(figures["shared"] + [p for mine in figures["cells"] for p in mine]))


def _printable(d: dict[str, Any]) -> dict[str, Any]:
    """The diagnosis without the per-unit traces (those are the heatmaps), the initial one nested."""
    out = {k: v for k, v in d.items() if k not in ("trajectory", "initial")}
    if "initial" in d:
        out["initial"] = _printable(d["initial"])
    return out


def _best_step(result: dict[str, Any]) -> int | None:
    """The step of the validation whose parameters evaluate kept (the first best one)."""
    key, higher = f"valid_{result['metric']}", result["higher_is_better"]
    best: tuple[int, float] | None = None
    for h in result["history"]:
        v = h.get(key)
        if v is not None and (best is None or (v > best[1] if higher else v < best[1])):
            best = (h["step"], v)
    return None if best is None else best[0]


def _num(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def _table(diags: list[dict[str, Any]]) -> None:
    d0 = diags[0]
    opts = ", ".join(f"{k}={v}" for k, v in d0["task_options"].items())
    click.echo(f"on {d0['task']} ({opts}), H={d0['hp']['hidden']}, {d0['hp']['batch']} sequences of {d0['steps']} steps, "
               f"seed {d0['seed']}; loss at step t: a random projection of the states")  # fmt: skip
    runs = []
    for d in diags:
        if "initial" in d:
            runs.append(("init", d["initial"]))
            runs.append(("trained", d))
        else:
            runs.append(("init", d))
    lags = [k for k in SHOWN_LAGS if k <= d0["max_lag"]]
    width = max([len(d["cell"]) for d in diags] + [4])
    head = f"{'cell':<{width}}  {'when':<7}  {'reach':>5}  {'decay/step':>10}  " + "  ".join(f"{'k=' + str(k):>8}" for k in lags)
    click.echo("\ngradient flow: mean |dL_t/ds_(t-k)| (1 at k=0); reach: first lag below 1e-3; decay: fitted nepers per step")
    click.echo(head + f"  {'rho(J)':>7}  {'smax(J)':>7}")
    for when, d in runs:
        r = str(d["reach"]) if d["reached"] else f">{d['max_lag']}"
        cols = "  ".join(f"{_num(d['grad_norm_by_lag'][k], '.2e'):>8}" for k in lags)
        click.echo(f"{d['cell']:<{width}}  {when:<7}  {r:>5}  {_num(d['decay_rate'], '.4f'):>10}  {cols}  "
                   f"{_num(d['spectral_radius']):>7}  {_num(d['singular_max']):>7}")  # fmt: skip
    click.echo("per state (reach, decay/step):")
    for when, d in runs:
        per = ", ".join(f"{s} {v['reach'] if v['reached'] else '>' + str(d['max_lag'])} {_num(v['decay_rate'], '.4f')}"
                        for s, v in d["per_state"].items())  # fmt: skip
        click.echo(f"  {d['cell']:<{width}}  {when:<7}  {per}")
    click.echo("\ngates (mean / fraction < 0.05 / fraction > 0.95) and states (min .. max):")
    for when, d in runs:
        gates = "  ".join(f"{g} " + "/".join(_num(s[k], ".2f") for k in ("mean", "low", "high")) for g, s in d["gates"].items())
        states = "  ".join(f"{s} {_num(v['min'])} .. {_num(v['max'])}" for s, v in d["states"].items())
        click.echo(f"  {d['cell']:<{width}}  {when:<7}  {gates or 'no sigmoid gates'}  |  {states}")
    for d in diags:
        t = d.get("training")
        if t:
            scores = f"valid {_num(t['valid'], '.4g')}, test {_num(t['test'], '.4g')} (baseline {_num(t['baseline'], '.4g')})"
            kept = f", parameters of step {t['best_step']} (best validation)" if t["best_step"] is not None else ""
            click.echo(
                f"  {d['cell']} training: {t['status']}, {t['metric']} {scores}, {t['steps']} steps in {t['seconds']:.1f} s{kept}"
            )
