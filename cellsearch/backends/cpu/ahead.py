"""The executor's first use on a machine: its backward compiles in a second process while this one
compiles the forward.

The executor (``interp.py``) compiles once per machine and dtype, then loads from Numba's disk cache
(~0.3 s). That one compile is ~1.2 s for the forward's loop and ~1.3 s for the backward's, ~0.25 s for
each C function they call (the two GEMMs, the job runner: their loops written in LLVM IR too) and
~0.1 s for each of the moves (``moves.py``), and Numba compiles under one lock per process, so a cold
first training step takes ~3-3.5 s on one core, ~2.1-2.6 s with this. When the backward is not in the
cache yet, ``start`` launches ``python -m cellsearch.backends.cpu.ahead``, which compiles a kernel's
backward for the argument types a real one passes (the same call path on a made-up one-step problem,
not run) and exits once Numba has written it to the cache, while this process compiles the forward,
then the C functions and moves the backward calls; the first ``backward`` here ``wait``s for the
child and then loads its loop from the cache. If the child fails or is slow, the backward compiles
here as before: only time is at stake, never results. Numba writes cache files atomically, so
processes compiling the same function at once do no harm.

Nothing is started when the backward is already cached, or with ``CELLSEARCH_COMPILE_AHEAD=0``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import interp

#: how long the first backward waits for the child before compiling in this process instead
WAIT_S = 120.0

_children: dict[tuple[str, bool], subprocess.Popen[bytes] | None] = {}


def _backward_function(split: bool) -> Any:
    return interp.backward_kernel_split if split else interp.backward_rows


def _cached(dispatcher: Any, dtype: np.dtype) -> bool:
    """Whether Numba's cache (or this process) already holds ``dispatcher`` for ``dtype``; True when
    that cannot be told (then nothing is started)."""
    try:
        if any(dtype.name in str(sig) for sig in dispatcher.signatures):
            return True
        index = dispatcher._cache._cache_file._load_index()  # {} when missing or stale
        return any(dtype.name in str(key[0]) for key in index)
    except Exception:  # Numba's internals moved: behave as without this module
        return True


def start(dtype: np.dtype, split: bool) -> None:
    """Start compiling the backward (one chunk, or the split kernel) for ``dtype`` in a child
    process, once per process, if Numba's cache does not hold it yet."""
    key = (np.dtype(dtype).name, split)
    if key in _children:
        return
    _children[key] = None
    if os.environ.get("CELLSEARCH_COMPILE_AHEAD", "1") == "0" or _cached(_backward_function(split), np.dtype(dtype)):
        return
    cmd = [sys.executable, "-m", "cellsearch.backends.cpu.ahead", key[0], "2" if split else "1"]
    try:
        env = {**os.environ, "CELLSEARCH_COMPILE_AHEAD": "0"}  # the child starts no child of its own
        # the child imports this cellsearch, wherever it came from (a path added at run time included)
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH", "")])])
        _children[key] = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    except OSError:
        pass


def wait(dtype: np.dtype, split: bool) -> None:
    """Before the first backward: let a child started by ``start`` finish (at most ``WAIT_S``)."""
    if not any(_children.values()):  # (every backward calls this: nothing running is the common case)
        return
    child = _children.get((np.dtype(dtype).name, split))
    if child is None:
        return
    _children[(np.dtype(dtype).name, split)] = None
    try:
        child.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _compile_backward(dtype: np.dtype, threads: int) -> None:
    """Compile a kernel's backward for the argument types a real backward passes, through the same
    call path on a made-up one-step problem, without running it: Numba compiles it and writes it to
    the cache. The C functions it calls (the GEMMs, the job runner) and the moves compile in the
    parent, around its forward (``CpuKernel.forward``, ``moves.first_use``): so the two processes
    end together."""
    from importlib import resources

    from numba import typeof

    from ... import zoo
    from ...dsl import parse
    from ...ir.params import param_specs
    from . import kernel as kernel_module
    from . import moves
    from .kernel import CpuKernel, CpuTape

    def compile_only(dispatcher: Any) -> Any:
        return lambda *args: dispatcher.compile(tuple(typeof(a) for a in args))

    interp.backward_rows = compile_only(interp.backward_rows)
    interp.backward_kernel_split = compile_only(interp.backward_kernel_split)
    kernel_module.address = lambda which: 0  # (the C functions it calls compile in the parent, after its forward,
    moves.pack = moves.sums = lambda table, buf: None  # and so do the moves)
    lstm = parse((resources.files(zoo) / "lstm.cell").read_text(encoding="utf-8"), name="lstm")  # not the whole zoo
    kernel = CpuKernel(lstm, dtype, threads=threads)
    T, B, I, H = 1, threads, 1, 1
    params = {s.name: np.zeros(s.shape, dtype=dtype) for s in param_specs(kernel.cell, I, H)}
    ws = kernel._get_workspace(T, B, I, H)
    x = np.zeros((T, B, I), dtype=dtype)
    tape = CpuTape(x, ws.A, ws.K, I, H, kernel._generation)
    kernel.backward(params, tape, np.zeros((T, B, H), dtype=dtype))


if __name__ == "__main__":  # pragma: no cover - run as a child process by ``start``
    _compile_backward(np.dtype(sys.argv[1]), int(sys.argv[2]))
