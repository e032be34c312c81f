"""From stored evaluations and measurements to one verdict per claim.

Every verdict is one of ``supported``, ``not supported``, ``partly supported`` (claim 6: some SLIM
variants keep the accuracy, some do not) or ``inconclusive at this scale``. The rules are each claim's
``rule`` (:mod:`.experiments`); a comparison of two arms is Welch's t-test over seeds
(``scipy.stats.ttest_ind(equal_var=False)``), the same test the study reports use. Failed and
diverged evaluations are counted and shown, and left out of every mean (claim 3 counts divergences
as its measurement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..analysis.stats import format_p, welch
from .experiments import Claim

ALPHA = 0.05
MARGIN = 0.05  # the smallest gain in accuracy (absolute) that counts as "helps"
LEARNED = 0.95  # an accuracy this high on validation counts as having learned the task
SUPPORTED, NOT_SUPPORTED, PARTLY, INCONCLUSIVE = "supported", "not supported", "partly supported", "inconclusive at this scale"
BAD = ("failed", "diverged")


@dataclass
class ArmResult:
    """One arm's evaluations: their status and test results (None where there is none)."""

    label: str
    cell: str
    task: str
    metric: str | None = None
    higher_is_better: bool = True
    baseline: float | None = None  # the task's chance level in the metric (the input-blind predictor)
    extra_baselines: dict[str, float] = field(default_factory=dict)  # e.g. persistence for forecasting
    statuses: list[str] = field(default_factory=list)
    tests: list[float | None] = field(default_factory=list)
    test_losses: list[float | None] = field(default_factory=list)
    params: int | None = None
    learned_at: list[int | None] = field(default_factory=list)  # first step whose validation reached LEARNED (accuracy)

    @property
    def ok(self) -> list[float]:
        """Test results of the evaluations that finished (neither failed nor diverged)."""
        return [t for s, t in zip(self.statuses, self.tests, strict=True) if s not in BAD and t is not None and math.isfinite(t)]

    @property
    def diverged(self) -> int:
        return sum(s == "diverged" for s in self.statuses)

    @property
    def failed(self) -> int:
        return sum(s == "failed" for s in self.statuses)

    @property
    def mean(self) -> float:
        return float(np.mean(self.ok)) if self.ok else math.nan

    @property
    def sd(self) -> float:
        return float(np.std(self.ok, ddof=1)) if len(self.ok) > 1 else math.nan

    def learned_text(self) -> str:
        """When each seed first reached LEARNED validation accuracy ("never" within the budget)."""
        return ", ".join("never" if s is None else str(s) for s in self.learned_at)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "cell": self.cell,
            "task": self.task,
            "metric": self.metric,
            "params": self.params,
            "runs": len(self.statuses),
            "diverged": self.diverged,
            "failed": self.failed,
            "mean": _num(self.mean),
            "sd": _num(self.sd),
            "tests": [_num(t) if t is not None else None for t in self.tests],
            "learned_at": self.learned_at,
            "baseline": _num(self.baseline) if self.baseline is not None else None,
            **{k: _num(v) for k, v in self.extra_baselines.items()},
        }


@dataclass
class Verdict:
    number: int
    measured: str
    verdict: str
    p: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _num(v: float | None, digits: int = 4) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


def fmt(v: float | None, digits: int = 3) -> str:
    """A number as the tables print it (– for none)."""
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.{digits}g}"


def _mean_sd(a: ArmResult) -> str:
    text = f"{fmt(a.mean)} ± {fmt(a.sd, 2)}" if len(a.ok) > 1 else fmt(a.mean)
    bad = a.diverged + a.failed
    return text + (f" ({bad} of {len(a.statuses)} diverged/failed)" if bad else "")


def compare(a: ArmResult, b: ArmResult) -> tuple[float | None, bool]:
    """Welch's p of ``a`` against ``b`` and whether ``a`` is significantly better in the metric's direction."""
    _, p = welch(a.ok, b.ok)
    better = p is not None and p < ALPHA and ((a.mean > b.mean) == a.higher_is_better)
    return p, better


# ---- the claims -----------------------------------------------------------------------------


def long_lags(claim: Claim, arms: list[ArmResult]) -> Verdict:
    lstm, rnn, gru = (next(a for a in arms if a.cell == c) for c in ("lstm", "rnn", "gru"))
    p, better = compare(lstm, rnn)
    chance = lstm.baseline
    measured = (
        f"test accuracy (chance {fmt(chance)}): LSTM {_mean_sd(lstm)}, RNN {_mean_sd(rnn)}, GRU {_mean_sd(gru)}; "
        f"step first at {LEARNED:g} validation accuracy, per seed: LSTM {lstm.learned_text()}; RNN {rnn.learned_text()}; "
        f"GRU {gru.learned_text()}"
    )
    if not lstm.ok or lstm.mean < 0.9:
        v = INCONCLUSIVE if not rnn.ok or rnn.mean < 0.9 else NOT_SUPPORTED
    elif better:
        v = SUPPORTED
    else:
        v = NOT_SUPPORTED if rnn.ok and rnn.mean >= 0.9 else INCONCLUSIVE
    return Verdict(claim.number, measured, v, p)


