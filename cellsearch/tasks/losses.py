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

    ``logits`` ``[T, B, K]``, ``y`` integer class ids ``[T, B]`` (read only where counted).
    """
    w, counted, total = _weights(logits, mask, "cross_entropy")
    if y.shape != logits.shape[:2]:
        raise ShapeError(f"cross_entropy: targets must be [T, B] = {logits.shape[:2]} (got shape {y.shape})")
    if not np.issubdtype(y.dtype, np.integer):
        raise ShapeError(f"cross_entropy: targets must be integer class ids (got dtype {y.dtype})")
    T, B, K = logits.shape
    ids = np.where(counted, y, 0).astype(np.int64)
    if ids.size and not (ids.min() >= 0 and ids.max() < K):
        raise ShapeError(f"cross_entropy: counted targets must be class ids in [0, {K - 1}]")
    z = _clean(logits, counted)
    top = _max_last(z)
    e = np.exp(z - top)
    s = e.sum(axis=2, keepdims=True)
    lse = (top + np.log(s))[..., 0]
    at = (np.arange(T)[:, None], np.arange(B)[None, :], ids)  # each step's target class
    picked = z[at]
    loss = float(np.sum(w * (lse - picked)) / total)
    d = e / s
    d[at] -= 1.0
    d *= (w / total)[..., None]
    return loss, d.astype(_grad_dtype(logits))


def _max_last(z: Array) -> Array:
    """``z.max(axis=2, keepdims=True)``; for a few classes, over a copy with the classes first (NumPy
    reduces a short last axis one output at a time, ~50 ns each, and a first axis as whole rows): the
    same values (a max is exact, and NaN propagates either way)."""
    if z.shape[2] > 16 or z.size == 0:
        return z.max(axis=2, keepdims=True)
    return np.ascontiguousarray(np.moveaxis(z, 2, 0)).max(axis=0)[..., None]


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
