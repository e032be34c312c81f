"""Running the claims: every trained arm as evaluations in the store (one run, ``claims-SCALE``), the
two measurements that need no training (gradient reach, gate cost) in the run's summary, then the
verdicts, figures and ``summary.md``.

Running the same command again resumes: evaluations already in the store are not trained again
(the same cell trained the same way is the same evaluation, in any run), and stored measurements
are reused.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import zoo
from ..errors import ConfigError
from ..reproduce.run import Progress, run_study
from ..search.config import evaluation_options
from ..search.evaluation import EvalSpec
from ..search.executor import Executor
from ..store.store import Store
from ..tasks import make_task
from ..train.loop import make_hp
from .analysis import LEARNED, MEASURED, TRAINED, ArmResult, Verdict
from .experiments import Arm, Claim, claims


def run_name(scale: str, seed: int) -> str:
    return f"claims-{scale}" + (f"-s{seed}" if seed else "")


def seeds_of(claim: Claim, seed: int) -> list[int]:
    """The training seeds of a claim's arms: 0..n-1 for the default seed 0, shifted by 1000 per seed."""
    return [1000 * seed + i for i in range(claim.seeds)]


def arm_specs(claim: Claim, arm: Arm, seed: int) -> list[EvalSpec]:
    cell = zoo.get(arm.cell)
    options = evaluation_options(arm.task, dict(arm.options))
    hp = dataclasses.asdict(make_hp(**arm.hp))
    return [EvalSpec(cell.hash, cell.text, arm.task, options, hp, s) for s in seeds_of(claim, seed)]


def check_cells(items: list[Claim]) -> None:
    """Every cell the claims name is in the zoo (the SLIM cells ship with it)."""
    for c in items:
        for name in c.cells:
            zoo.get(name)


def config(scale: str, seed: int, items: list[Claim]) -> dict[str, Any]:
    return {
        "kind": "claims",
        "scale": scale,
        "seed": seed,
        "claims": [
            {
                "number": c.number,
                "slug": c.slug,
                "quote": c.quote,
                "kind": c.kind,
                "seeds": seeds_of(c, seed),
                "settings": c.settings,
                "arms": [
                    {"label": a.label, "cell": a.cell, "task": a.task, "keys": [s.key for s in arm_specs(c, a, seed)]}
                    for a in c.arms
                ],
            }
            for c in items
        ],
    }


def open_run(store: Store, name: str, cfg: dict[str, Any]) -> int:
    try:
        row = store.run_by_name(name)
    except ConfigError:
        return store.create_run(name, cfg, cfg["seed"])
    if row.config.get("kind") != "claims" or row.config.get("scale") != cfg["scale"]:
        raise ConfigError(f"run '{name}' in {store.url} is not a claims run at scale {cfg['scale']}; pick another --name")
    if row.config != cfg:  # a newer cellsearch changed an experiment: keep the run, follow the new definition
        store.update_run(row.id, config=cfg)
    return row.id


def all_specs(items: list[Claim], seed: int) -> list[EvalSpec]:
    """Every evaluation, seed-major (all arms' first seed, then the second...), each once."""
    by_key: dict[str, EvalSpec] = {}
    most = max((c.seeds for c in items), default=0)
    for i in range(most):
        for c in items:
            if i >= c.seeds:
                continue
            for a in c.arms:
                s = arm_specs(c, a, seed)[i]
                by_key.setdefault(s.key, s)
    return list(by_key.values())


# ---- measurements that need no training --------------------------------------------------------


