"""One evaluation as a pure function: (cell text, task, options, hyperparameters, seed) -> result dict.

``EvalSpec`` is what crosses to a worker (plain data, picklable, JSON-able); ``EvalSpec.key`` names
it in the store, so the same cell trained the same way is never trained twice, in any run.
``run_spec`` runs in the worker and never raises: a crash becomes a ``failed`` result.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class EvalSpec:
    cell_hash: str
    cell_text: str
    task: str
    task_options: dict[str, Any]  # all of the task's options, defaults filled in
    hp: dict[str, Any]  # all hyperparameters, defaults filled in (the budget is hp.steps and hp.time_budget)
    seed: int

    @property
    def key(self) -> str:
        ident = [self.cell_hash, self.task, self.task_options, self.hp, self.seed]
        return hashlib.blake2b(json.dumps(ident, sort_keys=True).encode(), digest_size=20).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed_result(spec: EvalSpec, reason: str, **extra: Any) -> dict[str, Any]:
    return {
        "status": "failed",
        "reason": reason,
        "cell_hash": spec.cell_hash,
        "task": spec.task,
        "seed": spec.seed,
        "metric": None,
        "valid": None,
        "test": None,
        "steps": 0,
        "history": [],
        "compile_seconds": 0.0,
        "train_seconds": 0.0,
        "worker": worker_id(),
        **extra,
    }


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_spec(spec: EvalSpec) -> dict[str, Any]:
    """Compile and train; the result carries ``compile_seconds``, ``train_seconds`` and ``worker``."""
    try:
        import numpy as np

        from ..backends import compile
        from ..dsl import parse
        from ..train.loop import evaluate, make_hp

        t0 = time.perf_counter()
        cell = parse(spec.cell_text, name=spec.cell_hash[:12])
        hp = make_hp(**spec.hp)
        compile(cell, hp.backend, np.dtype(hp.dtype))  # the cost a new cell pays before training
        compile_seconds = time.perf_counter() - t0
        with np.errstate(all="ignore"), warnings.catch_warnings():  # a diverging cell is data, not noise on stderr
            warnings.simplefilter("ignore")
            result = evaluate(cell, spec.task, spec.task_options, hp, spec.seed)
    except Exception as err:  # bad cell text or config: still data, never an exception out of a worker
        return failed_result(spec, f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=5))
    result["compile_seconds"] = round(compile_seconds, 4)
    result["train_seconds"] = result["seconds"]
    result["worker"] = worker_id()
    return result
