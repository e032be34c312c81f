"""``cellsearch run`` and ``cellsearch query``: the search and its results database."""

from __future__ import annotations

import json
import math
import sys
import time
import uuid
from typing import Any

import click

from ..errors import ConfigError
from ..search.executor import GRACE, HEARTBEAT, MAX_ATTEMPTS
from .main import _stderr_console, cli

DB = click.option(
    "--db", default="cellsearch.db", show_default=True, help="Database URL (SQLAlchemy), or a path to an SQLite file."
)
QFORMAT = click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True, help="Output format."
)


# ---- printing DataFrames ----------------------------------------------------------------------


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item") and not isinstance(v, (dict, list, str)):  # numpy scalars
        return _plain(v.item())
    return v


def _records(df: Any) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def _cell_text(v: Any) -> str:
    v = _plain(v)
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str) and len(v) >= 32 and all(c in "0123456789abcdef" for c in v):
        return v[:12]  # hashes: the short form is enough to paste back
    return str(v)


def emit_frame(df: Any, fmt: str, columns: list[str] | None = None, title: str | None = None) -> None:
    """A DataFrame as a rich table (``columns`` only), CSV or a JSON list of row objects (all columns)."""
    if fmt == "json":
        click.echo(json.dumps(_records(df), indent=2, default=str))
        return
    if fmt == "csv":
        out = df.copy()
        for c in out.columns:
            if out[c].map(lambda v: isinstance(v, (dict, list))).any():
                out[c] = out[c].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
        click.echo(out.to_csv(index=False), nl=False)
        return
    from rich.console import Console
    from rich.table import Table

    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    table = Table(title=title, show_lines=False)
    for c in cols:
        table.add_column(c, overflow="fold")
    for row in _records(df):
        table.add_row(*(_cell_text(row.get(c)) for c in cols))
    console = Console()
    if not console.is_terminal:  # piped or captured: don't squeeze the table to 80 columns
        console = Console(width=max(console.width, 200))
    console.print(table)
    if not len(df):
        click.echo("(no rows)")


# ---- run ----------------------------------------------------------------------------------------


class _Display:
    """The live progress line: generation, evaluations done/queued, best score so far, failures."""

    def __init__(self, generations: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "queued {task.fields[queued]} · cached {task.fields[cached]} · best {task.fields[best]} "
                "· failures {task.fields[failures]}"
            ),
            TimeElapsedColumn(),
            console=_stderr_console(),
        )
        self.generations = generations
        self.best = "-"
        self.failures = 0
        self.tid = self.progress.add_task("gen 0", total=None, queued=0, cached=0, best="-", failures=0)

    def __call__(self, event: Any) -> None:
        g = event.generation
        if event.kind == "generation":
            self.progress.update(self.tid, description=f"gen {g}/{self.generations}", completed=0, total=None)
        elif event.kind == "queued":
            d = event.data
            self.progress.update(self.tid, total=d["pending"], completed=0, queued=d["pending"], cached=d["cached"])
        elif event.kind == "result":
            if event.data["result"]["status"] in ("failed", "diverged"):
                self.failures += 1
            task = self.progress.tasks[0]
            self.progress.update(
                self.tid, advance=1, queued=max(0, (task.total or 0) - task.completed - 1), failures=self.failures
            )
        elif event.kind == "confirm":
            self.progress.update(self.tid, description=f"confirm {event.data['cells']} cells", completed=0, total=None)
        elif event.kind == "generation_done":
            self.best = f"{event.data['record']['max']:.3f}"
            self.progress.update(self.tid, best=self.best)


