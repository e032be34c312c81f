"""Backends run a cell forward over a sequence and back again. All share one API:
``compile(cell, backend, dtype) -> kernel`` with ``kernel.forward(params, x, state0)`` and
``kernel.backward(params, tape, d_out, d_state_T)``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..ir.cell import Cell
from .reference import Forward, Gradients, ReferenceKernel, Tape

BACKENDS = ("reference", "cpu")


def compile(cell: Cell, backend: str = "reference", dtype: type | np.dtype | None = None, **options: Any) -> Any:
    """A kernel that runs ``cell`` on ``backend``: ``"reference"`` (NumPy, float64 by default) or
    ``"cpu"`` (Numba, float32 by default; ``threads=N`` splits the batch over N threads)."""
    if backend == "reference":
        if options:
            raise ConfigError(f"the reference backend takes no options (got {', '.join(options)})")
        return ReferenceKernel(cell, np.float64 if dtype is None else dtype)
    if backend == "cpu":
        from .cpu import CpuKernel  # numba is imported only when asked for

        return CpuKernel(cell, np.float32 if dtype is None else dtype, **options)
    raise ConfigError(f"unknown backend '{backend}' (known: {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "Forward", "Gradients", "ReferenceKernel", "Tape", "compile"]
