"""Looking inside a cell on a batch of a task's data: gradient flow across time lags, the step
Jacobian's spectrum, gate statistics and state trajectories.

**Gradient flow.** The loss at step ``t`` is a surrogate, the same for every cell and every step:
``L_t = sum_s <r_s, s_t>``, a fixed random projection of every state after step ``t`` (``r`` drawn
once per sequence, unit norm over all states together, so ``|dL_t/ds_t| = 1`` at lag 0). The task's
own loss would do for the steps it counts, but most memory tasks count one step only, and a
surrogate measures the recurrence itself, not the head. The gradient at lag ``k`` is
``g_k = dL_t/ds_{t-k}``, the states' gradient that backpropagation through time carries into step
``t-k+1`` (each state after step ``t-k`` as the next step reads it). It is computed with nothing but
a backend's ``forward``/``backward``, by one-step vector-Jacobian products: step ``t-k+1`` is run
alone from the recorded ``s_{t-k}``, and its backward with ``d_state_T = g_{k-1}`` returns ``g_k`` as
the initial states' gradient. All positions and sequences go through together in the batch
dimension, so ``max_lag`` lags cost ``max_lag`` one-step forward and backward calls, on any backend
(``reference``, ``cpu``). The curves are the mean over positions and sequences of ``|g_k|``, per
state and over all states together; the decay rate is the least-squares slope of ``-ln |g_k|``
against ``k``; the reach is the first lag where ``|g_k|`` falls below ``1e-3 |g_0|``.

**Jacobian spectrum.** ``J_t = d s_t / d s_{t-1}`` over all states together (``S*H`` square), dense,
from ``S*H`` one-step vector-Jacobian products on the reference backend, at up to 32 steps of the
first sequence: its spectral radius and largest singular value.

**Gates and states.** Every sigmoid node's activations over the whole batch (all steps, sequences
and units): mean, and the fractions below 0.05 and above 0.95 (saturated shut, saturated open); each
state's range; and each state's per-unit trace over the first sequence (the heatmap).

Everything runs in float64 (parameters from a float32 training run are cast exactly).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ..backends import compile
from ..backends.reference import ReferenceKernel
from ..errors import ConfigError
from ..ir.cell import Cell
from ..ir.layout import format_number, layout
from ..ir.ops import OP_INFO, Op
from ..ir.params import param_names
from ..model import Model
from ..tasks import make_task
from ..tasks.base import Task
from ..train.loop import HP, sequence_length

Array = np.ndarray

#: the reach threshold: |g_k| below this fraction of |g_0|
REACH = 1e-3
#: gate saturation thresholds
LOW, HIGH = 0.05, 0.95
#: the dense Jacobian is computed up to this many state numbers (S*H)
MAX_DENSE = 1024
#: steps of the first sequence at which the Jacobian is taken
JACOBIAN_STEPS = 32
#: positions (loss steps) the gradient flow averages over
POSITIONS = 8


# ---- gradient flow ------------------------------------------------------------------------------


def with_initial(states: Mapping[str, Array], state0: Mapping[str, Array]) -> dict[str, Array]:
    """Each state over time with its initial value first: ``out[s][j + 1]`` is ``s`` after step ``j``
    (``out[s][0]`` before step 0), ``[T + 1, B, H]``."""
    return {s: np.concatenate([np.asarray(state0[s])[None], np.asarray(v)]) for s, v in states.items()}


def lag_gradients(
    kernel: Any,
    params: Mapping[str, Array],
    x: Array,
    full: Mapping[str, Array],
    positions: list[int],
    r: Mapping[str, Array],
    max_lag: int,
    keep: bool = False,
) -> tuple[dict[str, Array], list[dict[str, Array]]]:
    """``g_k = dL_t/ds_{t-k}`` for ``L_t = sum_s <r[s], s_t>``, every ``t`` in ``positions`` and
    ``k = 0..max_lag``, by chained one-step backward passes through ``kernel``.

    ``x`` is the cell's input ``[T, B, I]``; ``full`` the states with their initial values first
    (:func:`with_initial`); ``r[s]`` is ``[P, B, H]``. Returns each state's gradient norms
    ``[max_lag + 1, P, B]`` and, with ``keep``, the gradients themselves (``[P, B, H]`` per state, one
    dict per lag)."""
    pos = np.asarray(positions, dtype=np.int64)
    if max_lag > int(pos.min()) + 1:
        raise ConfigError(f"max_lag {max_lag} reaches before the first step from position {int(pos.min())}")
    states = list(full)
    P, B = len(pos), x.shape[1]
    g = {s: np.asarray(r[s], dtype=np.float64).reshape(P * B, -1) for s in states}
    norms = {s: np.zeros((max_lag + 1, P, B)) for s in states}
    kept: list[dict[str, Array]] = []

    def record(k: int) -> None:
        for s in states:
            norms[s][k] = np.linalg.norm(g[s], axis=1).reshape(P, B)
        if keep:
            kept.append({s: g[s].reshape(P, B, -1).copy() for s in states})

    record(0)
    for k in range(1, max_lag + 1):
        step = pos - k + 1  # the step that maps s_{t-k} to s_{t-k+1}
        xs = x[step].reshape(1, P * B, -1)
        s0 = {s: full[s][step].reshape(P * B, -1) for s in states}  # full[s][step] is s after step t-k
        fwd = kernel.forward(params, xs, s0)
        g = kernel.backward(params, fwd.tape, None, g, grad_x=False).state0
        record(k)
    return norms, kept


def fit_decay(curve: Array) -> float:
    """The least-squares slope of ``-ln curve[k]`` against ``k`` over the lags where it is positive
    (nepers per step; NaN with fewer than two such lags)."""
    k = np.arange(len(curve))
    ok = np.isfinite(curve) & (curve > 0)
    if ok.sum() < 2:
        return math.nan
    slope = np.polyfit(k[ok], np.log(curve[ok]), 1)[0]
    return float(-slope)


def reach(curve: Array, threshold: float = REACH) -> int:
    """The first lag where ``curve`` falls below ``threshold * curve[0]``; ``len(curve)`` (one past
    the last lag measured) when it never does."""
    below = np.nonzero(~(curve >= threshold * curve[0]))[0]
    return int(below[0]) if len(below) else len(curve)


# ---- Jacobians ----------------------------------------------------------------------------------


def step_jacobians(
    kernel: Any, params: Mapping[str, Array], x: Array, full: Mapping[str, Array], steps: list[int], seq: int = 0
) -> Array:
    """``J[n] = d s_t / d s_{t-1}`` at ``t = steps[n]`` for sequence ``seq``, all states stacked in
    ``full``'s order, ``[len(steps), S*H, S*H]``: row ``j`` is the backward of ``e_j``."""
    states = list(full)
    H = full[states[0]].shape[-1]
    SH = len(states) * H
    n = len(steps)
    st = np.repeat(np.asarray(steps, dtype=np.int64), SH)
    xs = x[st, seq][None]  # [1, n*SH, I]
    s0 = {s: full[s][st, seq] for s in states}  # s after step t-1
    eye = np.tile(np.eye(SH), (n, 1))  # [n*SH, SH]
    d = {s: np.ascontiguousarray(eye[:, i * H : (i + 1) * H]) for i, s in enumerate(states)}
    fwd = kernel.forward(params, xs, s0)
    g = kernel.backward(params, fwd.tape, None, d, grad_x=False).state0
    return np.concatenate([g[s] for s in states], axis=1).reshape(n, SH, SH)