@cli.command("run")
@click.argument("config_path", required=False, metavar="[CONFIG]")
@DB
@click.option("--name", default=None, help="Name of the new run [default: the config's, else run-DATE-TIME].")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Worker processes [default: cores; 0: this process].")
@click.option(
    "--dask",
    default=None,
    metavar="ADDRESS",
    help="Evaluate on a Dask cluster: a scheduler (tcp://host:8786) or local:N (a LocalCluster of N worker processes).",
)
@click.option("--generations", type=click.IntRange(min=0), default=None, help="Generations after the seed population.")
@click.option("--population", type=click.IntRange(min=2), default=None, help="Population size.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed of the search's RNG.")
@click.option("--resume", default=None, metavar="NAME", help="Go on with an interrupted (or finished) run.")
@click.option(
    "--backend",
    type=click.Choice(["cpu", "cuda", "reference"]),
    default=None,
    help="Where cells train [default: the config's hp, else cpu].",
)
@click.option(
    "--heartbeat",
    type=click.FloatRange(min=0.05),
    default=HEARTBEAT,
    show_default=True,
    help="Seconds between the heartbeats of each running evaluation (and of the driver).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0.1),
    default=GRACE,
    show_default=True,
    help="Seconds without a heartbeat after which an evaluation is lost and queued again (and a driver presumed dead).",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=MAX_ATTEMPTS,
    show_default=True,
    help="Starts of one evaluation before it is recorded as failed.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def run_cmd(
    config_path: str | None,
    db: str,
    name: str | None,
    workers: int | None,
    dask: str | None,
    generations: int | None,
    population: int | None,
    seed: int | None,
    resume: str | None,
    backend: str | None,
    heartbeat: float,
    grace: float,
    max_attempts: int,
    fmt: str,
) -> None:
    """Evolve cells: train each on the run's tasks, keep the best, store everything in --db.

    With no arguments it runs the default search (runs/default.toml: copy + adding, a few minutes on
    2 cores) into ./cellsearch.db and prints the leaderboard against LSTM and GRU. One process
    drives a run at a time: a second `--resume` of a run whose driver is alive is refused.

    \b
    Example:
      cellsearch run
      cellsearch run runs/default.toml --db results.db --name trial1 --generations 10
      cellsearch run --db results.db --resume trial1
      cellsearch run --dask local:2 --db postgresql://me:secret@dbhost/cellsearch
    """
    from ..search.config import RunConfig, load_config, stored_config
    from ..search.evaluation import worker_id
    from ..search.executor import make_executor
    from ..search.loop import Search
    from ..store import Store
    from ..store.store import RunLease

    if dask is not None:
        from ..search.distributed import check_shared_store

        if workers is not None:
            raise ConfigError("give --workers (local processes) or --dask (a Dask cluster), not both")
        check_shared_store(dask, db)
    owner = f"{worker_id()}:{uuid.uuid4().hex[:8]}"
    if resume is not None:
        if config_path or name or population is not None or seed is not None or backend is not None:
            raise ConfigError(
                "--resume goes on with the run's stored config: "
                "only --workers, --dask, --generations and the liveness options may be given"
            )
        store = Store(db, create=False)
        row = store.run_by_name(resume)
        store.acquire_run(row.id, owner, grace)
        config = stored_config(row.config).replace(workers=workers, generations=generations)
        if config.as_dict() != row.config:
            store.update_run(row.id, config=config.as_dict())
        run_id, run_name = row.id, row.name
    else:
        config = load_config(config_path) if config_path else RunConfig()
        config = config.replace(workers=workers, generations=generations, population=population, seed=seed, name=name)
        if backend is not None:
            config = config.replace(hp={**config.hp, "backend": backend})
        if config.hp.get("backend") == "cuda":  # no GPU: one line now, not a failed evaluation per cell
            from ..backends.cuda import load

            load()
        run_name = config.name or time.strftime("run-%Y%m%d-%H%M%S")
        config = config.replace(name=run_name)
        store = Store(db, create=True)  # everything is checked: now the database may be written
        run_id = store.create_run(run_name, config.as_dict(), config.seed, driver=owner)
    lease = RunLease(store, run_id, owner, heartbeat)
    try:
        executor = make_executor(config.workers, dask, store, heartbeat=heartbeat, grace=grace, max_attempts=max_attempts)
    except BaseException as err:
        lease.release()
        store.update_run(run_id, status="failed", message=f"{type(err).__name__}: {err}"[:500])
        raise
    display = _Display(config.generations)

    def on_event(event: Any) -> None:
        if lease.lost:
            raise ConfigError(f"run '{run_name}' was taken over by another driver (this one missed its heartbeats)")
        display(event)

    search = Search(store, run_id, config, executor, on_event)
    t0 = time.perf_counter()
    try:
        with display.progress:
            search.run(config.generations)
    except KeyboardInterrupt:
        executor.close()
        n = store.count_evaluations(run_id)
        click.echo(f"interrupted: run '{run_name}' keeps its {n} committed evaluations; "
                   f"go on with `cellsearch run --db {db} --resume {run_name}`", err=True)  # fmt: skip
        sys.exit(130)
    finally:
        executor.close()
        lease.release()
    _run_summary(store, run_name, search, time.perf_counter() - t0, db, fmt)


