"""Training one cell on one task: an evaluation is a pure function of (cell, task, options,
hyperparameters, seed) and returns a result dict; it never raises once its configuration is valid.

Status: ``ok`` (the step budget or early stopping ended training), ``timeout`` (the wall-clock budget
did; the metrics so far are still reported), ``diverged`` (a non-finite or exploding loss or
gradient, with the step), ``failed`` (anything else, with the error).
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import ConfigError
from ..ir.cell import Cell
from ..ir.params import GATE_INITS, gate_biases
from ..model import Model
from ..tasks import make_task
from ..tasks.base import Batch, Task
from .optim import Adam, Flat, NesterovSGD, clip_flat


@dataclass(frozen=True)
class HP:
    """Hyperparameters, with checked ranges (``ConfigError`` names the key)."""

    lr: float = 1e-2
    hidden: int = 32
    batch: int = 32
    steps: int = 1000
    optimizer: str = "adam"
    momentum: float = 0.9
    clip: float = 1.0  # global-norm clipping; 0 turns it off
    input_noise: float = 0.0
    init_scale: float = 1.0
    gate_init: str = "default"  # "chrono": keep gates' biases ~ log U[1, chrono_tmax - 1] (init_params)
    chrono_tmax: float = 0.0  # chrono's T_max; 0 means the task's sequence length
    forget_bias: float = 0.0  # added to every keep gate's bias
    embed: int = 0  # embedding width for symbol inputs; 0 means hidden
    layers: int = 1
    bidirectional: bool = False
    eval_every: int = 100
    eval_size: int = 256  # sequences in the validation and test sets
    patience: int = 10  # evaluations without improvement before stopping
    time_budget: float = 0.0  # seconds; 0 means none
    backend: str = "cpu"  # or "reference", or "cuda" (numba-cuda on a GPU)
    dtype: str = "float32"


_RANGES: dict[str, tuple[Any, Any] | tuple[str, ...]] = {
    "lr": (1e-7, 10.0),
    "hidden": (1, 4096),
    "batch": (1, 4096),
    "steps": (1, 10_000_000),
    "optimizer": ("adam", "sgd"),
    "momentum": (0.0, 0.999),
    "clip": (0.0, 1e6),
    "input_noise": (0.0, 10.0),
    "init_scale": (1e-3, 100.0),
    "gate_init": GATE_INITS,
    "chrono_tmax": (0.0, 1e7),
    "forget_bias": (-50.0, 50.0),
    "embed": (0, 4096),
    "layers": (1, 16),
    "bidirectional": (False, True),
    "eval_every": (1, 10_000_000),
    "eval_size": (1, 100_000),
    "patience": (1, 1_000_000),
    "time_budget": (0.0, 1e7),
    "backend": ("cpu", "reference", "cuda"),
    "dtype": ("float32", "float64"),
}


def make_hp(**values: Any) -> HP:
    """An HP from keyword values (strings from the command line are converted); ``ConfigError``."""
    defaults = HP()
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _RANGES:
            raise ConfigError(f"unknown hyperparameter '{key}' (known: {', '.join(_RANGES)})")
        kind = type(getattr(defaults, key))
        rng = _RANGES[key]
        if kind is bool:
            if isinstance(value, bool):
                out[key] = value
                continue
            if str(value).lower() in ("true", "false", "1", "0"):
                out[key] = str(value).lower() in ("true", "1")
                continue
            raise ConfigError(f"hyperparameter '{key}' must be true or false (got {value!r})")
        try:
            if kind is str:
                v: Any = str(value)
            elif kind is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                v = int(value)
            else:
                v = float(value)
                if not math.isfinite(v):
                    raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(
                f"hyperparameter '{key}' must be {'an integer' if kind is int else 'a number'} (got {value!r})"
            ) from None
        if kind is str:
            if v not in rng:
                raise ConfigError(f"hyperparameter '{key}' must be one of {', '.join(map(str, rng))} (got {v!r})")
        elif not rng[0] <= v <= rng[1]:
            raise ConfigError(f"hyperparameter '{key}' must be in [{rng[0]}, {rng[1]}] (got {v!r})")
        out[key] = v
    return HP(**out)


def _split_tasks(name: str, options: dict[str, Any]) -> tuple[Task, Task, Task]:
    """Train, validation and test tasks: the task's own splits where it has them."""
    cls_options = dict(options)
    probe = make_task(name, **cls_options)
    if "split" in type(probe).OPTIONS:
        if "split" in options:
            raise ConfigError(f"task '{name}': option 'split' is chosen by the evaluation (train/valid/test)")
        return tuple(make_task(name, **cls_options, split=s) for s in ("train", "valid", "test"))  # type: ignore[return-value]
    return probe, probe, probe


