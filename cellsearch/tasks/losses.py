"""Masked losses with their gradients: the one place where a task's loss is defined.

Every function takes the model's predictions ``pred`` (``[T, B, K]``), the targets and a mask
``[T, B]`` of non-negative step weights (1 where a step counts, 0 elsewhere) and returns
``(loss, d_pred)``:

- ``loss`` is the weighted mean over counted steps, ``Σ_tb w_tb · ℓ_tb / Σ_tb w_tb``, as a float.
  The per-step loss ``ℓ_tb`` is the negative log-likelihood (CE, BCE) or squared error (MSE) of
  the whole step; for BCE and MSE it is summed over the ``K`` outputs, so BCE is in nats per step
  (the "NLL per frame" of music models) and equals ``K·ln 2`` for ``pred = 0``.
- ``d_pred`` is ``∂loss/∂pred`` with ``pred``'s shape; it is exactly zero on steps with weight 0.

The arithmetic is float64 (log-sum-exp for softmax, softplus for the sigmoid), so large logits stay
finite. ``d_pred`` comes back in float64 for float64 predictions and float32 otherwise. Values on
masked steps are never read, so padding may hold anything, NaN included.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ShapeError

__all__ = ["binary_cross_entropy", "cross_entropy", "mean_squared_error"]

Array = NDArray[np.float64]


def _weights(pred: np.ndarray, mask: np.ndarray, what: str) -> tuple[Array, NDArray[np.bool_], float]:
    """Check ``pred`` ``[T, B, K]`` against ``mask`` ``[T, B]``; return (weights, counted, Σ weights)."""
    if pred.ndim != 3:
        raise ShapeError(f"{what}: predictions must be [T, B, K] (got shape {pred.shape})")
    if mask.shape != pred.shape[:2]:
        raise ShapeError(f"{what}: mask must be [T, B] = {pred.shape[:2]} (got shape {mask.shape})")
    w = np.asarray(mask, dtype=np.float64)
    if w.size and not (w.min() >= 0 and w.max() < np.inf):  # (NaN fails both)
        raise ShapeError(f"{what}: mask weights must be finite and non-negative")
    total = float(w.sum())
    if total <= 0:
        raise ShapeError(f"{what}: the mask counts no step, so there is nothing to average")
    return w, w > 0, total


def _grad_dtype(pred: np.ndarray) -> type[np.floating]:
    return np.float64 if pred.dtype == np.float64 else np.float32


def _clean(pred: np.ndarray, counted: NDArray[np.bool_]) -> Array:
    """``pred`` in float64 with masked steps set to 0, so padding (even NaN) cannot leak in."""
    return np.where(counted[..., None], np.asarray(pred, dtype=np.float64), 0.0)


def cross_entropy(logits: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy: ``ℓ = logsumexp(z) − z[y]``; ``∂ℓ/∂z = softmax(z) − onehot(y)``.

    ``logits`` ``[T, B, K]``, ``y`` integer class ids ``[T, B]`` (read only where counted). Three
    passes: each step's ``z − max`` in compiled code, NumPy's (vectorised) exp over all of it, then the
    sums, the loss and the gradient in compiled code (``_kernels``). NumPy alone took ~15 passes and
    cost a third of the recurrent kernels' time at the search's sizes; a compiled exp is scalar.
    """
    w, _, total = _weights(logits, mask, "cross_entropy")
    if y.shape != logits.shape[:2]:
        raise ShapeError(f"cross_entropy: targets must be [T, B] = {logits.shape[:2]} (got shape {y.shape})")
    if not np.issubdtype(y.dtype, np.integer):
        raise ShapeError(f"cross_entropy: targets must be integer class ids (got dtype {y.dtype})")
    K = logits.shape[2]
    if K == 0:  # (no class for any target; the compiled passes read each step's first logit)
        raise ShapeError("cross_entropy: counted targets must be class ids in [0, -1]")
    z = logits if logits.dtype in (np.float32, np.float64) else np.asarray(logits, dtype=np.float64)
    z, y, w = np.ascontiguousarray(z), np.ascontiguousarray(y, dtype=np.int64), np.ascontiguousarray(w)
    shifted, finish = _kernels()
    e = np.empty(z.shape, dtype=np.float64)
    top = shifted(z, w, e)
    np.exp(e, out=e)
    d = np.empty(z.shape, dtype=_grad_dtype(logits))
    loss, bad = finish(z, y, w, total, top, e, d)
    if bad:
        raise ShapeError(f"cross_entropy: counted targets must be class ids in [0, {K - 1}]")
    return float(loss), d


