"""One root exception for everything cellsearch raises on purpose.

Each error also subclasses the matching builtin, so ``except ValueError`` keeps working, and each
message says what was expected and what was found.
"""

from __future__ import annotations


class CellsearchError(Exception):
    """Root of every error cellsearch raises deliberately (the CLI maps these to exit code 2)."""


class DSLError(CellsearchError, ValueError):
    """Bad cell text. ``str(err)`` is ``file:line:col: message`` (line and column 1-based)."""

    def __init__(self, message: str, line: int = 1, col: int = 1, file: str = "<cell>") -> None:
        self.message = message
        self.line = line
        self.col = col
        self.file = file
        super().__init__(f"{file}:{line}:{col}: {message}")

    def with_file(self, file: str) -> DSLError:
        return DSLError(self.message, self.line, self.col, file)


class IRError(CellsearchError, ValueError):
    """A graph that breaks an IR invariant (built by code, not parsed from text)."""


class ShapeError(CellsearchError, ValueError):
    """Sizes that a cell cannot run with (e.g. ``x`` used elementwise while input != hidden)."""


class ConfigError(CellsearchError, ValueError):
    """A bad option, name or value given by the user (unknown zoo cell, bad backend, ...)."""
