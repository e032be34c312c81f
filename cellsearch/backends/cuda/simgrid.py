"""Numba's CUDA simulator with a launch's blocks running at once, for checking the units schedule's
multi-block paths without a GPU.

The simulator runs a launch's blocks one after another, so a kernel whose blocks wait for each other
(the units schedule's grid barrier) can only run there as one block — and the paths a GPU takes with
several blocks (a block's units starting past 0, a partial last block, the mirror and weight cache of
a block that owns one group, the barrier itself) never ran without a GPU. Inside
``concurrent_blocks(n)``:

- every block of a launch runs in its own thread, all at once, as on a GPU (each block still plays
  its threads as the simulator does); each block gets its own shared memory (the simulator keeps one
  set per launch, which blocks run in turn may share);
- cooperative groups' grid sync waits for every thread of the grid (the simulator's syncs one block);
- the cuda backend's units schedule spreads its blocks over ``n`` simulated multiprocessors
  (``kernel.SIMULATED_SMS``), so a grid has up to ``n`` blocks, each with one group of units where
  H allows.

It also makes the simulator faster and its shared arrays thread-safe (``fast_simulator``, for the
process). A failing or hung block must not hang the caller: once any block fails, or after ``timeout`` seconds,
the others' next atomic operation or grid sync raises, and the launch raises. For tests and kernel
development only: it patches the simulator's classes for the duration of the ``with``. Needs
``NUMBA_ENABLE_CUDASIM=1``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from . import kernel as kernel_module

SWITCH_INTERVAL = 2e-4  # seconds: the interpreter's time slice for simulated kernels (``fast_simulator``)
_SHARED_LOCK = threading.Lock()


def fast_simulator() -> None:
    """Make Numba's CUDA simulator faster and its shared arrays safe, for this process (idempotent):

    - the interpreter's time slice goes to ``SWITCH_INTERVAL`` (0.2 ms, from 5): every simulated thread
      is a Python thread and each block's manager polls them in a busy loop, so at 5 ms most of a
      kernel's time was threads waiting their turn (~3x faster kernels);
    - ``cuda.shared.array`` finds or creates a block's array under a lock. The simulator's own checks
      for the array and creates it unlocked (and reads the whole stack in between): two threads of a
      block preempted there got two different arrays for one shared array — one in 25 runs of a GEMM
      at the shorter time slice gave a wrong product (found by CI: test_random_cells' dx)."""
    if not kernel_module.simulated():
        raise RuntimeError("fast_simulator is for Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)")
    import numpy as np
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
    shared_class = kernelapi.FakeCUDAShared
    if getattr(shared_class.array, "_locked", False):
        return
    dynamic = shared_class.array

    def array(self: Any, shape: Any, dtype: Any, alignment: Any = None) -> Any:
        """As the simulator's: an array per (file, line) of the call, dynamic shared memory for shape 0."""
        if shape == 0 or alignment is not None:  # (no lookup by caller there: the simulator's own)
            return dynamic(self, shape, dtype, alignment)  # type: ignore[call-arg]
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with _SHARED_LOCK:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    array._locked = True  # type: ignore[attr-defined]
    shared_class.array = array  # type: ignore[method-assign]


class GridAborted(RuntimeError):
    """Another block of the launch failed, or the launch ran past its time: this block stops too."""


class _Launch:
    """What the blocks of one launch share: its shared memories by block, the grid barrier, and
    whether to stop."""

    def __init__(self, n_threads: int, deadline: float) -> None:
        self.shared: dict[tuple[int, int, int], Any] = {}
        self.lock = threading.Lock()
        self.grid = threading.Barrier(n_threads)
        self.failed = threading.Event()
        self.deadline = deadline
        self.threads: list[threading.Thread] = []  # a thread per block, running the simulator's block
        self.errors: list[BaseException] = []

    def stop(self) -> None:
        """Every block stops at its next atomic operation or grid sync."""
        self.failed.set()
        self.grid.abort()

    def check(self) -> None:
        if self.failed.is_set():
            raise GridAborted("another block of this launch failed")
        if time.monotonic() > self.deadline:
            self.stop()
            raise GridAborted("the launch ran past its time limit (a block waits for one that never comes?)")


@contextlib.contextmanager
def concurrent_blocks(sms: int = 4, timeout: float = 600.0) -> Iterator[None]:
    """Run every launch's blocks at once (see the module's docstring); the units schedule spreads
    over ``sms`` simulated multiprocessors. ``timeout``: seconds a launch may take before its blocks
    are stopped and it raises ``GridAborted``."""
    if not kernel_module.simulated():
        raise RuntimeError("concurrent_blocks needs Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)")
    from numba.cuda.simulator import kernel as sim_kernel
    from numba.cuda.simulator import kernelapi

    launches: dict[int, _Launch] = {}  # by id of the launch's fake cuda module
    registry = threading.Lock()

    def launch_of(module: Any) -> _Launch:
        with registry:
            launch = launches.get(id(module))
            if launch is None:
                g, b = module.gridDim, module.blockDim
                n = g.x * g.y * g.z * b.x * b.y * b.z
                launch = launches[id(module)] = _Launch(n, time.monotonic() + timeout)
            return launch

    orig_block_manager = sim_kernel.BlockManager
    orig_shared = kernelapi.FakeCUDAModule.shared
    orig_cg = kernelapi.FakeCUDAModule.cg
    orig_add = kernelapi.FakeCUDAAtomic.add

    def current_module() -> Any:
        return sim_kernel._get_kernel_context()

    class ConcurrentBlocks(orig_block_manager):  # type: ignore[misc, valid-type]
        """Starts its block on a thread of its own and returns; the launch's last block waits for
        all of them (the simulator asks its blocks in order, from one thread, then copies results
        back)."""

        def run(self, grid_point: tuple[int, ...], *args: Any) -> None:
            module = current_module()
            launch = launch_of(module)
            run_block = super().run

            def body() -> None:
                try:
                    run_block(grid_point, *args)
                except BaseException as err:  # handed to the launching thread
                    launch.stop()
                    launch.errors.append(err)

            thread = threading.Thread(target=body, name=f"block{grid_point}", daemon=True)
            launch.threads.append(thread)
            thread.start()
            if tuple(grid_point) != tuple(d - 1 for d in self._grid_dim):
                return
            for t in launch.threads:
                t.join(max(0.0, launch.deadline - time.monotonic()) + 5.0)
            with registry:
                launches.pop(id(module), None)
            if any(t.is_alive() for t in launch.threads):
                launch.stop()
                raise GridAborted(f"a block of the launch did not finish within {timeout:g} s")
            errors = [e for e in launch.errors if not isinstance(e, GridAborted)] or launch.errors
            if errors:
                raise errors[0]

    def shared(self: Any) -> Any:
        """The block's own shared memory."""
        launch = launch_of(self)
        block = tuple(threading.current_thread().blockIdx)  # type: ignore[attr-defined]
        with launch.lock:
            mem = launch.shared.get(block)
            if mem is None:
                mem = launch.shared[block] = kernelapi.FakeCUDAShared(self._shared._dynshared_size)
            return mem

    class GridGroup:
        def __init__(self, launch: _Launch) -> None:
            self.launch = launch

        def sync(self) -> None:
            self.launch.check()
            try:
                self.launch.grid.wait(max(0.0, self.launch.deadline - time.monotonic()))
            except threading.BrokenBarrierError:
                self.launch.stop()
                raise GridAborted("the grid barrier broke: a block failed or the launch ran past its time") from None

    class Cg:
        def __init__(self, module: Any) -> None:
            self.module = module

        def this_grid(self) -> GridGroup:
            return GridGroup(launch_of(self.module))

    def cg(self: Any) -> Cg:
        return Cg(self)

    def atomic_add(self: Any, array: Any, index: Any, val: Any) -> Any:
        launch_of(current_module()).check()  # a spinning block gives up once another failed
        time.sleep(0)  # a spin loop hands the interpreter to the blocks it waits for
        return orig_add(self, array, index, val)

    old_sms = kernel_module.SIMULATED_SMS
    fast_simulator()
    try:
        sim_kernel.BlockManager = ConcurrentBlocks  # type: ignore[misc]
        kernelapi.FakeCUDAModule.shared = property(shared)  # type: ignore[method-assign, assignment]
        kernelapi.FakeCUDAModule.cg = property(cg)  # type: ignore[method-assign, assignment]
        kernelapi.FakeCUDAAtomic.add = atomic_add  # type: ignore[method-assign]
        kernel_module.SIMULATED_SMS = sms
        yield
    finally:
        sim_kernel.BlockManager = orig_block_manager  # type: ignore[misc]
        kernelapi.FakeCUDAModule.shared = orig_shared  # type: ignore[method-assign]
        kernelapi.FakeCUDAModule.cg = orig_cg  # type: ignore[method-assign]
        kernelapi.FakeCUDAAtomic.add = orig_add  # type: ignore[method-assign]
        kernel_module.SIMULATED_SMS = old_sms
