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

**Jacobian spectrum.** ``J_t = d s_t / d s_{t-1}`` over all states together (``S*H`` square) on the
reference backend, at up to 32 steps of the first sequence: its spectral radius and largest singular
value. Up to ``DENSE_MAX`` state numbers ``J_t`` is built densely from ``S*H`` one-step
vector-Jacobian products and decomposed by LAPACK. Beyond, it is never formed (``matrix_free``): the
spectral radius is ARPACK's implicitly restarted Arnoldi (``scipy.sparse.linalg.eigs``) on
``v -> J_t^T v``, one one-step backward per product (``J_t^T`` has ``J_t``'s eigenvalues, complex
pairs included); the largest singular value is ARPACK's Lanczos (``eigsh``) on ``v -> J_t^T (J_t v)``,
``J_t v`` by a central difference of the one-step forward in float64 (relative error about 1e-9 for
smooth cells; a kink of ``relu``/``abs``/``max`` within the step of a state is averaged over). Both
agree with the dense values to about 1e-6 (``tests/test_inspect.py``); a step where ARPACK does not
converge reports its best estimate and is counted in ``jacobian_unconverged``.

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
from ..train.loop import HP, one_blas_thread, sequence_length

Array = np.ndarray

#: the reach threshold: |g_k| below this fraction of |g_0|
REACH = 1e-3
#: gate saturation thresholds
LOW, HIGH = 0.05, 0.95
#: the Jacobian is dense up to this many state numbers (S*H), matrix-free (ARPACK) beyond
DENSE_MAX = 256
#: steps of the first sequence at which the Jacobian is taken
JACOBIAN_STEPS = 32
#: positions (loss steps) the gradient flow averages over
POSITIONS = 8
#: the longest lag measured when ``max_lag`` is not given (at most T - 1)
LAG_LIMIT = 200
#: at most this many Jacobian steps when the spectrum is matrix-free (each costs hundreds of products)
MATRIX_FREE_STEPS = 8
#: ARPACK's relative tolerance, its Arnoldi/Lanczos basis size (a large basis finds the eigenvalue of
#: largest modulus in the tight clusters of random recurrent matrices) and its limit on restarts
ARPACK_TOL = 1e-6
ARPACK_NCV = 64
ARPACK_MAXITER = 100
#: what a search diagnoses with each evaluation (``diagnose = true``): a small batch, a bounded lag
#: window and a few Jacobian steps, on the reference interpreter (no compile): well under a second
#: for the default run's cells, about 1% of their training
SEARCH_BUDGET: dict[str, int] = {"batch": 8, "lag_limit": 100, "positions": 4, "jacobian_steps": 8}


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


def spectrum_dense(
    kernel: Any, params: Mapping[str, Array], x: Array, full: Mapping[str, Array], steps: list[int], seq: int = 0
) -> tuple[list[float], list[float]]:
    """(spectral radius, largest singular value) of each step's dense Jacobian (:func:`step_jacobians`)."""
    J = step_jacobians(kernel, params, x, full, steps, seq)
    radius: list[float] = []
    sigma: list[float] = []
    for j in J:  # a step whose Jacobian is not finite (an exploding cell) has NaN for both
        ok = bool(np.isfinite(j).all())
        radius.append(float(np.max(np.abs(np.linalg.eigvals(j)))) if ok else math.nan)
        sigma.append(float(np.linalg.svd(j, compute_uv=False)[0]) if ok else math.nan)
    return radius, sigma


