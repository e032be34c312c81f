"""cellsearch: recurrent cells as data — parse, check, hash, run, differentiate, search."""

from . import zoo
from .backends import Forward, Gradients, compile
from .dsl import parse, parse_file
from .errors import CellsearchError, ConfigError, DSLError, IRError, ShapeError
from .ir import Cell, canonicalize, format_cell, init_params, param_specs, parameter_count
from .ir.random import random_cell

__version__ = "0.1.0"

__all__ = [
    "Cell",
    "CellsearchError",
    "ConfigError",
    "DSLError",
    "Forward",
    "Gradients",
    "IRError",
    "ShapeError",
    "canonicalize",
    "compile",
    "format_cell",
    "init_params",
    "param_specs",
    "parameter_count",
    "parse",
    "parse_file",
    "random_cell",
    "zoo",
]
