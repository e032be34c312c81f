"""Mackey–Glass: forecast the chaotic Mackey–Glass series, integrated by the task itself.

The delay differential equation (Mackey & Glass 1977), with ``β = 0.2``, ``γ = 0.1``, ``n = 10``::

    dx/dt = β · x(t − τ) / (1 + x(t − τ)ⁿ) − γ · x(t)          (τ = option ``tau``, default 17)

Integration (:func:`mackey_glass`): classical fourth-order Runge–Kutta on a grid of step
``h = 1 / substeps`` time units (default 0.1). The delay is a whole number ``D = τ · substeps`` of
grid steps, so the delayed term at the grid points is a stored value; at the half steps RK4 needs,
it is the mean of the stored values on either side. Each sequence starts from a constant history
``x(t) = c`` for ``t ≤ 0`` with ``c ~ U[0.1, 0.9)`` drawn from the task's generator (the only
random draw), runs for ``washout`` time units (default 1000) that are thrown away, and is then
sampled once per time unit (every ``substeps``-th grid point). The step is linear in ``x`` given
the delayed terms, so the task advances up to ``min(τ, 50)`` time units at once with a cumulative
sum instead of one grid step at a time.

Normalisation: values are shifted and scaled by the mean ``μ`` and standard deviation ``σ`` of the
attractor, measured once per (``tau``, ``substeps``) on a fixed reference run (64 histories from
``default_rng(NORMALISATION_SEED)``, 1000 units of washout, then 3000 units sampled); ``τ = 17``:
``μ ≈ 0.93``, ``σ ≈ 0.23``. :attr:`MackeyGlassTask.mean` and :attr:`MackeyGlassTask.std` give them.

Windows, mask and metric as in :mod:`.forecast`: ``x[t]`` is the normalised value at time
``washout + t``, ``y[t]`` the one ``horizon`` units later (so ``y[t] == x[t + horizon]``); the first
``warmup`` steps (default 20, longer than the delay) are context only, the next ``length`` (default
100) count. ``nrmse`` divides the RMSE by ``σ`` of the attractor,
which is 1 in normalised units, so ``nrmse`` is the RMSE of the normalised outputs.

Baselines (``baseline()``), measured on a batch of 512 sequences drawn from
``default_rng(BASELINE_SEED)``: the training mean (``μ``, i.e. 0) is the chance level, ``nrmse ≈ 1``
(its ``loss``, the MSE, ≈ 1); persistence, ``x(t + k) ≈ x(t)``, gives ``persistence_nrmse``. At the
defaults: 0.9995 and 0.146 (horizon 10: 1.001 and 1.236, persistence is then worse than the mean).
The default ``washout`` of 1000 units lets the sequences forget their histories: after 200 units
the batch's mean is still visibly off the attractor's for ``τ`` ≥ 30.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np

from .base import Option
from .forecast import ForecastTask, forecast_options

__all__ = ["BASELINE_SEED", "BETA", "GAMMA", "NORMALISATION_SEED", "POWER", "MackeyGlassTask", "mackey_glass"]

BETA, GAMMA, POWER = 0.2, 0.1, 10
HISTORY_LOW, HISTORY_HIGH = 0.1, 0.9  # the constant initial history c ~ U[low, high)
NORMALISATION_SEED = 17_2002
BASELINE_SEED = 17_2003
BASELINE_BATCH = 512


def _delayed(x: np.ndarray) -> np.ndarray:
    """The delayed term ``β x / (1 + xⁿ)``."""
    return BETA * x / (1.0 + x**POWER)


def _rk4_step(h: float, x: float, g0: float, g1: float) -> float:
    """One RK4 step of ``x' = g(t) − γ x`` with ``g`` known at both ends and their mean in the middle."""
    gm = 0.5 * (g0 + g1)
    k1 = g0 - GAMMA * x
    k2 = gm - GAMMA * (x + 0.5 * h * k1)
    k3 = gm - GAMMA * (x + 0.5 * h * k2)
    k4 = g1 - GAMMA * (x + h * k3)
    return x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def mackey_glass(history: np.ndarray, units: int, tau: int = 17, substeps: int = 10) -> np.ndarray:
    """Solutions from the constant histories ``x(t) = history[b]`` (``t ≤ 0``) at ``t = 0, 1, …, units``.

    Returns float64 ``[units + 1, B]``; row 0 is the history value itself. RK4 with step
    ``1 / substeps``, the delayed term interpolated linearly at half steps (see the module docstring).
    """
    h = 1.0 / substeps
    D = tau * substeps
    # the step is linear: x' = A x + c0 g(x(t − τ)) + c1 g(x(t + h − τ)); its coefficients, exactly
    A = _rk4_step(h, 1.0, 0.0, 0.0)
    c0 = _rk4_step(h, 0.0, 1.0, 0.0)
    c1 = _rk4_step(h, 0.0, 0.0, 1.0)
    S = substeps * min(tau, 50)  # grid steps per block: a multiple of substeps, at most D, A^-S ≤ e^5
    j = np.arange(1, S + 1, dtype=np.float64)
    up, down = (A**j)[:, None], (A**-j)[:, None]
    x = np.asarray(history, dtype=np.float64).copy()
    g = np.repeat(_delayed(x)[None], D + 1, axis=0)  # g at the grid points n − D … n
    out = np.empty((units + 1, x.shape[0]))
    out[0] = x
    done = 0
    while done < units:
        u = c0 * g[:S] + c1 * g[1 : S + 1]  # the forcing of steps n+1 … n+S, from stored values only
        block = up * (x + np.cumsum(down * u, axis=0))  # x_j = A^j (x_0 + Σ_{i≤j} A^-i u_i)
        samples = block[substeps - 1 :: substeps][: units - done]
        out[done + 1 : done + 1 + len(samples)] = samples
        done += len(samples)
        x = block[-1]
        g = np.concatenate([g[S:], _delayed(block)])
    return out


