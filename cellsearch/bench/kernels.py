"""One training step (forward over the sequence + backward for every gradient) of a cell on a
backend, side by side with torch.nn.LSTM / torch.nn.GRU on the CPU in the same process.

Timings are medians of interleaved rounds (ours, torch, ours, torch, ...); at each switch a pause
lets the other library's spinning threads go quiet and one untimed call warms up, since the machines
here are shared and noisy; compare ratios within one run only. GFLOP/s counts the matrix products
a step needs (``step_flops``: forward and weight gradient for every weight, the gradient through
every weight whose input needs one, which x does not) against this machine's float32 matmul peak,
measured in the same run through the same BLAS as the kernels.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

import numpy as np

from ..backends import compile
from ..errors import ConfigError
from ..ir.cell import Cell
from ..ir.ops import Op
from ..ir.params import init_params, param_specs
from ..zoo import get

CONFIGS: tuple[tuple[int, int, int, int], ...] = (
    (32, 100, 8, 64),
    (64, 200, 32, 128),
    (128, 100, 64, 256),
    (16, 1000, 4, 32),
    (1, 100, 8, 64),
)
TORCH_CELLS = {"lstm": "LSTM", "gru": "GRU"}


@dataclass
class Row:
    cell: str
    batch: int
    length: int
    input: int
    hidden: int
    backend: str
    median_ms: float
    torch_median_ms: float | None
    ratio: float | None  # ours / torch: < 1 is faster
    gflops: float
    torch_gflops: float | None
    peak_gflops: float
    percent_of_peak: float


def step_flops(cell: Cell, B: int, T: int, I: int, H: int) -> float:
    """The floating-point operations of the matrix products one training step needs: the
    forward's and the weight gradient's for every weight, and the gradient through every weight
    whose input needs one — one that depends on a state or a parameter; ``x`` needs none here, as in
    torch's step. The elementwise work is not counted."""
    specs = param_specs(cell, I, H)
    owners = {s.node for s in specs}
    needs: list[bool] = []  # by node (the nodes are in topological order): does its gradient count?
    for i, node in enumerate(cell.nodes):
        needs.append(node.op is Op.STATE or i in owners or any(needs[a] for a in node.args))
    macs = 0
    for s in specs:
        if s.role == "weight":
            assert s.arg is not None
            macs += (3 if needs[cell.nodes[s.node].args[s.arg]] else 2) * s.shape[0] * s.shape[1]
    return 2.0 * B * T * macs


def median_interleaved(fns: list[Callable[[], object]], rounds: int, pause: float = 0.25) -> list[float]:
    """Median seconds of each fn, timed in rounds ABAB... At each switch: a pause (so the other
    library's spinning threads go quiet), then one untimed call (so neither pays for waking up)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            time.sleep(pause)
            fn()
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


class Timing(TypedDict):
    median_ms: float
    torch_median_ms: float | None
    ratio: float | None  # ours / torch: < 1 is faster
    gflops: float
    torch_gflops: float | None


def timing_columns(med: list[float], flops: float) -> Timing:
    """A row's timing columns from the medians (seconds: ours, then torch's where it ran) and the
    step's flops: median_ms, torch_median_ms, ratio (ours / torch), gflops, torch_gflops."""
    t = med[1] if len(med) > 1 else None
    return Timing(
        median_ms=round(med[0] * 1e3, 3),
        torch_median_ms=None if t is None else round(t * 1e3, 3),
        ratio=None if t is None else round(med[0] / t, 3),
        gflops=round(flops / med[0] / 1e9, 2),
        torch_gflops=None if t is None else round(flops / t / 1e9, 2),
    )


