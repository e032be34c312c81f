"""The command line: a thin layer over the library. Known errors become one line and exit code 2."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .. import zoo
from ..bench.kernels import CONFIGS
from ..errors import CellsearchError, ConfigError, DSLError
from ..ir.cell import Cell
from ..ir.params import param_specs, parameter_count

FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Output format."
)


def load_cell(ref: str) -> Cell:
    """A cell from a file path or a zoo name."""
    return zoo.load(ref)


def cell_summary(cell: Cell, input_size: int, hidden_size: int) -> dict[str, Any]:
    specs = param_specs(cell, input_size, hidden_size)
    return {
        "name": cell.name,
        "hash": cell.hash,
        "text": cell.text,
        "states": list(cell.states),
        "input": input_size,
        "hidden": hidden_size,
        "x_elementwise": cell.x_elementwise,
        "parameters": {s.name: list(s.shape) for s in specs},
        "parameter_count": parameter_count(cell, input_size, hidden_size),
    }


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cellsearch")
def cli() -> None:
    """cellsearch: search over recurrent cells written in a small DSL.

    \b
    Example:
      cellsearch cells
      cellsearch show lstm --input 10 --hidden 100
    """


@cli.command()
@FORMAT
@click.option(
    "--input",
    "input_size",
    type=click.IntRange(min=1),
    default=None,
    help="Input size for the parameter count [default: hidden].",
)
@click.option(
    "--hidden",
    "hidden_size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Hidden size for the parameter count.",
)
def cells(fmt: str, input_size: int | None, hidden_size: int) -> None:
    """List the built-in cell zoo.

    \b
    Example:
      cellsearch cells
      cellsearch cells --format json --hidden 100 --input 10
    """
    rows: list[dict[str, Any]] = []
    for name, cell in zoo.CELLS.items():
        I = input_size or hidden_size
        count = parameter_count(cell, I, hidden_size) if (I == hidden_size or not cell.x_elementwise) else None
        rows.append(
            {
                "name": name,
                "hash": cell.hash,
                "states": list(cell.states),
                "parameter_count": count,
                "x_elementwise": cell.x_elementwise,
                "description": zoo.DESCRIPTIONS[name],
            }
        )
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    click.echo(f"{'name':<{width}}  {'hash':<12}  {'states':<16}  {'params':>8}  description")
    for r in rows:
        shown = f"{r['parameter_count']:,}" if r["parameter_count"] is not None else "I must = H"
        desc = r["description"] if len(r["description"]) <= 70 else r["description"][:67] + "..."
        click.echo(f"{r['name']:<{width}}  {r['hash'][:12]}  {','.join(r['states']):<16}  {shown:>8}  {desc}")
    click.echo(
        f"\n{len(rows)} cells; parameter counts at input={input_size or hidden_size}, hidden={hidden_size}. "
        "Show one with `cellsearch show NAME`."
    )


@cli.command()
@click.argument("cell_ref", metavar="NAME_OR_FILE")
@click.option("--input", "input_size", type=click.IntRange(min=1), default=None, help="Input size I [default: hidden].")
@click.option("--hidden", "hidden_size", type=click.IntRange(min=1), default=64, show_default=True, help="Hidden size H.")
@FORMAT
def show(cell_ref: str, input_size: int | None, hidden_size: int, fmt: str) -> None:
    """Print a cell's canonical text, hash, parameters and parameter count.

    NAME_OR_FILE is a zoo name (see `cellsearch cells`) or a path to a .cell file.

    \b
    Example:
      cellsearch show lstm_peephole --input 10 --hidden 100
      cellsearch show my_cell.cell --format json
    """
    cell = load_cell(cell_ref)
    info = cell_summary(cell, input_size or hidden_size, hidden_size)
    if fmt == "json":
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"# {info['name']}  hash {info['hash']}")
    click.echo(info["text"], nl=False)
    click.echo(f"\n# parameters at input={info['input']}, hidden={info['hidden']}:")
    width = max([len(n) for n in info["parameters"]] + [4])
    for name, shape in info["parameters"].items():
        click.echo(f"#   {name:<{width}}  {' x '.join(str(d) for d in shape)}")
    click.echo(f"# parameter count: {info['parameter_count']:,}")


def _pairs(values: tuple[str, ...], what: str) -> dict[str, Any]:
    """``k=v`` strings to a dict; numbers and true/false converted."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} must be key=value (got '{item}')")
        value: Any = raw
        low = raw.lower()
        if low in ("true", "false"):
            value = low == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(raw)
                    break
                except ValueError:
                    continue
        out[key] = value
    return out