class StepMap:
    """Step ``t`` of sequence ``seq`` as a map of all states stacked in ``full``'s order (``n = S*H``
    numbers): ``vjp(u) = J^T u`` by one backward (exact), ``jvp(v) = J v`` by a central difference of
    one forward of two sequences (float64; relative error about 1e-9 where the cell is smooth)."""

    def __init__(
        self, kernel: Any, params: Mapping[str, Array], x: Array, full: Mapping[str, Array], t: int, seq: int = 0
    ) -> None:
        self.kernel, self.params = kernel, params
        self.states = list(full)
        self.H = int(full[self.states[0]].shape[-1])
        self.n = len(self.states) * self.H
        self.x = np.asarray(x[t : t + 1, seq : seq + 1], dtype=np.float64)
        self.s0 = np.concatenate([np.asarray(full[s][t, seq], dtype=np.float64) for s in self.states])
        self.tape = kernel.forward(params, self.x, self._split(self.s0[None])).tape
        self.calls = 0

    def _split(self, flat: Array) -> dict[str, Array]:
        return {s: np.ascontiguousarray(flat[:, i * self.H : (i + 1) * self.H]) for i, s in enumerate(self.states)}

    def vjp(self, u: Array) -> Array:
        self.calls += 1
        d = self._split(np.asarray(u, dtype=np.float64).reshape(1, -1))
        g = self.kernel.backward(self.params, self.tape, None, d, grad_x=False).state0
        return np.concatenate([g[s][0] for s in self.states])

    def jvp(self, v: Array) -> Array:
        self.calls += 1
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            return np.zeros(self.n)
        h = 1e-6 * max(1.0, float(np.linalg.norm(self.s0))) / norm
        both = np.stack([self.s0 + h * v, self.s0 - h * v])
        out = self.kernel.forward(self.params, np.repeat(self.x, 2, axis=1), self._split(both)).states
        f = np.concatenate([out[s] for s in self.states], axis=1)
        return (f[0] - f[1]) / (2 * h)


