"""The built-in cells: one ``.cell`` file each, parsed at import by the same parser as user cells."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..dsl import parse, parse_file
from ..errors import ConfigError
from ..ir.cell import Cell


def _load() -> tuple[dict[str, Cell], dict[str, str], dict[str, str]]:
    cells: dict[str, Cell] = {}
    docs: dict[str, str] = {}
    texts: dict[str, str] = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".cell"):
            continue
        name = entry.name[: -len(".cell")]
        text = entry.read_text(encoding="utf-8")
        cells[name] = parse(text, name=name, file=f"cellsearch/zoo/{entry.name}")
        comment = []
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            comment.append(line.lstrip("# ").rstrip())
        docs[name] = " ".join(comment)
        texts[name] = text
    return cells, docs, texts


CELLS, DESCRIPTIONS, SOURCES = _load()

#: structural hash -> zoo name. Greff's ``np`` is the same cell as ``lstm``: the common names win.
_PREFERRED = ("lstm", "gru", "rnn")
BY_HASH: dict[str, str] = {}
for _name in (*_PREFERRED, *sorted(CELLS)):
    BY_HASH.setdefault(CELLS[_name].hash, _name)


def load(ref: str | Path, base: Path | None = None) -> Cell:
    """A cell from a ``.cell`` file (relative to ``base`` when given) or a zoo name; ``ConfigError``."""
    ref = str(ref)
    path = Path(ref)
    if base is not None and not path.is_absolute() and (base / path).is_file():
        path = base / path
    if path.is_file():
        return parse_file(path)
    if ref.endswith(".cell") or "/" in ref or "\\" in ref:
        raise ConfigError(f"no such cell file: {ref}")
    if ref in CELLS:
        return CELLS[ref]
    raise ConfigError(f"unknown cell '{ref}': not a file and not a zoo cell (list them with `cellsearch cells`)")


def name_of(cell: Cell) -> str | None:
    """The zoo name of a cell with the same structure, or None."""
    return BY_HASH.get(cell.hash)


def names() -> list[str]:
    return list(CELLS)


def get(name: str) -> Cell:
    """A zoo cell by name; ``ConfigError`` naming the known cells otherwise."""
    try:
        return CELLS[name]
    except KeyError:
        raise ConfigError(f"unknown cell '{name}': not a zoo cell (known: {', '.join(CELLS)})") from None


__all__ = ["BY_HASH", "CELLS", "DESCRIPTIONS", "SOURCES", "get", "load", "name_of", "names"]
