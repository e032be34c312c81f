"""Evaluations on a Dask cluster: ``--dask tcp://host:8786`` (a running scheduler) or ``--dask local:N``
(a ``LocalCluster`` of N worker processes on this machine).

Every task is ``run_tracked(spec, tracking)`` submitted with ``pure=False``, one thread per worker
process, BLAS and Numba pinned to one thread (a worker plugin sets the environment before Numba loads;
each task pins Numba's threads again). Dask moves the work; the store keeps the truth: the worker
records an attempt with a heartbeat, commits its result as an idempotent upsert, and the driver
checks the attempts of its specs every ``heartbeat`` seconds. An attempt whose heartbeat stopped
for ``grace`` seconds (or whose process on this machine is gone) is marked ``lost`` and its spec is
queued again, ahead of the rest, up to ``max_attempts`` starts; then it is recorded as ``failed``
with the reason. Dask also re-runs a task whose worker died (``distributed.scheduler.allowed-failures``);
such a re-run is one more attempt in the history, not a duplicate: the first result committed wins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .evaluation import EvalSpec, failed_result
from .executor import GRACE, HEARTBEAT, MAX_ATTEMPTS, ONE_THREAD, Context, _Bound, pin_threads, run_tracked

if TYPE_CHECKING:
    from ..store.store import Store

log = logging.getLogger(__name__)


def parse_address(address: str) -> tuple[str, int | None]:
    """("local", N) for ``local:N``; (address, None) for a scheduler address. ``ConfigError`` otherwise."""
    if address.startswith("local:"):
        n = address.split(":", 1)[1]
        if not n.isdigit() or not 1 <= int(n) <= 1024:
            raise ConfigError(f"--dask {address}: give local:N with N worker processes, 1 to 1024 (e.g. local:2)")
        return "local", int(n)
    if "://" not in address or not address.split("://", 1)[1]:
        raise ConfigError(f"--dask {address}: give a scheduler address (tcp://host:8786) or local:N")
    return address, None


def check_shared_store(address: str, db_url: str) -> None:
    """``ConfigError`` when workers on other machines would have to write to an SQLite file (which
    cannot be shared between machines): those need PostgreSQL."""
    from ..store.db import normalise_url, sqlite_path

    kind, _ = parse_address(address)
    if kind == "local" or _is_this_machine(address):
        return
    path = sqlite_path(normalise_url(db_url))
    if path is not None or normalise_url(db_url).startswith("sqlite"):
        raise ConfigError(
            f"--dask {address}: workers on other machines cannot share the SQLite database {path or db_url}; "
            "use a PostgreSQL store: --db postgresql://user:password@host/dbname"
        )


def _is_this_machine(address: str) -> bool:
    host = address.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0", socket.gethostname()):
        return True
    try:
        return host.startswith("127.") or socket.gethostbyname(host) in ("127.0.0.1", socket.gethostbyname(socket.gethostname()))
    except OSError:
        return False


def setup_worker_environment() -> None:
    """One BLAS/Numba thread per worker process (before the evaluation code imports Numba)."""
    for k, v in ONE_THREAD.items():
        os.environ[k] = v


def dask_setup(worker: Any) -> None:
    """``dask worker --preload cellsearch.search.distributed``: what ``cellsearch worker`` passes."""
    setup_worker_environment()


def _pin_plugin() -> Any:
    from distributed.diagnostics.plugin import WorkerPlugin

    class PinThreads(WorkerPlugin):
        name = "cellsearch-pin-threads"

        def setup(self, worker: Any) -> None:
            setup_worker_environment()

    return PinThreads()


def _quiet_teardown() -> None:
    """On a LocalCluster's workers as the driver closes it: a worker's heartbeat can race the
    scheduler's shutdown and log a CommClosedError with its traceback (seen once in CI after a run
    that succeeded); nothing is lost then, so the workers' distributed loggers go quiet first."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL + 1)