def _fixed_set(task: Task, rng: np.random.Generator, size: int, batch: int) -> list[Batch]:
    return [task.sample(rng, min(batch, size - i)) for i in range(0, size, batch)]


def _score(model: Model, params: dict[str, np.ndarray], task: Task, batches: list[Batch]) -> dict[str, float]:
    """Scores over a fixed set, weighted by each batch's counted steps."""
    totals: dict[str, float] = {}
    weight = 0.0
    for b in batches:
        w = float(np.sum(b.mask))
        for k, v in task.score(model.predict(params, b.x), b).items():
            totals[k] = totals.get(k, 0.0) + w * float(v)
        weight += w
    out = {k: v / weight for k, v in totals.items()}
    if "perplexity" in out:  # exp of the mean loss, not the mean of per-batch perplexities
        out["perplexity"] = math.exp(out["loss"])
    return out


def check_config(cell: Cell, task: str, task_options: dict[str, Any] | None, hp: HP) -> None:
    """Raise ``ConfigError``/``ShapeError`` for a configuration ``evaluate`` cannot run."""
    train_task, _, _ = _split_tasks(task, dict(task_options or {}))
    _model(cell, train_task, hp)


def _model(cell: Cell, task: Task, hp: HP) -> Model:
    return Model(cell, task, hp.hidden, hp.embed or None, hp.backend, np.dtype(hp.dtype), hp.layers, hp.bidirectional)


def sequence_length(task: Task) -> int:
    """Steps in a batch of ``task`` (the longest of 16 sequences for variable-length tasks), from a
    private generator: the evaluation's own random streams are untouched."""
    return task.sample(np.random.default_rng(0), 16).steps


def one_blas_thread() -> Any:
    """A context in which every BLAS this process uses runs at one thread (``threadpool_limits``),
    SciPy's — the one the kernels' np.dot calls, which loads only with the first kernel — loaded
    first, so that the limit holds it too."""
    import scipy.linalg.cython_blas  # noqa: F401

    return threadpool_limits(1)


def evaluate(
    cell: Cell,
    task: str,
    task_options: dict[str, Any] | None = None,
    hp: HP | None = None,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    return_params: bool = False,
) -> dict[str, Any]:
    """Train ``cell`` on ``task`` and report validation and test metrics beside the baseline.

    With ``return_params`` the result also holds ``params``: the model's parameters (NumPy arrays,
    not JSON) that its metrics are for, the best validation's, or the initial ones when training
    stopped before any validation; absent when the evaluation failed.

    BLAS runs at one thread for the evaluation, wherever it runs (``cellsearch eval``, ``inspect``,
    a search's worker): BLAS's thread count can change the last bits of its products, so an
    evaluation gives the same numbers as the search's workers (which pin one thread); and BLAS threads
    spinning for a core on a busy machine made a small model's step ~10x slower. (The kernels' own
    GEMMs are single-threaded unless the cpu backend's ``threads`` option splits the batch.)"""
    with one_blas_thread():
        return _evaluate(cell, task, task_options, hp, seed, progress, return_params)


