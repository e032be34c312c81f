"""Optimisers and gradient clipping, over flat dicts of arrays (updated in place).

A training step of a small cell (the search's default: H = 32, 30 steps) takes ~1 ms, of which the
NumPy expressions of the optimiser and the global norm took a third: a dozen arrays, each through a
dozen ufunc calls. Here each array is one njit loop. The optimisers' loops do the same IEEE
operations in the same order as the NumPy expression beside them (no fast-math, no fused
multiply-add: LLVM contracts nothing without being told), so the same bits; arrays a loop cannot take
(not contiguous, mixed dtypes) go through that NumPy expression. The global norm sums its float64
squares in order, not pairwise as NumPy does: a relative difference ~1e-16 in a number that only sets
the clipping scale, which float32 gradients then round to float32.
"""

from __future__ import annotations

import numpy as np
from numba import njit

Array = np.ndarray


@njit(cache=True, error_model="numpy")
def _sum_squares(g):  # pragma: no cover - njit
    s = 0.0
    for i in range(g.size):
        v = np.float64(g[i])
        s += v * v
    return s


def _flat(*arrays: Array) -> bool:
    """Whether the njit loops can take these arrays: C-contiguous, one float dtype."""
    dt = arrays[0].dtype
    return dt in (np.float32, np.float64) and all(a.dtype == dt and a.flags.c_contiguous for a in arrays)


def global_norm(grads: dict[str, Array]) -> float:
    """The joint L2 norm of all gradients, summed in float64 (inf or nan where any value is)."""
    total = 0.0
    for g in grads.values():
        g = np.asarray(g)
        total += _sum_squares(g.reshape(-1)) if _flat(g) else float(np.sum(np.square(g, dtype=np.float64)))
    return float(np.sqrt(total))


def clip_by_global_norm(grads: dict[str, Array], max_norm: float) -> float:
    """Scale all gradients so that their joint L2 norm is at most ``max_norm``; return the norm before."""
    norm = global_norm(grads)
    if max_norm > 0 and norm > max_norm and np.isfinite(norm):
        scale = max_norm / norm
        for g in grads.values():
            g *= scale
    return norm


@njit(cache=True, error_model="numpy")
def _adam(p, g, m, v, b1, a1, b2, a2, step, c2, eps):  # pragma: no cover - njit
    """``Adam.step``'s NumPy expression for one array, element by element in its order of operations
    (the scalars already in the arrays' dtype, as NumPy casts them)."""
    for i in range(p.size):
        gi = g[i]
        mi = m[i] * b1 + a1 * gi
        vi = v[i] * b2 + a2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - step * mi / (np.sqrt(vi / c2) + eps)


class Adam:
    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m: dict[str, Array] = {}
        self.v: dict[str, Array] = {}
        self.t = 0

    def step(self, params: dict[str, Array], grads: dict[str, Array]) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        c1 = 1.0 - b1**self.t
        c2 = 1.0 - b2**self.t
        for k, g in grads.items():
            if k not in self.m:
                self.m[k] = np.zeros_like(g)
                self.v[k] = np.zeros_like(g)
            m, v, p = self.m[k], self.v[k], params[k]
            if _flat(p, g, m, v):
                f = p.dtype.type
                _adam(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), f(b1), f(1.0 - b1), f(b2), f(1.0 - b2),
                      f(self.lr / c1), f(c2), f(self.eps))  # fmt: skip
                continue
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * g * g
            p -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)


@njit(cache=True, error_model="numpy")
def _nesterov(p, g, v, mu, lr):  # pragma: no cover - njit
    """``NesterovSGD.step``'s NumPy expression for one array, element by element in its order."""
    for i in range(p.size):
        gi = g[i]
        vi = v[i] * mu - lr * gi
        v[i] = vi
        p[i] = p[i] + (mu * vi - lr * gi)


class NesterovSGD:
    """SGD with Nesterov momentum: v <- mu v - lr g; p <- p + mu v - lr g."""

    def __init__(self, lr: float, momentum: float = 0.9) -> None:
        self.lr, self.mu = lr, momentum
        self.v: dict[str, Array] = {}

    def step(self, params: dict[str, Array], grads: dict[str, Array]) -> None:
        for k, g in grads.items():
            v, p = self.v.setdefault(k, np.zeros_like(g)), params[k]
            if _flat(p, g, v):
                f = p.dtype.type
                _nesterov(p.reshape(-1), g.reshape(-1), v.reshape(-1), f(self.mu), f(self.lr))
                continue
            v *= self.mu
            v -= self.lr * g
            p += self.mu * v - self.lr * g
