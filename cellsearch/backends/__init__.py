"""Backends run a cell forward over a sequence and back again. All share one API:
``compile(cell, backend, dtype) -> kernel`` with ``kernel.forward(params, x, state0)`` and
``kernel.backward(params, tape, d_out, d_state_T)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..ir.cell import Cell
from .reference import Forward, Gradients, ReferenceKernel, Tape

BACKENDS = ("reference", "cpu", "cuda")


def compile(cell: Cell, backend: str = "reference", dtype: type | np.dtype | None = None, **options: Any) -> Any:
    """A kernel that runs ``cell`` on ``backend``: ``"reference"`` (NumPy, float64 by default),
    ``"cpu"`` (Numba, float32 by default; ``threads=N`` splits the batch over N threads) or ``"cuda"``
    (numba-cuda on an NVIDIA GPU or in Numba's simulator, float32 by default; options in
    ``backends.cuda.kernel.CudaKernel``)."""
    if backend == "reference":
        if options:
            raise ConfigError(f"the reference backend takes no options (got {', '.join(options)})")
        return ReferenceKernel(cell, np.float64 if dtype is None else dtype)
    if backend == "cpu":
        from .cpu import CpuKernel  # numba is imported only when asked for

        return CpuKernel(cell, np.float32 if dtype is None else dtype, **options)
    if backend == "cuda":
        from .cuda import load  # numba.cuda is imported only when asked for

        return load().CudaKernel(cell, np.float32 if dtype is None else dtype, **options)
    raise ConfigError(f"unknown backend '{backend}' (known: {', '.join(BACKENDS)})")


def compile_many(cells: Sequence[Cell], backend: str = "cuda", dtype: type | np.dtype | None = None, **options: Any) -> Any:
    """Several different cells stepped together (``population.step``): on ``"cuda"`` a
    ``CudaPopulation``, each cell on its own stream. Only the cuda backend has one."""
    if backend != "cuda":
        raise ConfigError(f"compile_many runs on the cuda backend only (got '{backend}')")
    from .cuda import load

    load()
    from .cuda.population import CudaPopulation

    return CudaPopulation(cells, np.float32 if dtype is None else dtype, **options)


__all__ = ["BACKENDS", "Forward", "Gradients", "ReferenceKernel", "Tape", "compile", "compile_many"]