# ---- gates --------------------------------------------------------------------------------------


def gate_names(cell: Cell) -> dict[int, str]:
    """Each sigmoid node -> a readable, unique name: its line's name (``i``, ``f``, ``o``), else the
    parameter-name prefix of the ``linear`` inside it (``h.1``), else its expression (``sigmoid(s - 1)``)."""
    lay = layout(cell)
    names = lay.names
    pnames = param_names(cell)
    out: dict[int, str] = {}
    for k, node in enumerate(cell.nodes):
        if node.op is not Op.SIGMOID:
            continue
        if k in names:
            name = names[k]
        else:
            bias = _first_bias(cell, node.args[0], names, pnames)
            name = (
                bias[: -len(".b")]
                if bias and bias.endswith(".b")
                else f"sigmoid({_render(cell, node.args[0], names, lay.aliases)})"
            )
        base, j = name, 2
        while name in out.values():
            name, j = f"{base}#{j}", j + 1
        out[k] = name
    return out


def _first_bias(cell: Cell, k: int, names: dict[int, str], pnames: Mapping[int, Any]) -> str | None:
    """The bias name of the first ``linear`` in node ``k``'s inline expression (not crossing named lines)."""
    node = cell.nodes[k]
    if k in names:
        return None
    if node.op is Op.LINEAR:
        return str(pnames[k].bias)
    for a in node.args:
        found = _first_bias(cell, a, names, pnames)
        if found:
            return found
    return None


