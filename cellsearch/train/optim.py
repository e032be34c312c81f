"""Optimisers and gradient clipping, over flat dicts of arrays (updated in place).

A training step of a small cell (the search's default: H = 32, 30 steps) takes ~1 ms, of which the
NumPy expressions of the optimiser and the global norm took a third: a dozen arrays, each through a
dozen ufunc calls. Here each array is one njit loop. The optimisers' loops do the same IEEE
operations in the same order as the NumPy expression beside them (no fast-math, no fused
multiply-add: LLVM contracts nothing without being told), so the same bits; arrays a loop cannot take
(not contiguous, mixed dtypes) go through that NumPy expression. The global norm sums its float64
squares in order, not pairwise as NumPy does: a relative difference ~1e-16 in a number that only sets
the clipping scale, which float32 gradients then round to float32.

The training loop goes further (``Flat``): its parameters are views into one buffer, and each
step's gradients are gathered into another, so the clipping and the optimiser step are one njit call
each for all arrays (``clip_flat``, ``step_flat``), not one per array: each call costs ~5 us of
dispatch, which a search's small cells pay ~30 times a step. The loops are the same per element,
and the norm still sums each array's squares on their own, in order, then adds those sums: the
same bits as the per-array calls.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numba import njit

from ..numba_cache import install

install()  # before the decorators below: their Numba cache goes under cellsearch's cache dir, not the sources'

Array = np.ndarray


@njit(cache=True, error_model="numpy")
def _sum_squares_by_part(g, parts):  # pragma: no cover - njit
    """``global_norm``'s sum over the parts ``g[parts[i, 0]:parts[i, 1]]``: each part's float64
    squares summed in order, then the parts' sums in the rows' order (what the per-array loop does)."""
    total = 0.0
    for i in range(parts.shape[0]):
        s = 0.0
        for j in range(parts[i, 0], parts[i, 1]):
            v = np.float64(g[j])
            s += v * v
        total += s
    return total


def _flat(*arrays: Array) -> bool:
    """Whether the njit loops can take these arrays: C-contiguous, one float dtype."""
    dt = arrays[0].dtype
    return dt in (np.float32, np.float64) and all(a.dtype == dt and a.flags.c_contiguous for a in arrays)


def global_norm(grads: dict[str, Array]) -> float:
    """The joint L2 norm of all gradients, summed in float64 (inf or nan where any value is)."""
    total = 0.0
    for g in grads.values():
        g = np.asarray(g)
        if _flat(g):  # (one part: 0.0 plus its sum, which is its sum)
            total += _sum_squares_by_part(g.reshape(-1), np.array([[0, g.size]], dtype=np.int64))
        else:
            total += float(np.sum(np.square(g, dtype=np.float64)))
    return float(np.sqrt(total))


def clip_by_global_norm(grads: dict[str, Array], max_norm: float) -> float:
    """Scale all gradients so that their joint L2 norm is at most ``max_norm``; return the norm before."""
    norm = global_norm(grads)
    if max_norm > 0 and norm > max_norm and np.isfinite(norm):
        scale = max_norm / norm
        for g in grads.values():
            g *= scale
    return norm


class Flat:
    """Named arrays of one float dtype laid end to end in one C-contiguous buffer: ``params`` are
    views into ``buffer`` (in the order given; each C-contiguous, so the kernels read them in place),
    ``bounds`` where each one starts and ends in it, and ``gather`` copies arrays of the same names
    and shapes (a step's gradients) into one such buffer. The optimisers' ``step_flat`` and
    ``clip_flat`` (over ``parts``) then treat all of them in one call."""

    def __init__(self, arrays: dict[str, Array]) -> None:
        dtypes = {np.asarray(a).dtype for a in arrays.values()}
        if len(dtypes) != 1 or not dtypes <= {np.dtype(np.float32), np.dtype(np.float64)}:
            raise ValueError(f"Flat takes arrays of one float dtype; got {sorted(map(str, dtypes))}")
        self.names = list(arrays)
        self.shapes = [np.shape(a) for a in arrays.values()]
        sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.buffer = np.concatenate([np.asarray(a).reshape(-1) for a in arrays.values()])
        b = self.bounds
        self.params = {k: self.buffer[b[i] : b[i + 1]].reshape(self.shapes[i]) for i, k in enumerate(self.names)}

    def gather(self, arrays: dict[str, Array], out: Array | None = None) -> Array:
        """``arrays`` (every name of ``params``, the same shapes) copied end to end into ``out`` (a
        new buffer where None)."""
        if len(arrays) != len(self.names):
            raise ValueError(f"gather wants the {len(self.names)} arrays {self.names}; got {len(arrays)}")
        out = np.empty_like(self.buffer) if out is None else out
        b = self.bounds
        for i, k in enumerate(self.names):
            a = arrays[k]
            if a.shape != self.shapes[i]:
                raise ValueError(f"gather: {k} has shape {a.shape}, not {self.shapes[i]}")
            out[b[i] : b[i + 1]] = a.reshape(-1)
        return out

    def parts(self, names: Iterable[str]) -> Array:
        """[n, 2]: where each of ``names`` starts and ends in the buffer, in that order (the order
        ``clip_flat`` adds their squares in: a dict's, for the same bits as ``global_norm`` of it)."""
        b = self.bounds
        index = {k: i for i, k in enumerate(self.names)}
        return np.array([(b[index[k]], b[index[k] + 1]) for k in names], dtype=np.int64).reshape(-1, 2)


def clip_flat(g: Array, parts: Array, max_norm: float) -> float:
    """``clip_by_global_norm`` for gradients gathered into one buffer by ``Flat.gather``, their
    squares added part by part in ``parts``' order (``Flat.parts``): the same norm as
    ``global_norm`` of the dict they came from, bit for bit, and the same scaling; one call."""
    norm = float(np.sqrt(_sum_squares_by_part(g, parts)))
    if max_norm > 0 and norm > max_norm and np.isfinite(norm):
        g *= max_norm / norm
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
        self._mv: tuple[Array, Array] | None = None  # step_flat's moments

    def step_flat(self, p: Array, g: Array) -> None:
        """``step`` for parameters and gradients each in one C-contiguous float buffer (``Flat``):
        one loop, the same bits as ``step`` over the arrays they hold. An optimiser takes one kind
        of step or the other, not both."""
        self.t += 1
        c1 = 1.0 - self.beta1**self.t
        c2 = 1.0 - self.beta2**self.t
        if self._mv is None:
            self._mv = (np.zeros_like(p), np.zeros_like(p))
        m, v = self._mv
        _adam(p, g, m, v, *self._scalars(p.dtype, c1, c2))

    def _scalars(self, dtype: np.dtype, c1: float, c2: float) -> tuple[np.floating, ...]:
        """``_adam``'s scalars for this step (c1, c2: the bias corrections), in the arrays' dtype."""
        f = dtype.type
        b1, b2 = self.beta1, self.beta2
        return f(b1), f(1.0 - b1), f(b2), f(1.0 - b2), f(self.lr / c1), f(c2), f(self.eps)

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
                _adam(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), *self._scalars(p.dtype, c1, c2))
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
        self._vf: Array | None = None  # step_flat's velocity

    def step_flat(self, p: Array, g: Array) -> None:
        """``step`` for parameters and gradients each in one C-contiguous float buffer (``Flat``):
        one loop, the same bits as ``step`` over the arrays they hold."""
        if self._vf is None:
            self._vf = np.zeros_like(p)
        f = p.dtype.type
        _nesterov(p, g, self._vf, f(self.mu), f(self.lr))

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