def matmul_peak(rounds: int = 7, n: int = 1024) -> float:
    """float32 GFLOP/s of an n x n matmul through the kernels' BLAS (best of a few, as a peak)."""
    from ..backends.cpu import interp

    a = np.ones((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    interp.gemm(a, a, out)
    best = min(_timed(lambda: interp.gemm(a, a, out)) for _ in range(rounds))
    return 2.0 * n**3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _torch_step(torch: Any, name: str, B: int, T: int, I: int, H: int, x: np.ndarray) -> Callable[[], object] | None:
    if name not in TORCH_CELLS:
        return None
    mod = getattr(torch.nn, TORCH_CELLS[name])(I, H, dtype=torch.float32)
    tx = torch.tensor(x)

    def step() -> object:
        mod.zero_grad()
        out, _ = mod(tx)
        out.sum().backward()
        return out

    return step


def bench_kernels(
    cells: list[str],
    configs: list[tuple[int, int, int, int]],
    backend: str = "cpu",
    rounds: int = 7,
    threads: int = 2,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    torch: Any
    try:
        import torch
    except ImportError:  # the oracle is a test extra; without it there is no comparison column
        torch = None
    if torch is not None:
        torch.set_num_threads(threads)
    peaks = [matmul_peak()]  # re-measured before every config: the host's speed drifts; the best counts
    rows = []
    for name in cells:
        cell = get(name)
        for B, T, I, H in configs:
            if progress:
                progress(f"{name} B={B} T={T} I={I} H={H}")
            rng = np.random.default_rng(0)
            I_ = H if cell.x_elementwise else I
            params = init_params(cell, I_, H, rng, dtype=np.float32)
            x = rng.normal(size=(T, B, I_)).astype(np.float32)
            d_out = np.ones((T, B, H), dtype=np.float32)
            kernel = compile(cell, backend, np.float32, **({"threads": threads} if backend == "cpu" else {}))

            def ours(kernel: Any = kernel, params: dict = params, x: np.ndarray = x, d_out: np.ndarray = d_out) -> object:
                f = kernel.forward(params, x)
                return kernel.backward(params, f.tape, d_out, grad_x=False)  # as torch: x needs no gradient

            fns: list[Callable[[], object]] = [ours]
            theirs = _torch_step(torch, name, B, T, I_, H, x) if torch is not None else None
            if theirs is not None:
                fns.append(theirs)
            for fn in fns:  # warm up (compilation, caches, allocations)
                fn()
            peaks.append(matmul_peak())
            med = median_interleaved(fns, rounds)
            rows.append(
                Row(
                    cell=name,
                    batch=B,
                    length=T,
                    input=I_,
                    hidden=H,
                    backend=backend,
                    **timing_columns(med, step_flops(cell, B, T, I_, H)),
                    peak_gflops=0.0,  # filled in below, from the best of all peak measurements
                    percent_of_peak=0.0,
                )
            )
    peak = max(peaks)
    for r in rows:
        r.peak_gflops = round(peak, 1)
        r.percent_of_peak = round(100 * r.gflops / peak, 1)
    return rows


def parse_config(text: str) -> tuple[int, int, int, int]:
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4 or min(parts) < 1:
        raise ConfigError(f"a config is batch,length,input,hidden (four positive integers), e.g. 32,100,8,64; got '{text}'")
    return parts


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba

    info["numba"] = numba.__version__
    info["numpy"] = np.__version__
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


#: the compiler issue's targets: ours / torch at most this, by cell (LSTM at least as fast, GRU 2x faster) ...
RATIO_TARGETS = {"lstm": 1.0, "gru": 0.5}
#: ... and at this config at least this share of the measured matmul peak
PEAK_CONFIG, PEAK_TARGET = (128, 100, 64, 256), 50.0


def verdicts(rows: list[Row]) -> list[str]:
    """A line per target the rows can judge: the ratio targets by cell (how many configs meet it,
    and each miss with its ratio), and the share of the peak at ``PEAK_CONFIG``."""
    lines = []
    for cell, target in RATIO_TARGETS.items():
        judged = [r for r in rows if r.cell == cell and r.ratio is not None]
        if not judged:
            continue
        missed = [r for r in judged if r.ratio is not None and r.ratio > target]
        what = "at least as fast as torch" if target == 1.0 else f"{1 / target:g}x faster than torch"
        line = f"{cell} {what} (ours/torch <= {target:g}): met at {len(judged) - len(missed)} of {len(judged)} configs"
        if missed:
            line += "; missed at " + ", ".join(f"{r.batch},{r.length},{r.input},{r.hidden} ({r.ratio:.3f})" for r in missed)
        lines.append(line)
    for r in rows:
        if (r.batch, r.length, r.input, r.hidden) == PEAK_CONFIG and r.cell in RATIO_TARGETS:
            state = "met" if r.percent_of_peak >= PEAK_TARGET else "missed"
            lines.append(f"{r.cell} at {','.join(map(str, PEAK_CONFIG))}: {r.percent_of_peak:.1f} % of the peak "
                         f"(target >= {PEAK_TARGET:g} %): {state}")  # fmt: skip
    return lines


def rows_as_dicts(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