def _render(cell: Cell, k: int, names: dict[int, str], aliases: dict[str, str]) -> str:
    node = cell.nodes[k]
    if k in names:
        return names[k]
    if node.op is Op.INPUT:
        return "x"
    if node.op is Op.STATE:
        name = str(node.attr("name"))
        return aliases.get(name, name)
    if node.op is Op.CONST:
        return format_number(node.attr("value"))
    args = [_render(cell, a, names, aliases) for a in node.args]
    sym = OP_INFO[node.op].dsl
    if node.op in (Op.ADD, Op.SUB, Op.MUL):
        return f"{args[0]} {sym} {args[1]}"
    return f"{sym}({', '.join(args)})"


def gate_stats(values: Array) -> dict[str, float]:
    """Mean and the fractions below ``LOW`` and above ``HIGH`` of a gate's activations."""
    v = np.asarray(values)
    return {"mean": float(v.mean()), "low": float((v < LOW).mean()), "high": float((v > HIGH).mean())}


# ---- the whole diagnosis ------------------------------------------------------------------------


def _task(name: str, options: Mapping[str, Any]) -> Task:
    """The task, its validation split where it has splits."""
    probe = make_task(name, **options)
    if "split" in type(probe).OPTIONS and "split" not in options:
        return make_task(name, **options, split="valid")
    return probe


def _setup(cell: Cell, task: str, task_options: Mapping[str, Any] | None, hp: HP) -> tuple[Task, Model]:
    if hp.layers != 1 or hp.bidirectional:
        raise ConfigError(f"inspect looks at one unidirectional layer (got layers={hp.layers}, bidirectional={hp.bidirectional})")
    the_task = _task(task, dict(task_options or {}))
    return the_task, Model(cell, the_task, hp.hidden, hp.embed or None, hp.backend, np.dtype(hp.dtype))


def check_config(cell: Cell, task: str, task_options: Mapping[str, Any] | None, hp: HP) -> None:
    """Raise ``ConfigError``/``ShapeError`` for a configuration :func:`diagnose` cannot run."""
    _setup(cell, task, task_options, hp)


def _spread(first: int, last: int, n: int) -> list[int]:
    """Up to ``n`` evenly spaced integers from ``first`` to ``last`` (both included)."""
    return [int(v) for v in np.unique(np.round(np.linspace(first, last, min(n, last - first + 1))))]


def _round(v: float, digits: int = 6) -> float | None:
    """A float for JSON: NaN and infinities become None; ``digits`` significant digits."""
    if not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


def diagnose(
    cell: Cell,
    task: str,
    task_options: Mapping[str, Any] | None = None,
    hp: HP | None = None,
    params: Mapping[str, Array] | None = None,
    seed: int = 0,
    max_lag: int | None = None,
    *,
    trajectory: bool = True,
) -> dict[str, Any]:
    """Diagnostics of ``cell`` on a batch (``hp.batch`` sequences) of ``task``'s data, as a JSON-able dict.

    ``params`` are a model's parameters (``Model``'s names: ``cell.*``, ``in.*``, ``out.*``, as
    ``evaluate(..., return_params=True)`` returns them); without them the model starts as
    ``evaluate`` with this ``seed`` and ``hp`` starts it (``gate_init``, ``forget_bias`` included).
    ``max_lag`` defaults to the sequence length - 1, at most 200. The gradient flow runs on
    ``hp.backend``, the rest on the reference interpreter, all in float64. ``trajectory=False``
    leaves out the per-unit state traces (the bulk of the dict). ``ConfigError`` for bad input.
    """
    t_start = time.perf_counter()
    hp = hp or HP()
    the_task, model = _setup(cell, task, task_options, hp)
    streams = np.random.SeedSequence(seed).spawn(6)  # evaluate's five streams, then this one's
    trained = params is not None
    if params is None:
        tmax = hp.chrono_tmax
        if hp.gate_init == "chrono":
            tmax = tmax or float(sequence_length(the_task))
        params = model.init(np.random.default_rng(streams[0]), hp.init_scale, hp.gate_init, tmax, hp.forget_bias)
    else:
        expected = set(model.init(np.random.default_rng(0)))
        if set(params) != expected:
            missing, extra = sorted(expected - set(params)), sorted(set(params) - expected)
            raise ConfigError(f"params do not fit this model (missing {missing}, unknown {extra})")
    rng = np.random.default_rng(streams[5])
    x = np.asarray(model.encode(dict(params), the_task.sample(rng, hp.batch).x), dtype=np.float64)
    cp = {k[len("cell.") :]: np.asarray(v, dtype=np.float64) for k, v in params.items() if k.startswith("cell.")}
    T = x.shape[0]
    K = min(T - 1, 200) if max_lag is None else int(max_lag)
    if not 0 <= K <= T:
        raise ConfigError(f"max_lag must be in [0, {T}] for sequences of {T} steps (got {max_lag})")
    kernel = ReferenceKernel(cell, np.float64) if hp.backend == "reference" else compile(cell, hp.backend, np.float64)
    kernel.forward(cp, x[:1, :1])  # loads the backend's BLAS, so that the limit below reaches it
    with threadpool_limits(1):  # one step of a small batch at a time: BLAS threads would only fight
        out = _measure(cell, cp, x, kernel, K, rng, trajectory)
    head = {
        "cell": cell.name,
        "cell_hash": cell.hash,
        "task": the_task.name,
        "task_options": the_task.options,
        "hp": dataclasses.asdict(hp),
        "seed": seed,
        "trained": trained,
        "steps": T,
        "max_lag": K,
    }
    return {**head, **out, "seconds": round(time.perf_counter() - t_start, 3)}


