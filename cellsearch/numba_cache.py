"""Where Numba keeps cellsearch's compiled kernels: ``$CELLSEARCH_CACHE_DIR/kernels``, else
platformdirs' ``user_cache_dir("cellsearch")/kernels`` (the same root as the data tasks' cache).

Numba's default for a package is the ``__pycache__`` beside its sources, which a read-only or shared
install cannot take and where stale entries pile up next to the code. ``install()`` adds a cache
locator, consulted after ``NUMBA_CACHE_DIR`` (set, it still wins), that sends the functions defined
in cellsearch's own files there (the cpu backend, the optimisers and the losses install it in Numba's
caching; the cuda backend in numba-cuda's, which keeps its own); every other library's cache stays
where Numba puts it. One folder per source folder (its name and a hash of its path, as Numba names
them), so two installs never share an index. Numba writes its index and data files through a temporary file and a rename, so
processes compiling at once cannot corrupt it.

Numba keys a cached function by its own source file (a hash of it), but a kernel's compiled code
also holds its neighbours': the intrinsics of ``cpu/vector.py``, the loops of ``cpu/ir_loops.py``,
the microkernel's tiles. So the stamp here adds a digest of every source file of ``backends/``
(``sources_digest``): after any change there, every kernel compiles afresh rather than running stale
code. (With ``NUMBA_CACHE_DIR`` set, Numba's own locator and stamp apply.)
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError

CACHE_ENV = "CELLSEARCH_CACHE_DIR"
_PACKAGE = Path(__file__).resolve().parent
_installed: set[str] = set()  # the caching modules the locator is in


def kernels_dir() -> Path:
    """The folder under which cellsearch's compiled kernels are cached."""
    env = os.environ.get(CACHE_ENV, "")
    if env:
        return Path(env).expanduser() / "kernels"
    try:
        import platformdirs
    except ImportError as e:  # pragma: no cover - a dependency
        raise ConfigError("platformdirs is missing: pip install platformdirs") from e
    return Path(platformdirs.user_cache_dir("cellsearch")) / "kernels"


@functools.cache
def sources_digest(root: Path = _PACKAGE / "backends") -> bytes:
    """A digest of every ``.py`` file under ``root`` (names and contents), read once per process."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.digest()


def install(caching_module: str = "numba.core.caching") -> None:
    """Register the locator (once per module; before the modules with ``cache=True`` kernels are
    imported) in Numba's caching module, or with ``"numba.cuda.core.caching"`` in numba-cuda's, which
    keeps a list of its own (the cuda backend's ``load``)."""
    if caching_module in _installed:
        return
    _installed.add(caching_module)
    if not os.environ.get(CACHE_ENV, ""):
        try:
            import platformdirs  # noqa: F401
        except ImportError:  # a dependency, but an environment without it still runs: Numba's own places
            return
    import importlib

    try:
        caching = importlib.import_module(caching_module)
        base: Any = caching._CacheLocator
        mixin: Any = caching._SourceFileBackedLocatorMixin
        impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")  # noqa: B009 (renamed in numba 0.62)
        classes = impl._locator_classes
    except (AttributeError, ImportError):  # another Numba's internals: keep its default places
        return

    class CellsearchCacheLocator(mixin, base):
        def __init__(self, py_func: Any, py_file: str) -> None:
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = str(kernels_dir() / self.get_suitable_cache_subpath(py_file))

        def get_cache_path(self) -> str:
            return self._cache_path

        def get_source_stamp(self) -> Any:  # this file's stamp, and the backends' sources (see above)
            return (super().get_source_stamp(), sources_digest())

        @classmethod
        def from_function(cls, py_func: Any, py_file: str) -> Any:
            try:
                ours = Path(py_file).resolve().is_relative_to(_PACKAGE)
            except (OSError, ValueError):
                ours = False
            return super().from_function(py_func, py_file) if ours else None

    first = 1 if classes and "UserProvided" in classes[0].__name__ else 0  # NUMBA_CACHE_DIR keeps precedence
    classes.insert(first, CellsearchCacheLocator)