@cli.command("worker", context_settings={"ignore_unknown_options": True})
@click.option(
    "--scheduler-file", default=None, help="Read the scheduler's address from this file (dask scheduler --scheduler-file)."
)
@click.option("--nworkers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes (one thread each).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[SCHEDULER] [DASK WORKER OPTIONS]...")
def worker_cmd(scheduler_file: str | None, nworkers: int, args: tuple[str, ...]) -> None:
    """Serve evaluations to a Dask scheduler: `dask worker` with one thread per worker process and
    BLAS/Numba pinned to one thread. Start it on each machine; drive the search from anywhere with
    `cellsearch run --dask tcp://SCHEDULER:8786 --db postgresql://...`. The scheduler's address comes
    first (or comes from DASK_SCHEDULER_ADDRESS); options it does not know go to `dask worker` (e.g.
    --memory-limit 4GB).

    \b
    Example:
      dask scheduler --port 8786 &
      cellsearch worker tcp://scheduler-host:8786 --nworkers 8
    """
    import os

    scheduler = args[0] if args and not args[0].startswith("-") else None
    dask_args = args[1:] if scheduler is not None else args
    from_env = scheduler is None and scheduler_file is None and bool(os.environ.get("DASK_SCHEDULER_ADDRESS"))
    if not from_env and (scheduler is None) == (scheduler_file is None):
        raise ConfigError(
            "give the scheduler's address (tcp://host:8786) or --scheduler-file, one of them "
            "(or set DASK_SCHEDULER_ADDRESS, as the Dask Kubernetes operator does)"
        )
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ConfigError("cellsearch worker needs Dask's distributed package: pip install dask distributed") from None
    from ..search.distributed import setup_worker_environment

    setup_worker_environment()
    target = [scheduler] if scheduler is not None else ["--scheduler-file", str(scheduler_file)] if scheduler_file else []
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", *target, "--nthreads", "1", "--nworkers", str(nworkers),
            "--preload", "cellsearch.search.distributed", *dask_args]  # fmt: skip
    sys.stdout.flush()
    os.execv(sys.executable, argv)


def _run_summary(store: Any, run_name: str, search: Any, seconds: float, db: str, fmt: str) -> None:
    from ..store import runs_frame, top_frame

    top = top_frame(store, run=run_name, limit=10)
    run_row = runs_frame(store).set_index("run").loc[run_name]
    evolved = _records(top[top["name"].isna()]) if len(top) else []
    by_search = evolved[0] if evolved else None
    confirmed = [r for r in evolved if r.get("confirmed") is not None]
    # the run's answer: the evolved cell that held up best on held-out training seeds, where it was confirmed
    best = max(confirmed, key=lambda r: r["confirmed"]) if confirmed else by_search
    refs = {r["name"]: r for r in _records(top[top["reference"]])} if len(top) else {}
    summary = {
        "run": run_name,
        "db": db,
        "status": store.run_by_name(run_name).status,
        "generations": int(run_row["generations"]),
        "evaluations": int(run_row["evaluations"]),
        "trained_now": search.trained,
        "reused": search.reused,
        "rediagnosed": search.rediagnosed,
        "failures": int(run_row["failures"]),
        "seconds": round(seconds, 1),
        "evals_per_hour": _plain(run_row["evals_per_hour"]),
        "compile_share": _plain(run_row["compile_share"]),
        "best_evolved": best,
        "best_by_search_score": by_search,
        "lstm": refs.get("lstm"),
        "gru": refs.get("gru"),
        "leaderboard": _records(top),
    }
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    task_cols = [c for c in top.columns if c.endswith("_relative") or c.split("_")[0] in search.config.tasks]
    emit_frame(
        top,
        "table",
        ["rank", "hash", "name", "score", "confirmed", *task_cols, "params", "generation"],
        title=f"run {run_name}: leaderboard",
    )
    click.echo(
        f"{summary['evaluations']} evaluations ({search.trained} trained now, {search.reused} found in the store, "
        f"{summary['failures']} failed or diverged) in {seconds:.0f} s; "
        f"{summary['evals_per_hour'] or '-'} evaluations/hour; "
        f"compiling {100 * (summary['compile_share'] or 0):.1f}% of worker time"
    )

    def confirmed_text(rec: dict[str, Any]) -> str:
        c = rec.get("confirmed")
        return "" if c is None else f", {c:.3f} on held-out training seeds"

    for label, rec in (("LSTM", summary["lstm"]), ("GRU", summary["gru"])):
        if rec:
            click.echo(f"{label:5s} score {rec['score']:.3f}{confirmed_text(rec)}")
    if best and by_search and best["hash"] != by_search["hash"]:
        click.echo(
            f"highest search score: {by_search['hash'][:12]} ({by_search['score']:.3f}{confirmed_text(by_search)}): "
            "it did not hold up as well on held-out seeds"
        )
    if best:
        click.echo(
            f"best evolved cell {best['hash'][:12]} (generation {best['generation']}): "
            f"score {best['score']:.3f}{confirmed_text(best)}"
        )
        click.echo("  " + best["text"].strip().replace("\n", "\n  "))
    else:
        click.echo("no evolved cell made it into the population")


