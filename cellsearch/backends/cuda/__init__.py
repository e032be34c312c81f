"""The CUDA backend (optional: the ``cuda`` extra, numba-cuda). Nothing here imports ``numba.cuda``
until ``load()`` is called, so the rest of cellsearch never needs it."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError


def load() -> Any:
    """The backend's module (``kernel``), after checking that it can run: ``ConfigError`` (one line)
    when numba-cuda is missing, or when there is no usable GPU and the simulator is off."""
    try:
        from numba import config, cuda
    except ImportError:
        raise ConfigError("the cuda backend needs numba-cuda: pip install 'cellsearch[cuda]'") from None
    if not getattr(config, "ENABLE_CUDASIM", 0) and not cuda.is_available():
        raise ConfigError(
            "the cuda backend found no usable NVIDIA GPU (driver or device missing); "
            "set NUMBA_ENABLE_CUDASIM=1 to run it in Numba's CUDA simulator"
        )
    from ...numba_cache import install

    install("numba.cuda.core.caching")  # before any kernel is made: their cache under cellsearch's cache dir
    from . import kernel

    return kernel


def _numpy_compat() -> None:
    """numba-cuda 0.30 registers an overload of ``np.row_stack`` when it compiles its first kernel, and
    NumPy 2.5 removed that alias (a deprecated name for ``np.vstack``): put it back so that such a pair
    (as on the workplace's GPU image: numba-cuda 0.30.4, NumPy 2.5.2) compiles."""
    import numpy as np

    if not hasattr(np, "row_stack"):
        setattr(np, "row_stack", np.vstack)  # noqa: B010 (typed stubs differ across NumPy versions)


_numpy_compat()  # before any submodule imports numba.cuda

__all__ = ["load"]
