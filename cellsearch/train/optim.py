"""Optimisers and gradient clipping, over flat dicts of arrays (updated in place)."""

from __future__ import annotations

import numpy as np

Array = np.ndarray


def global_norm(grads: dict[str, Array]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values())))


def clip_by_global_norm(grads: dict[str, Array], max_norm: float) -> float:
    """Scale all gradients so that their joint L2 norm is at most ``max_norm``; return the norm before."""
    norm = global_norm(grads)
    if max_norm > 0 and norm > max_norm and np.isfinite(norm):
        scale = max_norm / norm
        for g in grads.values():
            g *= scale
    return norm


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
            m, v = self.m[k], self.v[k]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * g * g
            params[k] -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)


class NesterovSGD:
    """SGD with Nesterov momentum: v <- mu v - lr g; p <- p + mu v - lr g."""

    def __init__(self, lr: float, momentum: float = 0.9) -> None:
        self.lr, self.mu = lr, momentum
        self.v: dict[str, Array] = {}

    def step(self, params: dict[str, Array], grads: dict[str, Array]) -> None:
        for k, g in grads.items():
            v = self.v.setdefault(k, np.zeros_like(g))
            v *= self.mu
            v -= self.lr * g
            params[k] += self.mu * v - self.lr * g
