"""The Numba CPU backend."""

from ...numba_cache import install

install()  # before the kernels' modules: their Numba cache goes under cellsearch's cache dir

from .kernel import CpuKernel  # noqa: E402

__all__ = ["CpuKernel"]
