"""Executors run evaluation specs and hand back results as they finish.

``InProcess`` runs them one by one in this process (``--workers 0``, for debugging and tests);
``LocalPool`` runs them in N spawned worker processes with one thread each (BLAS and Numba), so N
evaluations use N cores without fighting. A worker that dies (a segfault, the OOM killer) breaks the
pool: the pool is rebuilt and the unfinished specs are run again, and a spec that was running in two
such crashes is recorded as ``failed`` with the reason, never lost.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, Protocol

from .evaluation import EvalSpec, failed_result, run_spec

_ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


class Executor(Protocol):
    name: str

    def run(self, specs: Sequence[EvalSpec]) -> Iterator[tuple[EvalSpec, dict[str, Any]]]: ...

    def close(self) -> None: ...


class InProcess:
    name = "in-process"

    def run(self, specs: Sequence[EvalSpec]) -> Iterator[tuple[EvalSpec, dict[str, Any]]]:
        for spec in specs:
            yield spec, run_spec(spec)

    def close(self) -> None:
        pass


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


class LocalPool:
    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self.name = f"{self.workers} local worker{'s' if self.workers > 1 else ''}"
        for k, v in _ONE_THREAD.items():  # inherited by the spawned workers (this process is set up already)
            os.environ.setdefault(k, v)
        self._pool: ProcessPoolExecutor | None = None

    def _fresh_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=_init_worker)
        return self._pool

    def run(self, specs: Sequence[EvalSpec]) -> Iterator[tuple[EvalSpec, dict[str, Any]]]:
        """Results in the order they finish. After a worker dies, the unfinished specs run one at a
        time, so the next death names its spec exactly (recorded as ``failed``)."""
        todo: list[EvalSpec] = []
        futures = {self._fresh_pool().submit(run_spec, s): s for s in specs}
        order = {fut: k for k, fut in enumerate(futures)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=order.__getitem__):  # finished together: commit in submission order
                outcome = self._outcome(fut, futures[fut])
                if outcome is None:
                    todo.append(futures[fut])
                else:
                    yield futures[fut], outcome
        for spec in todo:  # isolation mode
            self._drop_pool()
            fut = self._fresh_pool().submit(run_spec, spec)
            wait([fut])
            yield spec, self._outcome(fut, spec) or failed_result(spec, "the worker process died while running it")
        if todo:
            self._drop_pool()

    @staticmethod
    def _outcome(fut: Future[dict[str, Any]], spec: EvalSpec) -> dict[str, Any] | None:
        """The result; None when the pool broke under it."""
        try:
            return fut.result()
        except BrokenProcessPool:
            return None
        except Exception as err:  # pickling problems and the like: data, not a crash of the run
            return failed_result(spec, f"{type(err).__name__}: {err}")

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            procs = list(getattr(self._pool, "_processes", {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:  # evaluations still running are abandoned (their results were not committed)
                if p.is_alive():
                    p.terminate()
            self._pool = None


def make_executor(workers: int | None) -> Executor:
    if workers == 0:
        return InProcess()
    return LocalPool(workers if workers is not None else (os.cpu_count() or 1))