def _evaluate(
    cell: Cell,
    task: str,
    task_options: dict[str, Any] | None,
    hp: HP | None,
    seed: int,
    progress: Callable[[int, int, float], None] | None,
    return_params: bool,
) -> dict[str, Any]:
    hp = hp or HP()
    task_options = dict(task_options or {})
    train_task, valid_task, test_task = _split_tasks(task, task_options)  # ConfigError escapes: bad input
    model = _model(cell, train_task, hp)  # ConfigError/ShapeError escape too: bad input
    metric = train_task.metric
    higher = train_task.higher_is_better
    baseline = test_task.baseline()  # the chance level of the split the test metric is measured on
    chance_loss = float(baseline.get("loss") or math.inf)
    gates = gate_biases(cell)
    result: dict[str, Any] = {
        "status": "ok",
        "reason": "",
        "cell": cell.name,
        "cell_hash": cell.hash,
        "task": task,
        "task_options": train_task.options,
        "hp": {k: getattr(hp, k) for k in _RANGES},
        # the biases gate_init and forget_bias act on (the cell's keep gates and their input gates);
        # empty lists: the cell has none, and those options change nothing
        "gates": {
            "keep": [name for name, _ in gates.keep],
            "input": [name for name, _, _ in gates.input],
            "chrono_tmax": None,
        },
        "seed": seed,
        "metric": metric,
        "higher_is_better": higher,
        "baseline": baseline.get(metric),
        "baseline_loss": baseline.get("loss"),
        "valid": None,
        "test": None,
        "valid_loss": None,
        "test_loss": None,
        "steps": 0,
        "seconds": 0.0,
        "history": [],
    }
    t0 = time.perf_counter()
    streams = np.random.SeedSequence(seed).spawn(5)
    init_rng, data_rng, noise_rng, valid_rng, test_rng = (np.random.default_rng(s) for s in streams)
    try:
        tmax = hp.chrono_tmax
        if hp.gate_init == "chrono":
            tmax = tmax or float(sequence_length(train_task))
            result["gates"]["chrono_tmax"] = tmax
        # the parameters as views into one buffer, and each step's gradients gathered into another: the
        # clipping and the optimiser's step are one call each (``optim.Flat``), the same bits as per array
        flat = Flat(model.init(init_rng, hp.init_scale, hp.gate_init, tmax, hp.forget_bias))
        params, gbuf, parts = flat.params, np.empty_like(flat.buffer), None
        opt: Adam | NesterovSGD = Adam(hp.lr) if hp.optimizer == "adam" else NesterovSGD(hp.lr, hp.momentum)
        valid_set = _fixed_set(valid_task, valid_rng, hp.eval_size, hp.batch)
        best: dict[str, float] | None = None
        best_params = {k: v.copy() for k, v in params.items()}
        since_best = 0
        first_loss = None
        step = 0
        while step < hp.steps:
            batch = train_task.sample(data_rng, hp.batch)
            loss, grads = model.loss_and_grads(params, batch, train_task, hp.input_noise, noise_rng)
            step += 1
            first_loss = loss if first_loss is None else first_loss
            if parts is None:  # (the norm adds the arrays' squares in the gradients' order)
                parts = flat.parts(grads)
            g = flat.gather(grads, gbuf)
            norm = clip_flat(g, parts, hp.clip)
            # explosion: 1000x the first loss, or the chance-level loss when the first is worse than chance
            if not (math.isfinite(loss) and math.isfinite(norm)) or loss > 1e3 * max(min(first_loss, chance_loss), 1.0):
                result.update(status="diverged", reason=f"loss {loss:.4g}, gradient norm {norm:.4g} at step {step}")
                break
            opt.step_flat(flat.buffer, g)
            if progress is not None:
                progress(step, hp.steps, loss)
            last = step == hp.steps
            out_of_time = hp.time_budget > 0 and time.perf_counter() - t0 > hp.time_budget
            if step % hp.eval_every == 0 or last or out_of_time:
                scores = _score(model, params, valid_task, valid_set)
                result["history"].append({"step": step, "loss": loss, **{f"valid_{k}": v for k, v in scores.items()}})
                value = scores[metric]
                if not math.isfinite(value):
                    result.update(status="diverged", reason=f"validation {metric} is {value} at step {step}")
                    break
                if best is None or (value > best[metric] if higher else value < best[metric]):
                    best, since_best = scores, 0
                    best_params = {k: v.copy() for k, v in params.items()}
                else:
                    since_best += 1
                    if since_best >= hp.patience:
                        result["reason"] = f"early stop: no better validation {metric} in {hp.patience} evaluations"
                        break
            if out_of_time:
                result.update(status="timeout", reason=f"time budget of {hp.time_budget:g} s reached at step {step}")
                break
        result["steps"] = step
        if return_params:
            result["params"] = best_params
        if best is not None:
            test_set = _fixed_set(test_task, test_rng, hp.eval_size, hp.batch)
            test = _score(model, best_params, test_task, test_set)
            result.update(valid=best[metric], valid_loss=best["loss"], test=test[metric], test_loss=test["loss"])
    except Exception as err:  # an evaluation never raises: the failure is data
        result.update(status="failed", reason=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=5))
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result