@functools.cache
def _kernels() -> tuple[Any, Any]:
    """``_shifted`` and ``_finish`` compiled by Numba (cached on disk), imported at the first loss: the
    task layer itself stays NumPy only (tests/tasks/test_task_options.py)."""
    from numba import njit

    from ..numba_cache import install

    install()  # their Numba cache under cellsearch's cache dir, whatever was imported first
    return tuple(njit(cache=True, error_model="numpy")(f) for f in (_shifted, _finish))  # type: ignore[return-value]


def _shifted(z, w, e):  # pragma: no cover - compiled
    """Each counted step's max over its K logits (a NaN logit makes it NaN, so the step's loss is NaN:
    divergence is seen), and ``e = z − max`` in float64 (0 on steps of weight 0, never read)."""
    T, B, K = z.shape
    top = np.zeros((T, B))
    for t in range(T):
        for b in range(B):
            if not w[t, b] > 0.0:
                for k in range(K):
                    e[t, b, k] = 0.0
                continue
            m = np.float64(z[t, b, 0])
            for k in range(1, K):
                v = np.float64(z[t, b, k])
                if v > m or v != v:
                    m = v
            top[t, b] = m
            for k in range(K):
                e[t, b, k] = np.float64(z[t, b, k]) - m
    return top


def _finish(z, y, w, total, top, e, d):  # pragma: no cover - compiled
    """With e = exp(z − max): per counted step ``s = Σ e``, ``ℓ = max + log(s) − z[y]``, the gradient
    ``(e / s − [k = y]) · w / total`` into d (zero on steps of weight 0). Returns (``Σ w·ℓ / total``,
    True if a counted target is out of range)."""
    T, B, K = z.shape
    acc = 0.0
    for t in range(T):
        for b in range(B):
            wt = w[t, b]
            if not wt > 0.0:
                for k in range(K):
                    d[t, b, k] = 0.0
                continue
            c = y[t, b]
            if c < 0 or c >= K:
                return acc, True
            s = 0.0
            for k in range(K):
                s += e[t, b, k]
            acc += wt * (top[t, b] + np.log(s) - np.float64(z[t, b, c]))
            scale = wt / total
            for k in range(K):
                p = e[t, b, k] / s
                d[t, b, k] = (p - 1.0 if k == c else p) * scale
    return acc / total, False


def binary_cross_entropy(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
    """Sigmoid cross-entropy per output, summed over ``K``: ``ℓ = Σ_k softplus(z) − t·z``.

    ``softplus(z) = max(z, 0) + log1p(exp(−|z|))``; ``∂ℓ/∂z = σ(z) − t``. ``targets`` ``[T, B, K]``
    in [0, 1] (read only where counted).
    """
    w, counted, total = _weights(logits, mask, "binary_cross_entropy")
    if targets.shape != logits.shape:
        raise ShapeError(f"binary_cross_entropy: targets must have the logits' shape {logits.shape} (got {targets.shape})")
    z = _clean(logits, counted)
    t = _clean(targets, counted)
    softplus = np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))
    per_step = np.sum(softplus - t * z, axis=2)
    loss = float(np.sum(w * per_step) / total)
    ez = np.exp(-np.abs(z))
    sigmoid = np.where(z >= 0, 1.0 / (1.0 + ez), ez / (1.0 + ez))
    d = (sigmoid - t) * (w / total)[..., None]
    return loss, d.astype(_grad_dtype(logits))


def mean_squared_error(pred: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
    """Squared error per step, summed over ``K``: ``ℓ = Σ_k (p − t)²``; ``∂ℓ/∂p = 2(p − t)``.

    ``targets`` ``[T, B, K]`` (read only where counted). For ``K = 1`` this is the usual MSE.
    """
    w, counted, total = _weights(pred, mask, "mean_squared_error")
    if targets.shape != pred.shape:
        raise ShapeError(f"mean_squared_error: targets must have the predictions' shape {pred.shape} (got {targets.shape})")
    diff = _clean(pred, counted) - _clean(targets, counted)
    loss = float(np.sum(w * np.sum(diff * diff, axis=2)) / total)
    d = 2.0 * diff * (w / total)[..., None]
    return loss, d.astype(_grad_dtype(pred))
