"""One evaluation as a pure function: (cell text, task, options, hyperparameters, seed) -> result dict.

``EvalSpec`` is what crosses to a worker (plain data, picklable, JSON-able); ``EvalSpec.key`` names
it in the store, so the same cell trained the same way is never trained twice, in any run.
``run_spec`` runs in the worker and never raises: a crash becomes a ``failed`` result.

``EvalSpec.diagnose`` (a run's ``diagnose = true``) also asks for the cell's diagnostics at
initialisation and after training (``result["diagnostics"]``, see
``cellsearch.inspect.diagnostics.evaluation_diagnostics``). It is not part of the key: the
diagnostics are computed after training, from the same seed on their own random stream, so training
and its result are the same with and without them. An evaluation stored without diagnostics and
asked for them later is trained again (the search does this) and only its diagnostics are added; the
stored result stays, and the diagnostics row records whether the re-run's result matched it.
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
    diagnose: bool = False  # also the cell's diagnostics; not part of the key (training is the same)

    @property
    def key(self) -> str:
        return evaluation_key(self.cell_hash, self.task, self.task_options, self.hp, self.seed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluation_key(cell_hash: str, task: str, task_options: dict[str, Any], hp: dict[str, Any], seed: int) -> str:
    """An evaluation's key in the store: a hash of what it trains (cell, task, options, hyperparameters, seed)."""
    ident = [cell_hash, task, task_options, hp, seed]
    return hashlib.blake2b(json.dumps(ident, sort_keys=True).encode(), digest_size=20).hexdigest()


def failed_result(spec: EvalSpec, reason: str, **extra: Any) -> dict[str, Any]:
    if spec.diagnose:  # asked for, and failed with it: stored, so that it is not asked for again
        extra.setdefault("diagnostics", {"status": "failed", "reason": f"the evaluation failed: {reason}"[:500],
                                         "initial": None, "trained": None, "seconds": 0.0})  # fmt: skip
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
    """Compile and train; the result carries ``compile_seconds``, ``train_seconds`` and ``worker``,
    and with ``spec.diagnose`` the ``diagnostics`` (their time in ``diagnostics["seconds"]``, not in
    ``train_seconds``)."""
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
            result = evaluate(cell, spec.task, spec.task_options, hp, spec.seed, return_params=spec.diagnose)
    except Exception as err:  # bad cell text or config: still data, never an exception out of a worker
        return failed_result(spec, f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=5))
    result["compile_seconds"] = round(compile_seconds, 4)
    result["train_seconds"] = result["seconds"]
    result["worker"] = worker_id()
    if spec.diagnose:
        from ..inspect.diagnostics import evaluation_diagnostics

        params = result.pop("params", None)  # the trained parameters: absent when training failed
        result["diagnostics"] = evaluation_diagnostics(cell, spec.task, spec.task_options, hp, spec.seed, params)
    return result