# ---- query --------------------------------------------------------------------------------------


@cli.group()
def query() -> None:
    """Read a results database: runs, leaderboards, diagnostics, evaluations, one cell, lineage.

    \b
    Example:
      cellsearch query runs
      cellsearch query top --db results.db --task adding --format csv
      cellsearch query diagnostics --db results.db --sort reach
      cellsearch query show 3fa2b1c9 --db results.db
    """


@query.command("runs")
@DB
@QFORMAT
def query_runs(db: str, fmt: str) -> None:
    """Every run: status, progress, evaluations, failures, best score, throughput.

    \b
    Example:
      cellsearch query runs --db results.db --format json
    """
    from ..store import runs_frame

    cols = ["run", "status", "generations", "of", "tasks", "evaluations", "failures", "timeouts", "best_score",
            "best_hash", "evals_per_hour", "compile_share", "created"]  # fmt: skip
    emit_frame(runs_frame(db), fmt, cols)


@query.command("top")
@DB
@click.option("--run", default=None, help="Run name [default: the latest run].")
@click.option("--task", default=None, help="Rank by this task's result relative to the GRU.")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True)
@QFORMAT
def query_top(db: str, run: str | None, task: str | None, limit: int, fmt: str) -> None:
    """The best cells of a run by score (min over tasks of result / GRU's), LSTM and GRU included.

    \b
    Example:
      cellsearch query top --db results.db --run trial1 --task adding --limit 5
    """
    from ..store import top_frame

    df = top_frame(db, run=run, task=task, limit=limit)
    cols = [
        "rank",
        "hash",
        "name",
        "score",
        "confirmed",
        *[c for c in df.columns if c.endswith("_relative")],
        "params",
        "generation",
    ]
    emit_frame(df, fmt, cols)


@query.command("diagnostics")
@DB
@click.option("--run", default=None, help="Run name [default: the latest run].")
@click.option("--task", default=None, help="Only this task's evaluations.")
@click.option(
    "--sort",
    type=click.Choice(["reach", "reach_init", "score", "spectral_radius", "spectral_radius_init", "singular_max",
                       "singular_max_init", "decay_rate", "decay_rate_init", "saturation", "saturation_init"]),
    default="reach",
    show_default=True,
    help="Sort by this column, largest first (*_init: at initialisation; the others after training).",
)  # fmt: skip
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show this many cells (LSTM and GRU always).")
@QFORMAT
def query_diagnostics(db: str, run: str | None, task: str | None, sort: str, limit: int | None, fmt: str) -> None:
    """A run's cells by gradient reach: score beside the diagnostics stored with their evaluations.

    Needs a run with `diagnose = true` in its config (cells without diagnostics are listed last,
    with empty columns). Per cell, the median over its evaluations (tasks and training seeds) of:
    reach (the first lag where the gradient falls below 1e-3 of its lag-0 value; max_lag + 1 when it
    never does, counted in 'unreached'), spectral_radius and singular_max of the step Jacobian,
    decay_rate (nepers per step) and saturation (share of gate activations below 0.05 or above
    0.95), after training and at initialisation (*_init). rank is the position in --sort's order.

    \b
    Example:
      cellsearch query diagnostics --db results.db --run trial1
      cellsearch query diagnostics --db results.db --sort reach_init --task adding --format json
    """
    from ..store import diagnostics_frame

    df = diagnostics_frame(db, run=run, task=task, sort=sort, limit=limit)
    cols = ["rank", "hash", "name", "score", "reach", "reach_init", "unreached", "spectral_radius", "spectral_radius_init",
            "singular_max", "saturation", "diagnosed", "generation"]  # fmt: skip
    emit_frame(df, fmt, cols)


