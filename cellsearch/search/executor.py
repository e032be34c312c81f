"""Executors run evaluation specs and hand back results as they finish.

One interface, ``run(specs, context=None) -> Iterator[(spec, result)]`` and ``close()``:

- ``InProcess`` runs them one by one in this process (``--workers 0``, for debugging and tests).
- ``LocalPool`` runs them in N spawned worker processes with one thread each (BLAS and Numba), so N
  evaluations use N cores without fighting. A worker that dies (a segfault, the OOM killer) breaks
  the pool: the pool is rebuilt and the unfinished specs are run again one at a time, and a spec that
  was running in two such crashes is recorded as ``failed`` with the reason, never lost.
- ``DaskExecutor`` (``cellsearch.search.distributed``) runs them on a Dask cluster: ``--dask
  tcp://host:8786`` or ``--dask local:N`` (a ``LocalCluster`` of N one-thread worker processes).

Bound to a store (``store=``) and given the run's ``context``, the workers record each start of an
evaluation as an attempt with a heartbeat and commit their own results (idempotent upserts on the
evaluation's key), so a result is in the store the moment it exists and exactly once, whoever writes
it; the driver's own ``add_evaluation`` of the same result is then a no-op.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any, Protocol

from .evaluation import EvalSpec, failed_result, run_spec, worker_id

if TYPE_CHECKING:
    from ..store.store import Store

log = logging.getLogger(__name__)

ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}
_ONE_THREAD = ONE_THREAD  # the old name

HEARTBEAT = 5.0  # seconds between a running evaluation's heartbeats
GRACE = 60.0  # an attempt whose heartbeat is older than this is lost (its worker died or hangs)
MAX_ATTEMPTS = 3  # starts of one evaluation before it is recorded as failed


@dataclass(frozen=True)
class Context:
    """What the search tells the executor about the specs of one ``run`` call: the rows they belong to."""

    run_id: int | None
    generation: int | None


@dataclass(frozen=True)
class Tracking:
    """Crosses to the worker with each spec: where to record the attempt and (``write``) the result."""

    url: str
    run_id: int | None
    generation: int | None
    write: bool
    heartbeat: float


class Executor(Protocol):
    name: str

    def run(self, specs: Sequence[EvalSpec], context: Context | None = None) -> Iterator[tuple[EvalSpec, dict[str, Any]]]: ...

    def close(self) -> None: ...


# ---- the worker side ------------------------------------------------------------------------------

_pinned = threading.local()


def pin_threads() -> None:
    """One thread for BLAS and Numba in this process (env vars for what is not loaded yet; Numba's
    thread count is per calling thread, so this runs at the start of every task)."""
    for k, v in ONE_THREAD.items():
        os.environ.setdefault(k, v)
    if getattr(_pinned, "done", False):
        return
    try:
        import numba
        from threadpoolctl import threadpool_limits

        numba.set_num_threads(1)
        threadpool_limits(1)
    except Exception as err:  # never a reason to lose an evaluation
        log.debug("could not pin threads: %s", err)
    _pinned.done = True


_STORES: dict[str, Store] = {}
_STORES_LOCK = threading.Lock()


def _worker_store(url: str) -> Store:
    from ..store.store import Store

    with _STORES_LOCK:
        if url not in _STORES:
            _STORES[url] = Store(url, create=False)
        return _STORES[url]


class _Heartbeat:
    def __init__(self, store: Store, attempt_id: int, every: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(store, attempt_id, every), daemon=True, name="cellsearch-heartbeat"
        )
        self._thread.start()

    def _loop(self, store: Store, attempt_id: int, every: float) -> None:
        while not self._stop.wait(every):
            try:
                store.beat(attempt_id)
            except Exception as err:  # the database is away for a moment: the next beat may get through
                log.warning("heartbeat of attempt %s failed: %s", attempt_id, err)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def run_tracked(spec: EvalSpec, tracking: Tracking | None, pin: bool = True) -> dict[str, Any]:
    """``run_spec`` with liveness: an attempt row, a heartbeat while it trains, then the result
    committed by this worker (an upsert) together with the attempt's end. Never raises: when the
    store cannot be reached the result still goes back to the driver, which commits it. ``pin``: one
    BLAS/Numba thread (in a worker process; not in the driver's own process)."""
    if pin:
        pin_threads()
    if tracking is None:
        return run_spec(spec)
    spec_dict = spec.as_dict()
    store: Store | None = None
    attempt: int | None = None
    try:
        store = _worker_store(tracking.url)
        attempt = store.start_attempt(spec.key, spec_dict, worker_id(), tracking.run_id, tracking.generation)
    except Exception as err:
        log.warning("cannot record the attempt of %s in the store: %s", spec.key[:12], err)
    beat = _Heartbeat(store, attempt, tracking.heartbeat) if store is not None and attempt is not None else None
    try:
        result = run_spec(spec)
    finally:
        if beat is not None:
            beat.stop()
    result["attempt_id"] = attempt
    if store is not None and attempt is not None:
        try:
            stored = store.finish_attempt(
                attempt, spec.key, spec_dict, result, tracking.run_id, tracking.generation, write=tracking.write
            )
            result["stored_by_worker"] = bool(stored)
        except Exception as err:
            log.warning("cannot commit %s from the worker (the driver will): %s", spec.key[:12], err)
    return result


# ---- the driver side ------------------------------------------------------------------------------


class _Bound:
    """What executors share: the driver's store handle for tracking, and the liveness settings."""

    def __init__(self, store: Store | None, heartbeat: float, grace: float, max_attempts: int) -> None:
        self.store = store
        self.heartbeat = heartbeat
        self.grace = grace
        self.max_attempts = max(1, max_attempts)

    def tracking(self, context: Context | None) -> Tracking | None:
        """Tracking for the workers; None without a store or for an in-memory SQLite database (which
        no other connection can see)."""
        if self.store is None:
            return None
        from ..store.db import full_url, sqlite_path

        url = full_url(self.store.engine)
        if url.startswith("sqlite") and sqlite_path(url) is None:
            return None
        run_id = context.run_id if context else None
        generation = context.generation if context else None
        return Tracking(url, run_id, generation, write=context is not None, heartbeat=self.heartbeat)

    def _reap(self, keys: list[str]) -> list[Any]:
        """Mark the attempts of these keys lost whose heartbeat stopped or whose local process is gone
        (an earlier driver's workers, a broken pool's); the attempts so marked."""
        if self.store is None or not keys:
            return []
        try:
            return self.store.reap(self.grace, keys)
        except Exception as err:
            log.warning("cannot mark lost attempts: %s", err)
            return []


class InProcess(_Bound):
    name = "in-process"

    def __init__(
        self, store: Store | None = None, heartbeat: float = HEARTBEAT, grace: float = GRACE, max_attempts: int = MAX_ATTEMPTS
    ) -> None:
        super().__init__(store, heartbeat, grace, max_attempts)

    def run(self, specs: Sequence[EvalSpec], context: Context | None = None) -> Iterator[tuple[EvalSpec, dict[str, Any]]]:
        tracking = self.tracking(context)
        if tracking is not None:
            self._reap([s.key for s in specs])
        for spec in specs:
            yield spec, (run_tracked(spec, tracking, pin=False) if tracking else run_spec(spec))

    def close(self) -> None:
        pass


def _init_worker() -> None:
    for k, v in ONE_THREAD.items():  # before this worker imports Numba or SciPy's BLAS
        os.environ[k] = v
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    parent = os.getppid()

    def orphaned() -> None:  # the driver was SIGKILLed: go too (its attempt is reaped on the next run)
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=orphaned, daemon=True, name="cellsearch-orphan-watch").start()