def spectrum_matrix_free(
    kernel: Any, params: Mapping[str, Array], x: Array, full: Mapping[str, Array], steps: list[int], seq: int = 0
) -> tuple[list[float], list[float], int]:
    """(spectral radius, largest singular value, steps where ARPACK did not converge) of each step's
    Jacobian without forming it: Arnoldi (``eigs``) on ``J^T`` for the eigenvalue of largest modulus,
    Lanczos (``eigsh``) on ``J^T J`` for the largest singular value. A step that does not converge
    keeps ARPACK's best estimate (NaN when it has none)."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs, eigsh

    radius: list[float] = []
    sigma: list[float] = []
    unconverged = 0
    for t in steps:
        m = StepMap(kernel, params, x, full, t, seq)
        n = m.n
        if n < 3:
            raise ConfigError(f"the matrix-free spectrum needs at least 3 state numbers (got {n})")
        if not (np.isfinite(m.s0).all() and np.isfinite(m.vjp(np.ones(n))).all()):  # an exploding cell
            radius.append(math.nan)
            sigma.append(math.nan)
            continue
        v0 = np.random.default_rng(t).normal(size=n)
        ncv = min(n - 1, ARPACK_NCV)
        opts: dict[str, Any] = {"k": 1, "v0": v0, "ncv": ncv, "tol": ARPACK_TOL, "maxiter": ARPACK_MAXITER}
        try:
            vals = eigs(LinearOperator((n, n), matvec=m.vjp, dtype=np.float64), which="LM", return_eigenvectors=False, **opts)
        except ArpackNoConvergence as err:
            unconverged += 1
            vals = np.asarray(err.eigenvalues)
        radius.append(float(np.max(np.abs(vals))) if len(vals) else math.nan)
        gram = LinearOperator((n, n), matvec=lambda v, m=m: m.vjp(m.jvp(v)), dtype=np.float64)
        try:
            vals = eigsh(gram, which="LA", return_eigenvectors=False, **opts)
        except ArpackNoConvergence as err:
            unconverged += 1
            vals = np.asarray(err.eigenvalues)
        sigma.append(float(np.sqrt(max(float(np.max(vals)), 0.0))) if len(vals) else math.nan)
    return radius, sigma, unconverged


def jacobian_spectrum(
    kernel: Any,
    params: Mapping[str, Array],
    x: Array,
    full: Mapping[str, Array],
    steps: list[int],
    seq: int = 0,
    dense_max: int = DENSE_MAX,
) -> tuple[list[float], list[float], str, int]:
    """Each step's spectral radius and largest singular value, the method (``dense`` up to
    ``dense_max`` state numbers, ``matrix-free`` beyond) and how many ARPACK runs did not converge."""
    states = list(full)
    n = len(states) * int(full[states[0]].shape[-1])
    if n <= max(dense_max, 2):
        radius, sigma = spectrum_dense(kernel, params, x, full, steps, seq)
        return radius, sigma, "dense", 0
    radius, sigma, unconverged = spectrum_matrix_free(kernel, params, x, full, steps, seq)
    return radius, sigma, "matrix-free", unconverged


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
    if node.op is Op.LINEAR:  # a bias-free linear (bias=none) names nothing: look on in the siblings
        bias = pnames[k].bias
        return None if bias is None else str(bias)
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


def _mean(values: list[float]) -> float | None:
    """The mean of the finite values (None when there are none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return _round(float(v.mean())) if len(v) else None


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
    batch: int | None = None,
    lag_limit: int = LAG_LIMIT,
    positions: int = POSITIONS,
    jacobian_steps: int = JACOBIAN_STEPS,
    dense_max: int = DENSE_MAX,
) -> dict[str, Any]:
    """Diagnostics of ``cell`` on a batch (``batch`` sequences, default ``hp.batch``) of ``task``'s
    data, as a JSON-able dict.

    ``params`` are a model's parameters (``Model``'s names: ``cell.*``, ``in.*``, ``out.*``, as
    ``evaluate(..., return_params=True)`` returns them); without them the model starts as
    ``evaluate`` with this ``seed`` and ``hp`` starts it (``gate_init``, ``forget_bias`` included).
    ``max_lag`` defaults to the sequence length - 1, at most ``lag_limit``. The gradient flow runs on
    ``hp.backend``, the rest on the reference interpreter, all in float64. ``trajectory=False``
    leaves out the per-unit state traces (the bulk of the dict). The cost: ``max_lag`` one-step
    forward and backward calls on ``positions`` x ``batch`` sequences, and the Jacobian at
    ``jacobian_steps`` steps (dense up to ``dense_max`` state numbers, matrix-free beyond).
    ``ConfigError`` for bad input.
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
    for name, v, least in (("batch", batch or 1, 1), ("lag_limit", lag_limit, 0), ("positions", positions, 1),
                           ("jacobian_steps", jacobian_steps, 1)):  # fmt: skip
        if v < least:
            raise ConfigError(f"{name} must be at least {least} (got {v})")
    rng = np.random.default_rng(streams[5])
    x = np.asarray(model.encode(dict(params), the_task.sample(rng, batch or hp.batch).x), dtype=np.float64)
    cp = {k[len("cell.") :]: np.asarray(v, dtype=np.float64) for k, v in params.items() if k.startswith("cell.")}
    T = x.shape[0]
    K = min(T - 1, lag_limit) if max_lag is None else int(max_lag)
    if not 0 <= K <= T:
        raise ConfigError(f"max_lag must be in [0, {T}] for sequences of {T} steps (got {max_lag})")
    kernel = ReferenceKernel(cell, np.float64) if hp.backend == "reference" else compile(cell, hp.backend, np.float64)
    with one_blas_thread():  # one step of a small batch at a time: BLAS threads would only fight
        out = _measure(cell, cp, x, kernel, K, rng, trajectory, positions, jacobian_steps, dense_max)
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
    cell: Cell,
    cp: dict[str, Array],
    x: Array,
    kernel: Any,
    K: int,
    rng: np.random.Generator,
    trajectory: bool,
    n_positions: int = POSITIONS,
    jacobian_steps: int = JACOBIAN_STEPS,
    dense_max: int = DENSE_MAX,
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
    positions = _spread(max(K - 1, 0), T - 1, n_positions)
    raw = {s: rng.normal(size=(len(positions), B, H)) for s in cell.states}
    scale = np.sqrt(sum(np.sum(v**2, axis=2) for v in raw.values()))[:, :, None]
    norms, _ = lag_gradients(kernel, cp, x, full, positions, {s: v / scale for s, v in raw.items()}, K)
    curve = np.sqrt(sum(n**2 for n in norms.values())).mean(axis=(1, 2))
    per_state = {s: n.mean(axis=(1, 2)) for s, n in norms.items()}
    decay = fit_decay(curve)

    # the step Jacobian along the first sequence
    matrix_free = len(cell.states) * H > max(dense_max, 2)
    jac_steps = _spread(0, T - 1, min(jacobian_steps, MATRIX_FREE_STEPS) if matrix_free else jacobian_steps)
    radius, sigma, method, unconverged = jacobian_spectrum(ref, cp, x, full, jac_steps, dense_max=dense_max)

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
        "jacobian_steps": jac_steps,
        "jacobian_method": method,
        "jacobian_unconverged": unconverged,
        "spectral_radius": _mean(radius),
        "spectral_radius_max": _round(float(np.nanmax(radius))) if np.isfinite(radius).any() else None,
        "spectral_radius_by_step": [_round(v) for v in radius],
        "singular_max": _mean(sigma),
        "singular_max_by_step": [_round(v) for v in sigma],
        "gates": {n: {k: _round(v) for k, v in g.items()} for n, g in gates.items()},
        "states": {s: {k: _round(float(v)) for k, v in d.items()} for s, d in ranges.items()},
    }
    if trajectory:
        out["trajectory"] = {s: [[_round(float(u), 4) for u in row] for row in v[:, 0, :]] for s, v in states.items()}
    return out


# ---- with each evaluation of a search ----------------------------------------------------------


def saturation(gates: Mapping[str, Mapping[str, float | None]]) -> float | None:
    """The mean over a cell's sigmoid gates of the fraction of activations saturated (below ``LOW``
    or above ``HIGH``); None for a cell without sigmoid gates."""
    values = [float(g["low"] or 0.0) + float(g["high"] or 0.0) for g in gates.values()]
    return _round(sum(values) / len(values)) if values else None


#: the measurements of a diagnosis an evaluation keeps
SUMMARY_KEYS = (
    "steps", "max_lag", "reach", "reached", "decay_rate", "decay_factor", "spectral_radius", "spectral_radius_max",
    "singular_max", "jacobian_method", "jacobian_unconverged", "grad_norm_by_lag", "per_state", "gates", "states", "seconds",
)  # fmt: skip


def summary(d: Mapping[str, Any]) -> dict[str, Any]:
    """What an evaluation keeps of a diagnosis: the numbers and the gradient curve, with the gates'
    ``saturation``; not the traces, the per-step spectra or what the evaluation already names."""
    out = {k: d[k] for k in SUMMARY_KEYS if k in d}
    out["saturation"] = saturation(d.get("gates") or {})
    return out


def evaluation_diagnostics(
    cell: Cell,
    task: str,
    task_options: Mapping[str, Any] | None,
    hp: HP,
    seed: int,
    params: Mapping[str, Array] | None,
    budget: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The diagnostics a search stores with an evaluation (``diagnose = true``): :func:`summary` of
    the cell at initialisation (as ``evaluate`` started it with ``seed`` and ``hp``) and, with
    ``params`` (the trained parameters ``evaluate(..., return_params=True)`` kept), after training,
    both on the same small batch of the task's validation data (``SEARCH_BUDGET``), on the reference
    interpreter (nothing to compile, any training backend). Never raises: a diagnosis that cannot run
    (several layers, say) is ``status: failed`` with the reason."""
    t0 = time.perf_counter()
    budget = dict(SEARCH_BUDGET if budget is None else budget)
    out: dict[str, Any] = {"status": "ok", "reason": "", "budget": budget, "initial": None, "trained": None}
    known = ("batch", "lag_limit", "positions", "jacobian_steps", "dense_max")
    if set(budget) - set(known):
        raise ConfigError(f"unknown diagnostics budget keys {sorted(set(budget) - set(known))}")
    limits: dict[str, Any] = {k: int(v) for k, v in budget.items()}
    on_reference = dataclasses.replace(hp, backend="reference")
    reasons: list[str] = []
    for when, p in (("initial", None), ("trained", params)):
        if when == "trained" and p is None:
            continue
        try:
            with np.errstate(all="ignore"):
                out[when] = summary(diagnose(cell, task, task_options, on_reference, p, seed, trajectory=False, **limits))
        except Exception as err:  # a diagnosis is never a reason to lose an evaluation
            reasons.append(f"{when}: {type(err).__name__}: {err}")
    if reasons:  # what could be measured is kept
        out.update(status="failed", reason="; ".join(reasons)[:500])
    out["seconds"] = round(time.perf_counter() - t0, 4)
    return out