@functools.cache
def attractor_stats(tau: int, substeps: int) -> tuple[float, float]:
    """``(μ, σ)`` of the series on the attractor, from the fixed reference run."""
    rng = np.random.default_rng(NORMALISATION_SEED)
    series = mackey_glass(rng.uniform(HISTORY_LOW, HISTORY_HIGH, 64), 4000, tau, substeps)[1001:]
    return float(series.mean()), float(series.std())


class MackeyGlassTask(ForecastTask):
    name = "mackey_glass"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "tau": Option(int, 17, 10, 100, doc="τ, the delay in time units (17: mildly chaotic; < 17 periodic)"),
        **forecast_options((100, 20, 1), (10000, 1000, 100)),
        "washout": Option(int, 1000, 0, 10000, doc="time units integrated and thrown away before a window"),
        "substeps": Option(int, 10, 1, 100, doc="RK4 steps per time unit (dt = 1 / substeps)"),
    }

    tau: int
    washout: int
    substeps: int

    @property
    def mean(self) -> float:
        """``μ``, the attractor's mean, subtracted from every value."""
        return attractor_stats(self.tau, self.substeps)[0]

    @property
    def std(self) -> float:
        """``σ``, the attractor's standard deviation, that every value is divided by."""
        return attractor_stats(self.tau, self.substeps)[1]

    def target_std(self) -> float:
        return 1.0  # σ of the attractor, in normalised units

    def _windows(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        history = rng.uniform(HISTORY_LOW, HISTORY_HIGH, batch_size)
        n = self.steps + self.horizon
        series = mackey_glass(history, self.washout + n - 1, self.tau, self.substeps)[self.washout :]
        return (series - self.mean) / self.std

    def _reference_windows(self) -> np.ndarray:
        return self._windows(np.random.default_rng(BASELINE_SEED), BASELINE_BATCH)
