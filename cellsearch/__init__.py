"""cellsearch: recurrent cells as data — parse, check, hash, run, differentiate, search."""

from . import zoo
from .dsl import parse, parse_file
from .errors import CellsearchError, ConfigError, DSLError, IRError, ShapeError
from .ir import Cell, canonicalize, format_cell, init_params, param_specs, parameter_count

__version__ = "0.1.0"

__all__ = [
    "Cell",
    "CellsearchError",
    "ConfigError",
    "DSLError",
    "IRError",
    "ShapeError",
    "canonicalize",
    "format_cell",
    "init_params",
    "param_specs",
    "parameter_count",
    "parse",
    "parse_file",
    "zoo",
]
