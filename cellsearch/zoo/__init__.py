"""The built-in cells: one ``.cell`` file each, parsed at import by the same parser as user cells."""

from __future__ import annotations

from importlib import resources

from ..dsl import parse
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


def names() -> list[str]:
    return list(CELLS)


def get(name: str) -> Cell:
    """A zoo cell by name; ``ConfigError`` naming the known cells otherwise."""
    try:
        return CELLS[name]
    except KeyError:
        raise ConfigError(f"unknown cell '{name}': not a zoo cell (known: {', '.join(CELLS)})") from None


__all__ = ["CELLS", "DESCRIPTIONS", "SOURCES", "get", "names"]