@cli.command("eval")
@click.argument("cell_ref", metavar="CELL")
@click.option("--task", "task_name", required=True, help="Task name (see the README for the list).")
@click.option("--task-opt", "task_opts", multiple=True, metavar="K=V", help="A task option, e.g. length=100 (repeatable).")
@click.option("--hp", "hps", multiple=True, metavar="K=V", help="A hyperparameter, e.g. lr=0.01 (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--backend",
    type=click.Choice(["cpu", "cuda", "reference"]),
    default=None,
    help="Where the cell trains [default: cpu]; the same as --hp backend=NAME.",
)
@FORMAT
def eval_cmd(
    cell_ref: str, task_name: str, task_opts: tuple[str, ...], hps: tuple[str, ...], seed: int, backend: str | None, fmt: str
) -> None:
    """Train CELL on a task and print validation/test metrics beside the task's baseline.

    Hyperparameters: lr hidden batch steps optimizer(adam|sgd) momentum clip input_noise init_scale
    gate_init(default|chrono) chrono_tmax forget_bias embed layers bidirectional eval_every eval_size
    patience time_budget backend(cpu|reference|cuda) dtype(float32|float64).

    \b
    Example:
      cellsearch eval lstm --task adding --task-opt length=100 --hp steps=3000 --hp lr=0.01
      cellsearch eval my.cell --task copy --task-opt length=50 --seed 1 --format json
      cellsearch eval gru --task adding --backend cuda --hp hidden=256 --hp batch=128
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..tasks import TASKS
    from ..train import evaluate, make_hp
    from ..train.loop import check_config

    cell = load_cell(cell_ref)
    if task_name not in TASKS:
        raise ConfigError(f"unknown task '{task_name}' (known: {', '.join(TASKS)})")
    pairs = _pairs(hps, "--hp")
    if backend is not None:
        if pairs.get("backend", backend) != backend:
            raise ConfigError(f"--backend {backend} and --hp backend={pairs['backend']} disagree")
        pairs["backend"] = backend
    hp = make_hp(**pairs)
    options = _pairs(task_opts, "--task-opt")
    check_config(cell, task_name, options, hp)  # bad input fails here, before any progress bar
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=_stderr_console(), transient=True) as bar:
        tid = bar.add_task(f"{cell.name} on {task_name}", total=hp.steps, loss="-")

        def tick(step: int, total: int, loss: float) -> None:
            if step % 10 == 0 or step == total:
                bar.update(tid, completed=step, loss=f"{loss:.4g}")

        result = evaluate(cell, task_name, options, hp, seed, progress=tick)
    if fmt == "json":
        click.echo(json.dumps({k: v for k, v in result.items() if k != "traceback"}, indent=2))
        return
    better = "higher" if result["higher_is_better"] else "lower"

    def show_num(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}"

    click.echo(f"{cell.name} on {task_name} {result['task_options']}: {result['status']}"
               + (f" ({result['reason']})" if result["reason"] else ""))  # fmt: skip
    click.echo(f"  {result['metric']} ({better} is better): valid {show_num(result['valid'])}, "
               f"test {show_num(result['test'])}, baseline {show_num(result['baseline'])}")  # fmt: skip
    click.echo(f"  loss: valid {show_num(result['valid_loss'])}, test {show_num(result['test_loss'])}, "
               f"baseline {show_num(result['baseline_loss'])}")  # fmt: skip
    click.echo(f"  {result['steps']} steps in {result['seconds']:.1f} s, seed {seed}")


@cli.group()
def bench() -> None:
    """Benchmarks, timed against PyTorch in the same process.

    \b
    Example:
      cellsearch bench kernels --cells lstm --configs 32,100,8,64
    """


@bench.command("kernels")
@click.option("--cells", default="lstm,gru", show_default=True, help="Comma-separated zoo cells.")
@click.option(
    "--configs",
    default=" ".join(",".join(map(str, c)) for c in CONFIGS),
    show_default=True,
    help="Space- or semicolon-separated batch,length,input,hidden configs.",
)
@click.option("--backend", type=click.Choice(["cpu"]), default="cpu", show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=7, show_default=True, help="Interleaved timing rounds.")
@FORMAT
def bench_kernels_cmd(cells: str, configs: str, backend: str, rounds: int, fmt: str) -> None:
    """Time one training step (forward + backward, all gradients) against torch.nn.LSTM/GRU.

    Medians of interleaved rounds, float32, 2 threads; GFLOP/s against this machine's float32
    matmul peak measured in the same run.

    \b
    Example:
      cellsearch bench kernels
      cellsearch bench kernels --cells gru --configs "16,1000,4,32" --format json
    """
    from rich.progress import Progress

    from ..bench.kernels import bench_kernels, machine, parse_config, rows_as_dicts, verdicts

    names = [c.strip() for c in cells.split(",") if c.strip()]
    for n in names:
        zoo.get(n)
    parsed = [parse_config(c) for c in configs.replace(";", " ").split()]
    with Progress(transient=True, console=_stderr_console()) as bar:
        task = bar.add_task("benchmark", total=len(names) * len(parsed))

        def tick(label: str) -> None:
            bar.update(task, advance=1 if bar.tasks[0].description != "benchmark" else 0, description=label)

        rows = bench_kernels(names, parsed, backend, rounds, progress=tick)
        bar.update(task, completed=len(names) * len(parsed))
    if fmt == "json":
        click.echo(json.dumps(rows_as_dicts(rows), indent=2))
        return
    click.echo(f"{'cell':<6} {'B,T,I,H':<16} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} {'GF/s':>7} {'% peak':>7}")
    for r in rows:
        torch_ms = f"{r.torch_median_ms:.2f}" if r.torch_median_ms is not None else "-"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        cfg = f"{r.batch},{r.length},{r.input},{r.hidden}"
        click.echo(
            f"{r.cell:<6} {cfg:<16} {r.median_ms:>9.2f} {torch_ms:>9} {ratio:>6} {r.gflops:>7.1f} {r.percent_of_peak:>6.1f}%"
        )
    info = machine()
    click.echo(
        f"\nratio = ours / torch (< 1: cellsearch faster); peak {rows[0].peak_gflops} GF/s float32 matmul; {info.get('cpu', '?')}"
    )
    lines = verdicts(rows)
    if lines:
        click.echo("targets (one run; the machine is shared, so compare ratios, not times):")
        for line in lines:
            click.echo(f"  {line}")


@bench.command("compile")
@click.option("--cell", default="lstm", show_default=True, help="A zoo cell.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="The kernel's threads.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random new cell.")
@FORMAT
def bench_compile_cmd(cell: str, threads: int, seed: int, fmt: str) -> None:
    """What compilation costs on the cpu backend, each in a fresh process: the first use on a machine
    (empty Numba cache), a later process (from the cache), and a cell never seen before.

    \b
    Example:
      cellsearch bench compile
      cellsearch bench compile --threads 2 --format json
    """
    from ..bench.compile import bench_compile

    zoo.get(cell)
    with _stderr_console().status("compiling in fresh processes (cold, then from the cache)"):
        rows = bench_compile(cell, threads, seed)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    labels = {"cold": "first use (empty cache)", "cache_hit": "later process (cache)", "rare_ops": "first rare op (once)",
              "new_cell": "a new cell"}  # fmt: skip
    for r in rows:
        start = f"  (of which {r['numba_start_seconds']:.2f} s Numba's start)" if r["numba_start_seconds"] else ""
        imp = f"  (+ {r['import_seconds']:.2f} s imports)" if r["import_seconds"] else ""
        click.echo(f"{labels[r['what']]:<26} {r['cell']:<13} {r['seconds']:7.3f} s{start}{imp}")
    click.echo(f"\ncompile(cell, 'cpu', threads={threads}) plus its first forward and backward (B,T,I,H = 4,5,8,16);"
               "\nNumba's start: its CPU target's, once per process, whatever it compiles or loads")  # fmt: skip


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def trials_progress() -> Any:
    """The progress display of a batch of evaluations (``reproduce``, ``claims``): a bar with done/total,
    the cached and failed counts (task fields ``cached``, ``failures``), elapsed and remaining time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("cached {task.fields[cached]} · failures {task.fields[failures]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_stderr_console(),
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; known errors print one line on stderr and exit with code 2."""
    try:
        cli.main(args=argv, prog_name="cellsearch", standalone_mode=False)
    except DSLError as err:
        click.echo(str(err), err=True)
        sys.exit(2)
    except CellsearchError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as err:
        msg = err.format_message()
        ctx = getattr(err, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        click.echo(f"error: {msg}{hint}", err=True)
        sys.exit(2)
