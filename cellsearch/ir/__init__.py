"""The cell IR: ops, nodes, cells, canonical form, hash, printer, parameters, validator."""

from .canon import canonicalize, structural_hash
from .cell import Cell, Node
from .layout import format_cell, layout
from .ops import OP_INFO, Op
from .params import ParamSpec, init_params, param_specs, parameter_count
from .validate import validate

__all__ = [
    "OP_INFO",
    "Cell",
    "Node",
    "Op",
    "ParamSpec",
    "canonicalize",
    "format_cell",
    "init_params",
    "layout",
    "param_specs",
    "parameter_count",
    "structural_hash",
    "validate",
]