def _ignore_sigint_plugin() -> Any:
    """For the workers of a LocalCluster: Ctrl-C in a terminal reaches the whole process group, and
    is the driver's to handle (it closes the cluster); the workers would print tracebacks."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class IgnoreSigint(WorkerPlugin):
        name = "cellsearch-ignore-sigint"

        def setup(self, worker: Any) -> None:
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreSigint()


@dataclass
class _Job:
    spec: EvalSpec
    order: int
    future: Any = None
    lost: int = 0  # attempts that ended without a result (reaped, or their task erred)
    reasons: list[str] = field(default_factory=list)


class DaskExecutor(_Bound):
    def __init__(
        self,
        address: str,
        store: Store | None = None,
        heartbeat: float = HEARTBEAT,
        grace: float = GRACE,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        super().__init__(store, heartbeat, grace, max_attempts)
        kind, n = parse_address(address)
        if store is not None:
            check_shared_store(address, str(store.engine.url))
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError("--dask needs Dask's distributed package: pip install dask distributed") from None
        # the workers pin themselves (the plugin, and pin_threads at each task); this process's
        # environment is left alone: Numba refuses a NUMBA_NUM_THREADS that changes after its threads started
        self.address = address
        self._cluster: Any = None
        try:
            if kind == "local":
                assert n is not None
                self._cluster = LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
                self.client = Client(self._cluster)
                self.name = f"Dask LocalCluster of {n} worker{'s' if n > 1 else ''}"
            else:
                self.client = Client(address, timeout="20s")
                self.name = f"Dask cluster at {address}"
        except (OSError, TimeoutError) as err:
            if self._cluster is not None:
                self._cluster.close()
            raise ConfigError(f"--dask {address}: cannot connect to the scheduler ({type(err).__name__}: {err})") from None
        self.client.register_plugin(_pin_plugin(), name="cellsearch-pin-threads")
        if self._cluster is not None:
            self.client.register_plugin(_ignore_sigint_plugin(), name="cellsearch-ignore-sigint")

    def workers(self) -> dict[str, Any]:
        """The cluster's workers (address -> info, with ``pid``)."""
        return dict(self.client.scheduler_info()["workers"])

    def _submit(self, job: _Job, tracking: Any, done: queue.Queue[Any], urgent: bool) -> None:
        key = f"cellsearch-eval-{job.spec.key[:16]}-{uuid.uuid4().hex[:8]}"
        fut = self.client.submit(run_tracked, job.spec, tracking, key=key, pure=False, priority=1 if urgent else 0)
        job.future = fut
        fut.add_done_callback(done.put)

    def run(self, specs: Sequence[EvalSpec], context: Context | None = None) -> Iterator[tuple[EvalSpec, dict[str, Any]]]:
        tracking = self.tracking(context)
        if tracking is not None:
            self._reap([s.key for s in specs])
        jobs = {s.key: _Job(s, k) for k, s in enumerate(specs)}
        by_future: dict[str, _Job] = {}
        done: queue.Queue[Any] = queue.Queue()
        for job in jobs.values():
            self._submit(job, tracking, done, urgent=False)
            by_future[job.future.key] = job
        open_keys = set(jobs)
        next_check = time.monotonic() + self.heartbeat
        try:
            while open_keys:
                try:
                    fut = done.get(timeout=max(0.05, min(self.heartbeat, next_check - time.monotonic())))
                except queue.Empty:
                    fut = None
                owner = by_future.get(fut.key) if fut is not None else None
                if owner is not None and owner.spec.key in open_keys and owner.future is fut:
                    # else a superseded attempt (the spec was queued again): its result, if any, is in the store
                    outcome = self._outcome(fut, owner, tracking, done)
                    if outcome is not None:
                        open_keys.discard(owner.spec.key)
                        yield owner.spec, outcome
                    else:
                        by_future[owner.future.key] = owner
                if tracking is not None and time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.heartbeat
                    for spec, result in self._check_liveness(jobs, open_keys, tracking, done, by_future):
                        open_keys.discard(spec.key)
                        yield spec, result
        finally:
            left = [jobs[k].future for k in open_keys if jobs[k].future is not None]
            if left:
                self.client.cancel(left)
            self._close_superseded([k for k in jobs if k not in open_keys])

    def _close_superseded(self, finished: list[str]) -> None:
        """Attempts still marked running for evaluations that finished through another attempt: Dask
        may itself re-run a task whose worker died while the driver queued it again, and a cancelled
        duplicate never reports back; its row is closed as ``superseded``."""
        if self.store is None or not finished:
            return
        try:
            ids = [a.id for a in self.store.attempts(finished) if a.status == "running"]
            self.store.end_attempts(ids, "superseded", "another attempt of this evaluation finished it")
        except Exception as err:
            log.warning("cannot close superseded attempts: %s", err)

    def _outcome(self, fut: Any, job: _Job, tracking: Any, done: queue.Queue[Any]) -> dict[str, Any] | None:
        """The result, or None after queueing the spec again (its task erred: a worker died under it
        too often for Dask, the task could not be unpickled, ...), or a ``failed`` result when its
        attempts are spent."""
        if fut.status == "finished":
            try:
                return dict(fut.result())
            except Exception as err:  # the result could not be fetched (its worker died just now)
                reason = f"{type(err).__name__}: {err}"
        elif fut.status == "cancelled":
            reason = "its Dask task was cancelled (the scheduler restarted or lost it)"
        else:
            exc = fut.exception()
            reason = f"{type(exc).__name__}: {exc}"
        return self._retry_or_fail(job, reason, tracking, done)

    def _retry_or_fail(self, job: _Job, reason: str, tracking: Any, done: queue.Queue[Any]) -> dict[str, Any] | None:
        job.lost += 1
        job.reasons.append(reason)
        if job.lost >= self.max_attempts:
            self._end_attempts(job, reason)
            return failed_result(job.spec, f"gave up after {job.lost} attempts: {'; '.join(job.reasons)}"[:2000])
        log.warning(
            "evaluation %s: %s; queued again (attempt %d of %d)", job.spec.key[:12], reason, job.lost + 1, self.max_attempts
        )
        if job.future is not None and not job.future.done():
            self.client.cancel([job.future])
        self._submit(job, tracking, done, urgent=True)
        return None

    def _end_attempts(self, job: _Job, reason: str) -> None:
        if self.store is None:
            return
        try:
            ids = [a.id for a in self.store.attempts([job.spec.key]) if a.status in ("running", "lost")]
            self.store.end_attempts(ids, "failed", f"gave up: {reason}"[:2000])
        except Exception as err:
            log.warning("cannot mark failed attempts: %s", err)

    def _check_liveness(
        self, jobs: dict[str, _Job], open_keys: set[str], tracking: Any, done: queue.Queue[Any], by_future: dict[str, _Job]
    ) -> Iterator[tuple[EvalSpec, dict[str, Any]]]:
        """Reap this batch's attempts that stopped heartbeating; queue their specs again."""
        assert self.store is not None
        try:
            lost = self.store.reap(self.grace, list(open_keys))
            running = {a.key for a in self.store.attempts(list({a.key for a in lost})) if a.status == "running"}
        except Exception as err:  # the database is away for a moment: check again next time
            log.warning("cannot check the workers' heartbeats: %s", err)
            return
        for att in lost:
            job = jobs.get(att.key)
            if job is None or att.key not in open_keys:
                continue
            if att.key in running:  # Dask has started it again elsewhere already
                job.lost += 1
                job.reasons.append(att.reason)
                continue
            failed = self._retry_or_fail(job, att.reason, tracking, done)
            if failed is not None:
                if job.future is not None and not job.future.done():
                    self.client.cancel([job.future])
                yield job.spec, failed
            else:
                by_future[job.future.key] = job

    def close(self) -> None:
        try:
            if self._cluster is not None:  # our own workers: their shutdown's races are not the user's errors
                with contextlib.suppress(Exception):
                    self.client.run(_quiet_teardown)
            self.client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None


__all__ = ["DaskExecutor", "dask_setup", "parse_address", "pin_threads"]
