"""``cellsearch report``: figures, an HTML page and a Markdown summary of every run in a database."""

from __future__ import annotations

import json

import click

from .main import _stderr_console, cli
from .search import DB


@cli.command("report")
@DB
@click.option("--out", default="report", show_default=True, help="Folder for report.html, summary.md and the PNG figures.")
@click.option("--run", "runs", multiple=True, metavar="NAME", help="Report only this run (repeatable) [default: every run].")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Output format.")
def report_cmd(db: str, out: str, runs: tuple[str, ...], fmt: str) -> None:
    """Write DIR/report.html (self-contained), DIR/summary.md and PNG figures for the runs in --db.

    A Greff study gets box plots per task, Welch's t-tests against vanilla, its conclusions beside
    the paper's, fANOVA hyperparameter importance and test result against learning rate and hidden
    size; a Jozefowicz study the best trial per cell relative to the GRU, its conclusions and box
    plots; a search its progress, the Pareto front of score against parameters, the leaderboard with
    each cell's text and the lineage of its best evolved cell.

    \b
    Example:
      cellsearch report --db results.db --out report
      cellsearch report --db results.db --out greff --run greff2016-small
    """
    import matplotlib

    matplotlib.use("Agg")

    from ..analysis import write_report

    console = _stderr_console()
    with console.status("reading the database") as status:
        report = write_report(db, out, runs or None, progress=lambda name: status.update(f"reporting on {name}"))
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "html": str(report.html),
                    "markdown": str(report.markdown),
                    "figures": [str(p) for p in report.figures],
                    "sections": report.sections,
                },
                indent=2,
            )
        )
        return
    click.echo(f"{len(report.sections)} run(s), {len(report.figures)} figures in {report.out}/")
    for title in report.sections:
        click.echo(f"  {title}")
    click.echo(f"open {report.html} (self-contained), or read {report.markdown}")
