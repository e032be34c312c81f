"""``cellsearch claims``: the review's claims, each one experiment, stored and judged."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from .main import cli, trials_progress
from .search import DB


@cli.command("claims")
@click.option("--scale", type=click.Choice(["smoke", "small"]), default="smoke", show_default=True,
              help="smoke: the pipeline in minutes, deciding nothing; small: about an hour on 2 cores.")  # fmt: skip
@DB
@click.option("--out", default="analysis/claims", show_default=True, type=click.Path(file_okay=False),
              help="Folder for summary.md, claims.json and the figures.")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Worker processes [default: cores; 0: this process].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Shifts every training seed.")
@click.option("--name", default=None, help="Run name [default: claims-SCALE, with -sSEED for a seed other than 0].")
def claims_cmd(scale: str, db: str, out: str, workers: int | None, seed: int, name: str | None) -> None:
    """Test each claim of the LSTM review with one experiment, and write the verdicts.

    Trains every arm of every claim over its seeds (each run an evaluation in --db, like a search's),
    measures gradient reach and the gates' cost, then writes OUT/summary.md (one table row per claim:
    experiment, cells, seeds, measured numbers, Welch p-value, verdict), OUT/claims.json and figures.
    Running the same command again resumes where it stopped.

    \b
    Example:
      cellsearch claims --scale smoke --db claims.db --out /tmp/claims
      cellsearch claims --scale small --db claims.db
    """
    from ..claims import run_claims, run_name, verdicts
    from ..claims.report import write
    from ..search.executor import make_executor
    from ..store import Store

    store = Store(db, create=True)
    executor = make_executor(workers)
    run = name or run_name(scale, seed)
    try:
        with trials_progress() as bar:
            tid = bar.add_task(f"{run} evaluations", total=None, cached=0, failures=0)

            def tick(prog: Any, _result: Any) -> None:
                bar.update(tid, total=prog.total, completed=prog.done, cached=prog.cached, failures=prog.failures)

            def step(text: str) -> None:
                bar.update(tid, description=text)

            run_id, items = run_claims(store, scale, seed, executor, run, tick, step)
    except KeyboardInterrupt:
        executor.close()
        click.echo(f"interrupted: run '{run}' keeps its committed evaluations; the same command resumes it", err=True)
        sys.exit(130)
    finally:
        executor.close()
    found, arms = verdicts(store, run_id, items, seed)
    row = store.run_by_id(run_id)
    keys = sorted({k for c in row.config["claims"] for a in c["arms"] for k in a["keys"]})
    hours = sum(e.train_seconds for e in store.evaluations_by_key(keys).values()) / 3600
    command = "cellsearch claims " + " ".join(
        shlex.quote(a) for a in ["--scale", scale, "--db", db, "--out", out] + (["--seed", str(seed)] if seed else [])
    )
    info = {"name": run, "scale": scale, "seed": seed, "db": db, "evaluations": len(keys), "hours": hours, "command": command}
    written = write(Path(out), items, found, arms, row.summary or {}, info)
    import pandas as pd

    from .search import emit_frame

    table = pd.DataFrame([{"claim": v.number, "verdict": v.verdict, "p": v.p, "measured": v.measured[:90]} for v in found])
    emit_frame(table, "table", title=f"{run}: the review's claims at scale {scale}")
    click.echo(f"wrote {written['summary']} and {len(written['figures'])} figures; evaluations stored in {db} (run '{run}')")