def measure_reach(claim: Claim, seed: int, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Gradient flow at initialisation for each (cell, initialisation, seed): reach and the norm at the
    longest lag over the norm at lag 0, and the curve of the first seed (for the figure)."""
    from ..inspect.diagnostics import diagnose

    st = claim.settings
    rows, curves = [], []
    for name in st["cells"]:
        for init in st["inits"][name]:
            how = ",".join(f"{k}={v}" for k, v in init.items()) or "default"
            how = "chrono" if init.get("gate_init") == "chrono" else how.replace("forget_bias=1.0", "forget bias 1")
            for i in range(st["seeds"]):
                if progress:
                    progress(f"claim {claim.number}: gradient flow of {name} ({how}), seed {i}")
                hp = make_hp(**st["hp"], **init)
                d = diagnose(zoo.get(name), st["task"], st["options"], hp, seed=1000 * seed + i, trajectory=False)
                curve = [v if v is not None else 0.0 for v in d["grad_norm_by_lag"]]
                ratio = curve[-1] / curve[0] if curve and curve[0] > 0 else None
                rows.append(
                    {
                        "cell": name,
                        "init": how,
                        "seed": 1000 * seed + i,
                        "reach": d["reach"] if d["reached"] else d["max_lag"] + 1,
                        "ratio_at_max_lag": ratio,
                        "decay_rate": d.get("decay_rate"),
                    }
                )
                if i == 0:
                    label = name if how == "default" else f"{name} ({how})"
                    keep = ("grad_norm_by_lag", "reach", "reached", "max_lag", "trained", "task", "task_options")
                    curves.append({**{k: d[k] for k in keep}, "hp": {"hidden": d["hp"]["hidden"]}, "cell": label})
    max_lag = curves[0]["max_lag"] if curves else 0
    return {"rows": rows, "curves": curves, "max_lag": max_lag}


def fastest_interleaved(fns: list[Callable[[], object]], rounds: int, calls: int = 3) -> list[float]:
    """Per function, the fastest of ``rounds`` interleaved rounds of the mean time of ``calls`` calls.
    On a shared machine a round can only be slowed down by others, never sped up: the minimum is the
    estimate of what the code itself costs (the median of a loaded machine's rounds is not)."""
    best = [math.inf] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / calls)
    return best


def measure_cost(claim: Claim, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Parameters and the time of one training step (forward + BPTT) per cell, single-threaded (as a
    search's worker runs it), the fastest of interleaved rounds."""
    from ..backends import compile
    from ..ir.params import init_params

    st = claim.settings
    B, T, I, H = st["config"]
    fns: list[Callable[[], object]] = []
    rows: list[dict[str, Any]] = []
    for name in st["cells"]:
        if progress:
            progress(f"claim {claim.number}: compiling {name}")
        cell = zoo.get(name)
        rng = np.random.default_rng(0)
        I_ = H if cell.x_elementwise else I
        params = init_params(cell, I_, H, rng, dtype=np.float32)
        x = rng.normal(size=(T, B, I_)).astype(np.float32)
        d_out = np.ones((T, B, H), dtype=np.float32)
        kernel = compile(cell, "cpu", np.float32, threads=1)

        def step(kernel: Any = kernel, params: dict = params, x: np.ndarray = x, d_out: np.ndarray = d_out) -> object:
            f = kernel.forward(params, x)
            return kernel.backward(params, f.tape, d_out, grad_x=False)

        step()  # compile and warm up
        fns.append(step)
        rows.append({"cell": name, "params": int(sum(v.size for v in params.values())), "input": I_})
    if progress:
        progress(f"claim {claim.number}: timing {len(fns)} cells")
    times = fastest_interleaved(fns, st["rounds"])
    for r, t in zip(rows, times, strict=True):
        r["step_ms"] = round(t * 1e3, 3)
    return {"rows": rows, "config": [B, T, I, H]}


# ---- reading the results back ------------------------------------------------------------------


def _param_count(arm: Arm) -> int | None:
    """The model's parameters (cell, encoder and head) for an arm, from its hyperparameters."""
    from ..model import Model

    hp = make_hp(**arm.hp)
    try:
        task = make_task(arm.task, **arm.options)
        model = Model(zoo.get(arm.cell), task, hp.hidden, hp.embed or None, "reference", np.float64, hp.layers, hp.bidirectional)
        return int(sum(v.size for v in model.init(np.random.default_rng(0)).values()))
    except Exception:  # a data task without its data: no count, the rest of the report still stands
        return None


def arm_results(store: Store, claim: Claim, seed: int) -> list[ArmResult]:
    out = []
    for arm in claim.arms:
        specs = arm_specs(claim, arm, seed)
        rows = store.evaluations_by_key([s.key for s in specs])
        task = make_task(arm.task, **arm.options)
        base = _test_baseline(arm)
        res = ArmResult(arm.label, arm.cell, arm.task, task.metric, task.higher_is_better, params=_param_count(arm))
        res.baseline = base.get(task.metric)
        # other predictors in the same metric (persistence_nrmse -> "persistence"), not other metrics
        suffix = f"_{task.metric}"
        res.extra_baselines = {k.removesuffix(suffix): v for k, v in base.items() if k.endswith(suffix)}
        for s in specs:
            r = rows.get(s.key)
            res.statuses.append(r.status if r is not None else "missing")
            res.tests.append(r.test if r is not None else None)
            res.test_losses.append(r.test_loss if r is not None else None)
            if task.higher_is_better:
                res.learned_at.append(_learned_at(r.history if r is not None else [], task.metric))
        out.append(res)
    return out


def _learned_at(history: list[dict[str, Any]], metric: str) -> int | None:
    for h in history or []:
        v = h.get(f"valid_{metric}")
        if v is not None and v >= LEARNED:
            return int(h["step"])
    return None


def _test_baseline(arm: Arm) -> dict[str, float]:
    """The baselines of the split the test metric is measured on (as ``evaluate`` reports them)."""
    from ..train.loop import _split_tasks

    try:
        _, _, test_task = _split_tasks(arm.task, dict(arm.options))
        return {k: float(v) for k, v in test_task.baseline().items() if v is not None and math.isfinite(float(v))}
    except ConfigError:
        return {}


def verdicts(store: Store, run_id: int, items: list[Claim], seed: int) -> tuple[list[Verdict], dict[str, list[ArmResult]]]:
    summary = store.run_by_id(run_id).summary or {}
    out: list[Verdict] = []
    arms: dict[str, list[ArmResult]] = {}
    for c in items:
        if c.kind == "train":
            arms[str(c.number)] = res = arm_results(store, c, seed)
            out.append(TRAINED[c.number](c, res))
        else:
            m = summary.get(c.slug)
            out.append(MEASURED[c.number](c, m) if m else Verdict(c.number, "not measured", "inconclusive at this scale"))
    return out, arms


def run_claims(
    store: Store,
    scale: str,
    seed: int,
    executor: Executor,
    name: str | None = None,
    on_result: Callable[[Progress, dict[str, Any] | None], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> tuple[int, list[Claim]]:
    """Train what the store lacks and measure what the run's summary lacks; the run's id and the claims."""
    items = claims(scale)
    check_cells(items)
    cfg = config(scale, seed, items)
    run_id = open_run(store, name or run_name(scale, seed), cfg)
    specs = all_specs(items, seed)
    run_study(store, run_id, specs, executor, on_result)
    t0 = time.perf_counter()
    summary = dict(store.run_by_id(run_id).summary or {})
    for c in items:
        if c.kind == "train" or c.slug in summary:
            continue
        summary[c.slug] = measure_reach(c, seed, on_step) if c.kind == "reach" else measure_cost(c, on_step)
        store.update_run(run_id, summary=summary)
    row = store.run_by_id(run_id)
    store.update_run(run_id, seconds=row.seconds + time.perf_counter() - t0)  # run_study counted the training
    return run_id, items
