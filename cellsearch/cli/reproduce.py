"""``cellsearch reproduce``: re-run the LSTM-optimality studies into a results database."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import click

from ..errors import ConfigError
from .main import cli, trials_progress
from .search import DB, emit_frame


@cli.command("reproduce")
@click.argument("study_name", metavar="greff2016|jozefowicz2015")
@click.option("--scale", type=click.Choice(["smoke", "small", "paper"]), default="smoke", show_default=True,
              help="smoke: minutes; small: an hour or two on 2 cores; paper: the papers' trial counts.")  # fmt: skip
@DB
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Worker processes [default: cores; 0: this process].")
@click.option("--name", default=None, help="Run name [default: STUDY-SCALE, with -sSEED for a seed other than 0].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the random search.")
@click.option(
    "--ptb", default=None, metavar="DIR", help="Penn Treebank folder (ptb.train.txt, ...): adds word-level PTB (Jozefowicz)."
)
@click.option(
    "--backend",
    type=click.Choice(["cpu", "cuda", "reference"]),
    default="cpu",
    show_default=True,
    help="Where the cells train (cuda: an NVIDIA GPU; its runs are named STUDY-SCALE-cuda by default).",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def reproduce_cmd(
    study_name: str, scale: str, db: str, workers: int | None, name: str | None, seed: int, ptb: str | None, backend: str,
    fmt: str,
) -> None:  # fmt: skip
    """Re-run a study: its cells over a random search of its hyperparameters, on its tasks.

    Every trial is an evaluation in --db; running the same command again resumes where it stopped.
    jozefowicz2015 also runs an evolutionary search seeded with LSTM and GRU (run NAME-search).
    `cellsearch report --db URL --out DIR` turns the database into figures, tables and conclusions.

    \b
    Example:
      cellsearch reproduce greff2016 --scale smoke --db studies.db
      cellsearch reproduce jozefowicz2015 --scale small --db studies.db --workers 2
      cellsearch reproduce greff2016 --scale small --db studies.db --backend cuda --workers 4
    """
    from ..reproduce import get, open_study_run, run_study, study_config, summary_rows, trial_specs
    from ..search.executor import make_executor
    from ..store import Store

    study = get(study_name)
    study.scale(scale)
    if ptb is not None and "text" not in study.optional_tasks:
        raise ConfigError(f"--ptb: {study.name} has no language-modelling task")
    config = study_config(study, scale, seed, ptb)  # task options are checked here (a bad --ptb too)
    specs = list(trial_specs(study, scale, seed, ptb))
    search_spec = dict(study.scale(scale).search or {})
    if backend != "cpu":  # other evaluations (the hp is part of their identity) in a run of their own
        if backend == "cuda":
            from ..backends.cuda import load

            load()  # no GPU: one line now, not a failure per trial
        config = {**config, "backend": backend}
        specs = [dataclasses.replace(s, hp={**s.hp, "backend": backend}) for s in specs]
        if search_spec:
            search_spec["hp"] = {**search_spec.get("hp", {}), "backend": backend}
    search_cfg = None
    run_name = name or (f"{study.name}-{scale}" + (f"-s{seed}" if seed else "") + (f"-{backend}" if backend != "cpu" else ""))
    if search_spec:
        from ..search.config import check_config

        search_cfg = check_config({**search_spec, "seed": seed, "name": f"{run_name}-search", "study_of": run_name},
                                  f"{study.name} ({scale})")  # fmt: skip
    store = Store(db, create=True)
    run_id = open_study_run(store, run_name, config)
    executor = make_executor(workers)
    try:
        with trials_progress() as bar:
            tid = bar.add_task(f"{run_name} trials", total=len(specs), cached=0, failures=0)

            def tick(prog: Any, _result: Any) -> None:
                bar.update(tid, completed=prog.done, cached=prog.cached, failures=prog.failures)

            run_study(store, run_id, specs, executor, tick)
            if search_cfg is not None:
                _run_search(store, search_cfg, executor, bar)
    except KeyboardInterrupt:
        executor.close()
        click.echo(f"interrupted: run '{run_name}' keeps its committed trials; the same command resumes it", err=True)
        sys.exit(130)
    finally:
        executor.close()
    rows = summary_rows(store, run_name)
    if fmt == "json":
        click.echo(
            json.dumps({"run": run_name, "db": db, "search": search_cfg.name if search_cfg else None, "cells": rows}, indent=2)
        )
        return
    import pandas as pd

    emit_frame(pd.DataFrame(rows), "table", title=f"{run_name}: test results over {config['trials']} trials per cell and task")
    click.echo(f"stored in {db} (run '{run_name}'" + (f", search run '{search_cfg.name}'" if search_cfg else "") + ")")
    click.echo(f"figures and conclusions: cellsearch report --db {db} --out report-{run_name}")


def _run_search(store: Any, config: Any, executor: Any, bar: Any) -> None:
    """The study's evolutionary search (a normal search run), made or resumed."""
    from ..search.loop import Search

    try:
        run_id = store.run_by_name(config.name).id
    except ConfigError:
        run_id = store.create_run(config.name, config.as_dict(), config.seed)
    tid = bar.add_task(f"{config.name} gen 0/{config.generations}", total=None, cached=0, failures=0)

    def on_event(event: Any) -> None:
        if event.kind == "generation":
            bar.update(tid, description=f"{config.name} gen {event.generation}/{config.generations}", completed=0, total=None)
        elif event.kind == "confirm":
            bar.update(tid, description=f"{config.name} confirm", completed=0, total=None)
        elif event.kind == "queued":
            bar.update(tid, total=event.data["pending"], completed=0, cached=event.data["cached"])
        elif event.kind == "result":
            bar.update(tid, advance=1)

    Search(store, run_id, config, executor, on_event).run(config.generations)
