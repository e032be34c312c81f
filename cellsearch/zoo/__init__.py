"""The built-in cells: one ``.cell`` file each, parsed by the same parser as user cells on the first
use of the zoo (not at import: parsing and hashing them all is ~65 ms that a process which never
names a zoo cell, such as a compile child or a worker, should not pay)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

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


#: structural hash -> zoo name. Greff's ``np`` is the same cell as ``lstm``: the common names win.
_PREFERRED = ("lstm", "gru", "rnn")
_LAZY = ("CELLS", "DESCRIPTIONS", "SOURCES", "BY_HASH")
_DATA: dict[str, dict[str, Any]] = {}


def _data() -> dict[str, dict[str, Any]]:
    """The zoo's tables, parsed on first use: CELLS, DESCRIPTIONS, SOURCES (by name), BY_HASH."""
    if not _DATA:
        cells, docs, texts = _load()
        by_hash: dict[str, str] = {}
        for name in (*_PREFERRED, *sorted(cells)):
            by_hash.setdefault(cells[name].hash, name)
        _DATA.update(CELLS=cells, DESCRIPTIONS=docs, SOURCES=texts, BY_HASH=by_hash)
        globals().update(_DATA)  # later reads of zoo.CELLS etc. are plain attributes
    return _DATA


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return _data()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    cells = _data()["CELLS"]
    if ref in cells:
        return cells[ref]
    raise ConfigError(f"unknown cell '{ref}': not a file and not a zoo cell (list them with `cellsearch cells`)")


def name_of(cell: Cell) -> str | None:
    """The zoo name of a cell with the same structure, or None."""
    return _data()["BY_HASH"].get(cell.hash)


def names() -> list[str]:
    return list(_data()["CELLS"])


def get(name: str) -> Cell:
    """A zoo cell by name; ``ConfigError`` naming the known cells otherwise."""
    cells = _data()["CELLS"]
    try:
        return cells[name]
    except KeyError:
        raise ConfigError(f"unknown cell '{name}': not a zoo cell (known: {', '.join(cells)})") from None


__all__ = ["BY_HASH", "CELLS", "DESCRIPTIONS", "SOURCES", "get", "load", "name_of", "names"]