def vanishing(claim: Claim, measurement: dict[str, Any]) -> Verdict:
    rows = measurement["rows"]
    lag = measurement["max_lag"]

    def at_end(cell: str, init: str) -> float | None:
        vals = [r["ratio_at_max_lag"] for r in rows if r["cell"] == cell and r["init"] == init]
        vals = [v for v in vals if v is not None]
        return float(np.exp(np.mean(np.log(np.maximum(vals, 1e-300))))) if vals else None

    parts = []
    for init in dict.fromkeys(f"{r['cell']}|{r['init']}" for r in rows):
        cell, how = init.split("|")
        reaches = [r["reach"] for r in rows if r["cell"] == cell and r["init"] == how]
        ratio = at_end(cell, how)
        label = cell + (f" ({how})" if how != "default" else "")
        reach_text = f"reach {min(reaches)}" if max(reaches) <= lag else f"reach > {lag}"
        parts.append(f"{label}: |g_{lag}|/|g_0| = {fmt(ratio, 2)}, {reach_text}")
    rnn, lstm = at_end("rnn", "default"), at_end("lstm", "chrono")
    if rnn is None or lstm is None:
        v = INCONCLUSIVE
    elif rnn < 1e-3 and lstm > 1e-2:
        v = SUPPORTED
    elif rnn >= 1e-3:
        v = NOT_SUPPORTED
    else:
        v = INCONCLUSIVE
    return Verdict(claim.number, "; ".join(parts), v, None)


def clipping(claim: Claim, arms: list[ArmResult]) -> Verdict:
    clip, raw = arms
    p, clip_better = compare(clip, raw)
    measured = (
        f"diverged: {clip.diverged} of {len(clip.statuses)} with clipping, {raw.diverged} of {len(raw.statuses)} without; "
        f"test MSE of the rest: {_mean_sd(clip)} with, {_mean_sd(raw)} without (baseline {fmt(clip.baseline)})"
    )
    rate_clip = clip.diverged / max(1, len(clip.statuses))
    rate_raw = raw.diverged / max(1, len(raw.statuses))
    if rate_raw > rate_clip or (rate_raw == rate_clip and clip_better):
        v = SUPPORTED
    elif rate_clip > rate_raw:
        v = NOT_SUPPORTED
    else:
        v = INCONCLUSIVE
    return Verdict(claim.number, measured, v, p)


def two_cells(claim: Claim, arms: list[ArmResult]) -> Verdict:
    """Claims 4 and 5: the first arm against the second, better when significantly so."""
    a, b = arms
    p, better = compare(a, b)
    chance = f" (chance {fmt(a.baseline)})" if a.baseline is not None else ""
    params = f", {a.params} and {b.params} parameters" if a.params and b.params else ""
    measured = f"test {a.metric}{chance}: {a.label} {_mean_sd(a)}, {b.label} {_mean_sd(b)}{params}"
    if a.higher_is_better and (a.learned_at or b.learned_at):
        measured += (
            f"; step first at {LEARNED:g} validation, per seed: {a.label} {a.learned_text()}; {b.label} {b.learned_text()}"
        )
    low, high = welch_interval(a.ok, b.ok)
    if low is not None and high is not None:
        measured += f"; difference {fmt(a.mean - b.mean)}, 95% CI [{fmt(low)}, {fmt(high)}]"
    gain = high if a.higher_is_better else (None if low is None else -low)  # the largest gain the data allow
    if better:
        v = SUPPORTED
    elif p is not None and p < ALPHA:
        v = NOT_SUPPORTED  # significantly worse
    elif a.higher_is_better and a.baseline is not None and max(a.mean, b.mean) <= a.baseline + 0.02:
        v = INCONCLUSIVE  # neither learned the task: no evidence either way
    elif gain is not None and gain < MARGIN:
        v = NOT_SUPPORTED  # a gain of MARGIN or more is excluded
    else:
        v = INCONCLUSIVE  # too few seeds for the spread: a gain can be neither shown nor excluded
    return Verdict(claim.number, measured, v, p)