@query.command("evaluations")
@DB
@click.option("--run", default=None)
@click.option("--cell", default=None, help="Hash (prefix) or zoo name.")
@click.option("--task", default=None)
@click.option("--status", type=click.Choice(["ok", "timeout", "diverged", "failed"]), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=None)
@QFORMAT
def query_evaluations(
    db: str, run: str | None, cell: str | None, task: str | None, status: str | None, limit: int | None, fmt: str
) -> None:
    """Evaluations, filtered; score = validation result relative to the GRU's on the same setting.

    \b
    Example:
      cellsearch query evaluations --db results.db --status diverged --format csv
    """
    from ..store import evaluations_frame

    df = evaluations_frame(db, run=run, cell=cell, task=task, status=status)
    if limit is not None:
        df = df.head(limit)
    cols = ["id", "run", "generation", "hash", "name", "task", "seed", "status", "metric", "valid", "test", "score",
            "compile_seconds", "train_seconds", "reason"]  # fmt: skip
    emit_frame(df, fmt, cols)


@query.command("attempts")
@DB
@click.option("--run", default=None)
@click.option("--cell", default=None, help="Hash (prefix) or zoo name.")
@click.option("--status", type=click.Choice(["running", "done", "lost", "failed"]), default=None)
@QFORMAT
def query_attempts(db: str, run: str | None, cell: str | None, status: str | None, fmt: str) -> None:
    """Each start of an evaluation on a worker: worker, heartbeat, how it ended (the retry history).

    \b
    Example:
      cellsearch query attempts --db results.db --status lost
    """
    from ..store import attempts_frame

    df = attempts_frame(db, run=run, status=status, cell=cell)
    cols = ["id", "run", "generation", "hash", "task", "seed", "attempt", "worker", "status", "seconds", "reason"]
    emit_frame(df, fmt, cols)


@query.command("show")
@click.argument("cell")
@DB
@QFORMAT
def query_show(cell: str, db: str, fmt: str) -> None:
    """One cell: its text, sizes, every evaluation, and its lineage up to the seed cells.

    \b
    Example:
      cellsearch query show 3fa2b1c9 --db results.db
    """
    from ..store import cell_detail

    d = cell_detail(db, cell)
    if fmt == "json":
        out = dict(d, evaluations=_records(d["evaluations"]), lineage=_records(d["lineage"]))
        click.echo(json.dumps(out, indent=2, default=str))
        return
    if fmt == "csv":
        emit_frame(d["evaluations"], "csv")
        return
    click.echo(f"cell {d['hash']}" + (f" (zoo: {d['name']})" if d["name"] else ""))
    click.echo("  " + d["text"].strip().replace("\n", "\n  "))
    for z in d["sizes"]:
        click.echo(f"  at input {z['input']}, hidden {z['hidden']}: {z['params']} parameters, {z['flops']} FLOPs per step")
    emit_frame(
        d["evaluations"],
        "table",
        ["run", "task", "seed", "status", "metric", "valid", "test", "score", "train_seconds", "reason"],
        title="evaluations",
    )
    emit_frame(
        d["lineage"], "table", ["depth", "child", "parent", "parent_name", "operator", "run", "generation"], title="lineage"
    )


@query.command("lineage")
@click.argument("cell")
@DB
@QFORMAT
def query_lineage(cell: str, db: str, fmt: str) -> None:
    """A cell's ancestry: each (child, parent, operator) edge up to the seed cells.

    \b
    Example:
      cellsearch query lineage 3fa2b1c9 --db results.db --format json
    """
    from ..store import lineage_frame

    emit_frame(lineage_frame(db, cell), fmt)