#: seconds between the main thread's looks at its signals while it waits for a worker's result
SIGNAL_POLL = 0.25


def _wait_first(pending: set[Future[Any]]) -> tuple[set[Future[Any]], set[Future[Any]]]:
    """``wait(pending, return_when=FIRST_COMPLETED)`` in short timed waits: a SIGINT that the kernel hands to
    another thread of this process (the store's heartbeat, the progress display) only sets Python's flag, and
    an untimed wait would not look at it until a result came — never, if a worker hangs. A timed wait
    returns to the interpreter, which raises KeyboardInterrupt then."""
    while True:
        done, rest = wait(pending, timeout=SIGNAL_POLL, return_when=FIRST_COMPLETED)
        if done:
            return done, rest


class LocalPool(_Bound):
    def __init__(
        self,
        workers: int,
        store: Store | None = None,
        heartbeat: float = HEARTBEAT,
        grace: float = GRACE,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        super().__init__(store, heartbeat, grace, max_attempts)
        self.workers = max(1, workers)
        self.name = f"{self.workers} local worker{'s' if self.workers > 1 else ''}"
        # the workers pin themselves (_init_worker, pin_threads); this process's environment is left
        # alone: Numba refuses a NUMBA_NUM_THREADS that changes after its threads started
        self._pool: ProcessPoolExecutor | None = None

    def _fresh_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=_init_worker)
        return self._pool

    def run(self, specs: Sequence[EvalSpec], context: Context | None = None) -> Iterator[tuple[EvalSpec, dict[str, Any]]]:
        """Results in the order they finish. After a worker dies, the unfinished specs run one at a
        time, so the next death names its spec exactly (recorded as ``failed``)."""
        tracking = self.tracking(context)
        if tracking is not None:
            self._reap([s.key for s in specs])
        todo: list[EvalSpec] = []
        futures = {self._fresh_pool().submit(run_tracked, s, tracking): s for s in specs}
        order = {fut: k for k, fut in enumerate(futures)}
        pending = set(futures)
        while pending:
            done, pending = _wait_first(pending)
            for fut in sorted(done, key=order.__getitem__):  # finished together: commit in submission order
                outcome = self._outcome(fut, futures[fut])
                if outcome is None:
                    todo.append(futures[fut])
                else:
                    yield futures[fut], outcome
        if todo:
            self._drop_pool()
            self._reap([s.key for s in todo])
        for spec in todo:  # isolation mode
            self._drop_pool()
            fut = self._fresh_pool().submit(run_tracked, spec, tracking)
            _wait_first({fut})
            outcome = self._outcome(fut, spec)
            if outcome is None:
                self._drop_pool()
                lost = self._reap([spec.key])
                reason = "the worker process died while running it"
                self._end([a.id for a in lost], reason)
                outcome = failed_result(spec, reason)
            yield spec, outcome
        if todo:
            self._drop_pool()

    def _end(self, ids: list[int], reason: str) -> None:
        if self.store is not None and ids:
            try:
                self.store.end_attempts(ids, "failed", reason)
            except Exception as err:
                log.warning("cannot mark failed attempts: %s", err)

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
            for p in procs:
                p.join(timeout=5)
            self._pool = None


def make_executor(
    workers: int | None,
    dask: str | None = None,
    store: Store | None = None,
    heartbeat: float = HEARTBEAT,
    grace: float = GRACE,
    max_attempts: int = MAX_ATTEMPTS,
) -> Executor:
    """The local pool (``workers`` processes; 0: this process; None: one per core), or a Dask cluster
    when ``dask`` is an address (``tcp://host:8786``) or ``local:N``."""
    if dask is not None:
        from .distributed import DaskExecutor

        return DaskExecutor(dask, store=store, heartbeat=heartbeat, grace=grace, max_attempts=max_attempts)
    if workers == 0:
        return InProcess(store, heartbeat, grace, max_attempts)
    return LocalPool(workers if workers is not None else (os.cpu_count() or 1), store, heartbeat, grace, max_attempts)
