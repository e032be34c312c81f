"""The command line: a thin layer over the library. Known errors become one line and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .. import zoo
from ..dsl import parse_file
from ..errors import CellsearchError, ConfigError, DSLError
from ..ir.cell import Cell
from ..ir.params import param_specs

FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Output format."
)


def load_cell(ref: str) -> Cell:
    """A cell from a file path or a zoo name."""
    path = Path(ref)
    if path.is_file():
        return parse_file(path)
    if ref.endswith(".cell") or "/" in ref or "\\" in ref:
        raise ConfigError(f"no such cell file: {ref}")
    if ref in zoo.CELLS:
        return zoo.get(ref)
    raise ConfigError(f"unknown cell '{ref}': not a file and not a zoo cell (list them with `cellsearch cells`)")


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
        "parameter_count": sum(int(_prod(s.shape)) for s in specs),
    }


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


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
        count = (
            sum(_prod(s.shape) for s in param_specs(cell, I, hidden_size))
            if (I == hidden_size or not cell.x_elementwise)
            else None
        )
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
