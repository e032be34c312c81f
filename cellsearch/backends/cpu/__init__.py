"""The Numba CPU backend."""

from .kernel import CpuKernel

__all__ = ["CpuKernel"]
