"""Backends run a cell forward over a sequence and back again. All share one API:
``compile(cell, backend, dtype) -> kernel`` with ``kernel.forward(params, x, state0)`` and
``kernel.backward(params, tape, d_out, d_state_T)``."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..ir.cell import Cell
from .reference import Forward, Gradients, ReferenceKernel, Tape

BACKENDS = ("reference",)


def compile(cell: Cell, backend: str = "reference", dtype: type | np.dtype = np.float64) -> ReferenceKernel:
    """A kernel that runs ``cell`` on ``backend``."""
    if backend == "reference":
        return ReferenceKernel(cell, dtype)
    raise ConfigError(f"unknown backend '{backend}' (known: {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "Forward", "Gradients", "ReferenceKernel", "Tape", "compile"]