def _measure(
    cell: Cell, cp: dict[str, Array], x: Array, kernel: Any, K: int, rng: np.random.Generator, trajectory: bool
) -> dict[str, Any]:
    """Every measurement on the cell's input ``x``: the gradient flow through ``kernel``, the rest on
    the reference interpreter."""
    T, B, _ = x.shape
    ref = ReferenceKernel(cell, np.float64)
    fwd = ref.forward(cp, x)
    values = fwd.tape.values
    states = {s: np.stack([np.asarray(values[t][u]) for t in range(T)]) for s, u in zip(cell.states, cell.updates, strict=True)}
    full = with_initial(states, fwd.tape.state0)
    H = fwd.tape.hidden_size

    # gradient flow, on the chosen backend
    positions = _spread(max(K - 1, 0), T - 1, POSITIONS)
    raw = {s: rng.normal(size=(len(positions), B, H)) for s in cell.states}
    scale = np.sqrt(sum(np.sum(v**2, axis=2) for v in raw.values()))[:, :, None]
    norms, _ = lag_gradients(kernel, cp, x, full, positions, {s: v / scale for s, v in raw.items()}, K)
    curve = np.sqrt(sum(n**2 for n in norms.values())).mean(axis=(1, 2))
    per_state = {s: n.mean(axis=(1, 2)) for s, n in norms.items()}
    decay = fit_decay(curve)

    # the step Jacobian along the first sequence
    jac_steps = _spread(0, T - 1, JACOBIAN_STEPS)
    radius: list[float] = []
    sigma: list[float] = []
    if len(cell.states) * H <= MAX_DENSE:
        J = step_jacobians(ref, cp, x, full, jac_steps)
        radius = [float(np.max(np.abs(np.linalg.eigvals(j)))) for j in J]
        sigma = [float(s) for s in np.linalg.svd(J, compute_uv=False)[:, 0]]

    # gates and states
    gates = {name: gate_stats(np.stack([np.asarray(values[t][k]) for t in range(T)])) for k, name in gate_names(cell).items()}
    ranges = {s: {"min": v.min(), "max": v.max(), "mean": v.mean(), "std": v.std()} for s, v in states.items()}

    out: dict[str, Any] = {
        "positions": positions,
        "loss": "surrogate: a fixed random projection of all states at step t, unit norm per sequence",
        "grad_norm_by_lag": [_round(float(v)) for v in curve],
        "grad_norm_by_lag_per_state": {s: [_round(float(v)) for v in c] for s, c in per_state.items()},
        "decay_rate": _round(decay),
        "decay_factor": _round(math.exp(-decay)) if math.isfinite(decay) else None,
        "reach": reach(curve),
        "reached": reach(curve) <= K,
        "per_state": {
            s: {"decay_rate": _round(fit_decay(c)), "reach": reach(c), "reached": reach(c) <= K} for s, c in per_state.items()
        },
        "jacobian_steps": jac_steps if radius else [],
        "spectral_radius": _round(float(np.mean(radius))) if radius else None,
        "spectral_radius_max": _round(max(radius)) if radius else None,
        "spectral_radius_by_step": [_round(v) for v in radius],
        "singular_max": _round(float(np.mean(sigma))) if sigma else None,
        "singular_max_by_step": [_round(v) for v in sigma],
        "gates": {n: {k: _round(v) for k, v in g.items()} for n, g in gates.items()},
        "states": {s: {k: _round(float(v)) for k, v in d.items()} for s, d in ranges.items()},
    }
    if trajectory:
        out["trajectory"] = {s: [[_round(float(u), 4) for u in row] for row in v[:, 0, :]] for s, v in states.items()}
    return out