def welch_interval(a: list[float], b: list[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """The Welch (unequal variances) confidence interval of ``mean(a) - mean(b)``."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None, None
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    diff = float(np.mean(a) - np.mean(b))
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return diff - half, diff + half


def _skill(a: ArmResult, value: float) -> float:
    """A result in a higher-is-better form: accuracy as is; an error as ln(baseline / error)."""
    if a.higher_is_better:
        return value
    base = a.baseline or 1.0
    return math.log(base / max(value, 1e-9))


def slim(claim: Claim, arms: list[ArmResult]) -> Verdict:
    keeps: dict[str, list[bool]] = {}
    rows = []
    ps: list[float] = []
    for task in dict.fromkeys(a.task for a in arms):
        ref = next(a for a in arms if a.task == task and a.cell == "lstm")
        for a in arms:
            if a.task != task or a.cell == "lstm":
                continue
            _, p = welch(a.ok, ref.ok)
            worse = p is not None and p < ALPHA and ((a.mean < ref.mean) == a.higher_is_better)
            close = bool(a.ok) and _skill(a, a.mean) >= 0.95 * _skill(ref, ref.mean)
            keep = bool(a.ok) and not worse and close
            keeps.setdefault(a.cell, []).append(keep)
            if p is not None:
                ps.append(p)
            rows.append({"task": task, "cell": a.cell, "params": a.params, "mean": _num(a.mean), "lstm": _num(ref.mean),
                         "p": _num(p) if p is not None else None, "keeps": keep})  # fmt: skip
    per_task = []
    for task in dict.fromkeys(a.task for a in arms):
        cells = [a for a in arms if a.task == task]
        kept = [str(r["cell"]) for r in rows if r["task"] == task and r["keeps"]]
        per_task.append(
            f"{task} ({cells[0].metric}): "
            + ", ".join(f"{a.cell} {fmt(a.mean)} [{a.params}]" for a in cells)
            + f" — keep: {', '.join(kept) or 'none'}"
        )
    measured = "; ".join(per_task) + " ([N]: model parameters)"
    pairs = [r["keeps"] for r in rows]
    if not pairs:
        v = INCONCLUSIVE
    elif all(pairs):
        v = SUPPORTED
    elif not any(pairs):
        v = NOT_SUPPORTED
    else:
        v = PARTLY
    return Verdict(claim.number, measured, v, min(ps) if ps else None, {"rows": rows})


def forecasting(claim: Claim, arms: list[ArmResult]) -> Verdict:
    parts = []
    wins: list[bool] = []
    ps: list[float] = []
    for a in arms:
        pers = a.extra_baselines.get("persistence")
        mean_base = a.baseline
        if pers is None or not a.ok:
            parts.append(f"{a.task}: LSTM {_mean_sd(a)}")
            continue
        _, p = welch(a.ok, [pers] * len(a.ok)) if len(set(a.ok)) > 1 else (None, None)
        win = a.mean < pers and p is not None and p < ALPHA
        wins.append(win)
        if p is not None:
            ps.append(p)
        parts.append(f"{a.task}: LSTM NRMSE {_mean_sd(a)}, persistence {fmt(pers)}, mean {fmt(mean_base)} (p {format_p(p)})")
    if not wins:
        v = INCONCLUSIVE
    elif all(wins):
        v = SUPPORTED
    elif any(wins):
        v = PARTLY
    else:
        v = NOT_SUPPORTED
    return Verdict(claim.number, "; ".join(parts), v, max(ps) if ps else None)


def gate_cost(claim: Claim, measurement: dict[str, Any]) -> Verdict:
    rows = {r["cell"]: r for r in measurement["rows"]}
    parts = [f"{c} {r['params']} params, {fmt(r['step_ms'])} ms" for c, r in rows.items()]
    core = [rows[c] for c in ("lstm", "gru", "rnn") if c in rows]
    params_order = all(core[i]["params"] > core[i + 1]["params"] for i in range(len(core) - 1))
    time_order = all(core[i]["step_ms"] > core[i + 1]["step_ms"] for i in range(len(core) - 1))
    slims = [r for c, r in rows.items() if c.startswith("slim")]
    slim_fewer = all(r["params"] < rows["lstm"]["params"] for r in slims) if "lstm" in rows else False
    if len(core) < 3:
        v = INCONCLUSIVE
    elif params_order and time_order and slim_fewer:
        v = SUPPORTED
    elif params_order and slim_fewer:
        v = PARTLY  # the parameters follow the gates, the step time does not
    else:
        v = NOT_SUPPORTED
    cfg = measurement["config"]
    return Verdict(claim.number, f"at B={cfg[0]}, T={cfg[1]}, I={cfg[2]}, H={cfg[3]}: " + "; ".join(parts), v, None)


TRAINED = {1: long_lags, 3: clipping, 4: two_cells, 5: two_cells, 6: slim, 7: forecasting}
MEASURED = {2: vanishing, 8: gate_cost}
