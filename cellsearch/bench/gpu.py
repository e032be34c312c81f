"""One training step (forward over the sequence + backward for every weight gradient) of a cell on
the cuda backend, side by side with torch.nn.LSTM / torch.nn.GRU (cuDNN) on the same GPU; and the
population check: many different cells stepped together (one stream each) against one by one.

Both sides keep their data on the GPU (parameters uploaded once, ``x`` resident; x needs no
gradient, the loss is the sum of the outputs), and every timed call ends with the device
synchronised. Timings are medians of interleaved rounds (ours, torch, ours, torch, ...), each after
an untimed call. ``gpu/run_checks.py`` runs these on a GPU machine; the tests run them on tiny
shapes in Numba's CUDA simulator, so they are known to work before a GPU is at hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import compile, compile_many
from ..ir.params import init_params
from ..ir.random import random_cell
from ..zoo import get
from .kernels import CONFIGS, TORCH_CELLS, step_flops, timing_columns

#: the CPU benchmark's configs, and two larger ones a GPU is for
GPU_CONFIGS: tuple[tuple[int, int, int, int], ...] = (*CONFIGS, (64, 100, 256, 256), (256, 100, 512, 1024))


@dataclass
class GpuRow:
    cell: str
    batch: int
    length: int
    input: int
    hidden: int
    backend: str
    dtype: str
    schedule: str  # the time loop's: "rows" or "units"
    rows_per_block: int | None  # rows schedule
    units_per_block: int | None  # units schedule
    blocks: int  # of the time-loop kernels
    barrier: str | None  # units schedule: "grid" (cooperative groups) or "atomic"
    weight_cache: bool | None  # units schedule: the block's weights in shared memory
    value_cache: bool | None  # units schedule: its elements of the step's values there
    dot_unroll: int  # terms of the time loop's dot products in flight
    split_dot: bool  # units schedule: dot products split over several threads
    warp_dots: bool | None  # units schedule: a warp per rows' dot products, lanes splitting the inner dimension
    warp_rows: int | None  # ... rows at a time
    warp_loads: int | None  # ... loads in flight per row and lane
    fuse_ops: bool | None  # units schedule: the cell's elementwise ops as its own generated code
    median_ms: float
    torch_median_ms: float | None  # torch.nn.LSTM/GRU on the same GPU (cuDNN)
    ratio: float | None  # ours / torch: < 1 is faster
    gflops: float
    torch_gflops: float | None
    device: str


def device_name() -> str:
    from numba import cuda

    try:
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # the simulator's device has no name
        return "CUDA simulator"


def median_interleaved(fns: list[Callable[[], object]], rounds: int) -> list[float]:
    """Median seconds of each fn (which must leave the device synchronised), in rounds ABAB...,
    each timed call after an untimed one."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            fn()
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def _torch_cuda() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _torch_step(torch: Any, name: str, B: int, T: int, I: int, H: int, x: np.ndarray) -> Callable[[], object] | None:
    if name not in TORCH_CELLS:
        return None
    mod = getattr(torch.nn, TORCH_CELLS[name])(I, H).to(device="cuda", dtype=torch.float32)
    tx = torch.tensor(x, device="cuda")

    def step() -> object:
        mod.zero_grad()
        out, _ = mod(tx)
        out.sum().backward()
        torch.cuda.synchronize()
        return out

    return step


@dataclass
class Resident:
    """A cell's kernel with its weights, inputs ``x`` and output gradients (ones) on the device."""

    kernel: Any
    weights: Any
    x: np.ndarray  # [T, B, I] on the host
    xd: Any  # ... and on the device
    d_out: Any

    def step(self) -> object:
        """One training step: the forward, then every weight gradient (x needs none, as torch's)."""
        f = self.kernel.forward_device(self.weights, self.xd)
        g = self.kernel.backward_device(self.weights, f.tape, self.d_out, grad_x=False)
        self.kernel.stream.synchronize()
        return g


def resident(name: str, B: int, T: int, I: int, H: int, seed: int = 0, **options: Any) -> Resident:
    """Zoo cell ``name`` on the cuda backend with its data resident on the device; ``options`` go to
    ``CudaKernel`` (schedule, rows_per_block, ...)."""
    from numba import cuda

    cell = get(name)
    rng = np.random.default_rng(seed)
    I_ = H if cell.x_elementwise else I
    params = init_params(cell, I_, H, rng, dtype=np.float32)
    x = rng.normal(size=(T, B, I_)).astype(np.float32)
    kernel = compile(cell, "cuda", np.float32, **options)
    s = kernel.stream
    return Resident(kernel, kernel.upload(params, I_, H), x, cuda.to_device(x, stream=s),
                    cuda.to_device(np.ones((T, B, H), dtype=np.float32), stream=s))  # fmt: skip


def bench_gpu(
    cells: list[str],
    configs: list[tuple[int, int, int, int]],
    rounds: int = 7,
    with_torch: bool = True,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> list[GpuRow]:
    """A row per (cell, config); ``options`` go to every ``CudaKernel``."""
    torch = _torch_cuda() if with_torch else None
    dev = device_name()
    rows = []
    for name in cells:
        cell = get(name)
        for B, T, I, H in configs:
            if progress:
                progress(f"{name} B={B} T={T} I={I} H={H}")
            res = resident(name, B, T, I, H, **options)
            kernel, ours, x = res.kernel, res.step, res.x
            I_ = x.shape[2]
            fns: list[Callable[[], object]] = [ours]
            theirs = _torch_step(torch, name, B, T, I_, H, x) if torch is not None else None
            if theirs is not None:
                fns.append(theirs)
            for fn in fns:  # warm up (compilation, allocations)
                fn()
            med = median_interleaved(fns, rounds)
            rows.append(
                GpuRow(
                    cell=name,
                    batch=B,
                    length=T,
                    input=I_,
                    hidden=H,
                    backend="cuda",
                    dtype="float32",
                    **_geometry(kernel, B, H),
                    **timing_columns(med, step_flops(cell, B, T, I_, H)),
                    device=dev,
                )
            )
    return rows


def _geometry(kernel: Any, B: int, H: int) -> dict[str, Any]:
    warp = kernel.warp_dots if kernel.schedule_for(B, H) == "units" else None
    return {**_schedule(kernel, B, H), "dot_unroll": kernel.dot_unroll, "split_dot": kernel.split_dot, "warp_dots": warp,
            "warp_rows": kernel.warp_rows if warp else None, "warp_loads": kernel.warp_loads if warp else None,
            "fuse_ops": kernel.fuse_ops if warp is not None else None}  # fmt: skip


def _schedule(kernel: Any, B: int, H: int) -> dict[str, Any]:
    if kernel.schedule_for(B, H) == "units":
        lay = kernel.units_layout(B, H, forward=True)
        barrier = "grid" if kernel._cooperative() else "atomic"
        return {"schedule": "units", "rows_per_block": None, "units_per_block": lay.units, "blocks": lay.blocks,
                "barrier": barrier, "weight_cache": lay.cached, "value_cache": lay.vcache}  # fmt: skip
    rows = kernel._rows(B)
    return {"schedule": "rows", "rows_per_block": rows, "units_per_block": None, "blocks": -(-B // rows), "barrier": None,
            "weight_cache": None, "value_cache": None}  # fmt: skip


def population_throughput(
    n_cells: int = 32, config: tuple[int, int, int, int] = (32, 100, 8, 64), rounds: int = 5, seed: int = 0
) -> dict[str, Any]:
    """``n_cells`` different random cells, one training step each: all enqueued on their own streams
    before any is waited for (concurrent) against each waited for before the next (one by one)."""
    B, T, I, H = config
    rng = np.random.default_rng(seed)
    cells = [random_cell(rng, name=f"random{i}") for i in range(n_cells)]
    params = []
    xs = []
    for c in cells:
        I_ = H if c.x_elementwise else I
        params.append(init_params(c, I_, H, rng, dtype=np.float32))
        xs.append(rng.normal(size=(T, B, I_)).astype(np.float32))
    pop = compile_many(cells, "cuda", np.float32)

    def concurrent() -> object:
        return pop.step(params, xs, concurrent=True)

    def one_by_one() -> object:
        return pop.step(params, xs, concurrent=False)

    concurrent()  # warm up: compilation, allocations
    one_by_one()
    med = median_interleaved([concurrent, one_by_one], rounds)
    return {
        "cells": n_cells,
        "batch": B,
        "length": T,
        "input": I,
        "hidden": H,
        "concurrent_ms": round(med[0] * 1e3, 3),
        "one_by_one_ms": round(med[1] * 1e3, 3),
        "speedup": round(med[1] / med[0], 3),
        "cells_per_second": round(n_cells / med[0], 2),
        "device": device_name(),
    }


def step_breakdown(
    name: str, config: tuple[int, int, int, int], rounds: int = 5, seed: int = 0, **options: Any
) -> dict[str, Any]:
    """Where one training step's time goes (ms, medians, the device synchronised around each part):
    the forward (input GEMM + time loop), the input GEMM alone, the backward (reverse time loop +
    weight-gradient GEMMs + column sums), the weight-gradient GEMMs alone; the time loops by
    difference, and per sequential step."""
    B, T, I, H = config
    res = resident(name, B, T, I, H, seed=seed, **options)
    kernel, step, weights, xd, d_out = res.kernel, res.step, res.weights, res.xd, res.d_out
    p = kernel.plan
    I_ = res.x.shape[2]
    s = kernel.stream
    state: dict[str, Any] = {}

    def fwd() -> object:
        state["f"] = kernel.forward_device(weights, xd)
        s.synchronize()
        return None

    def bwd() -> object:
        fwd()
        t0 = time.perf_counter()
        kernel.backward_device(weights, state["f"].tape, d_out, grad_x=False)
        s.synchronize()
        state["bwd"] = time.perf_counter() - t0
        return None

    ws = kernel._workspace(T, B, I_, H)

    def input_gemm() -> object:
        if p.xblocks:
            kernel.gemm(xd.reshape(T * B, I_), weights.Wx, ws.P, bias=weights.bx)
        s.synchronize()
        return None

    def weight_gemms() -> object:
        x2 = xd.reshape(T * B, I_)
        if p.xblocks:
            kernel.gemm(x2, ws.dP, ws.dWx, ta=True)
        for (koff, zoff, ns, nk), dW in zip(ws.stage_offsets, ws.dWs, strict=True):
            kernel.gemm(ws.K[koff : koff + T * B * ns * H].reshape(T * B, ns * H),
                        ws.DZ[zoff : zoff + T * B * nk * H].reshape(T * B, nk * H), dW, ta=True)  # fmt: skip
        s.synchronize()
        return None

    step()
    bwd()
    med = median_interleaved([fwd, input_gemm, weight_gemms, step], rounds)
    bwd_times = []
    for _ in range(rounds):
        bwd()
        bwd_times.append(state["bwd"])
    ms = [m * 1e3 for m in med]
    backward = float(np.median(bwd_times)) * 1e3
    return {
        "cell": name,
        "config": list(config),
        **_geometry(kernel, B, H),
        "step_ms": round(ms[3], 3),
        "forward_ms": round(ms[0], 3),
        "input_gemm_ms": round(ms[1], 3),
        "backward_ms": round(backward, 3),
        "weight_gemms_ms": round(ms[2], 3),
        "forward_loop_us_per_step": round((ms[0] - ms[1]) * 1e3 / T, 2),
        "backward_loop_us_per_step": round((backward - ms[2]) * 1e3 / T, 2),
    }


def barrier_cost(blocks: int, cooperative: bool, n: int = 1000, threads: int = 256, rounds: int = 5) -> dict[str, Any]:
    """Microseconds per grid barrier of the units schedule (``n`` barriers in one launch of ``blocks``
    blocks, less an empty launch), cooperative groups' grid sync or the atomic counter."""
    from numba import cuda

    from ..backends.cuda.kernels import kernels, unit_kernels

    k = unit_kernels(np.dtype(np.float32), cooperative).barriers
    fill = kernels(np.dtype(np.float32), 1).fill
    s = cuda.stream()
    bar = cuda.device_array(1, dtype=np.int32, stream=s)

    def run(count: int) -> Callable[[], object]:
        def go() -> object:
            fill[1, 1, s](bar, np.int32(0))
            k[blocks, threads, s](count, bar)
            s.synchronize()
            return None

        return go

    full, empty = median_interleaved([run(n), run(0)], rounds)
    return {
        "blocks": blocks,
        "barrier": "grid" if cooperative else "atomic",
        "barriers": n,
        "us_per_barrier": round((full - empty) / n * 1e6, 3),
        "device": device_name(),
    }


def loop_attribution(
    name: str, config: tuple[int, int, int, int], rounds: int = 5, seed: int = 0, **options: Any
) -> dict[str, Any]:
    """Where the time loops' time goes: the forward and backward loops (µs a sequential step, the
    GEMMs outside the loop excluded) run on the cell's op table, on it without its elementwise ops,
    without its GEMM stages, and with no op at all (what remains: the loop itself, the state and
    output copies). The kernels interpret whatever table they are given, so the partial tables time
    the same compiled code; their results are meaningless and discarded. (Not with ``fuse_ops``: the
    cell's own code runs its ops whatever the table says.)"""
    from numba import cuda

    if options.get("fuse_ops"):
        raise ValueError("loop_attribution times the interpreter on partial op tables; fuse_ops runs the cell's own code")

    from ..backends.cuda.kernels import OP_CONST, OP_GEMM
    from ..backends.tables import C_AUX, C_CODE

    B, T, I, H = config
    res = resident(name, B, T, I, H, seed=seed, **options)
    kernel, weights, xd, d_out = res.kernel, res.weights, res.xd, res.d_out
    I_ = res.x.shape[2]
    s = kernel.stream
    ws = kernel._workspace(T, B, I_, H)
    full_ops, full_mirror = ws.ops, ws.mirror
    host_ops = full_ops.copy_to_host()
    host_mops = full_mirror[0].copy_to_host()
    gemm = host_ops[:, C_CODE] == OP_GEMM
    keep = {"all": np.ones(len(host_ops), bool), "no_elementwise": gemm, "no_gemm": ~gemm, "none": np.zeros(len(host_ops), bool)}
    tables = {}
    for label, rows in keep.items():
        ops, mops = host_ops[rows], host_mops[rows]
        if not len(ops):  # no op: one constant (a copy of nothing into a slot) stands in, as device arrays need an element
            ops, mops = host_ops[:1].copy(), host_mops[:1].copy()
            ops[0, C_CODE], ops[0, C_AUX] = OP_CONST, 0
        tables[label] = (
            cuda.to_device(np.ascontiguousarray(ops), stream=s),
            cuda.to_device(np.ascontiguousarray(mops), stream=s),
        )

    def run(direction: str, tape: Any) -> float:
        t0 = time.perf_counter()
        if direction == "forward":
            kernel.forward_device(weights, xd)
        else:
            kernel.backward_device(weights, tape, d_out, grad_x=False)
        s.synchronize()
        return time.perf_counter() - t0

    try:
        out: dict[str, Any] = {"cell": name, "config": list(config), **_geometry(kernel, B, H)}
        for direction in ("forward", "backward"):
            for label in keep:
                ws.ops, ws.mirror = tables[label][0], (tables[label][1], *full_mirror[1:])
                tape = kernel.forward_device(weights, xd).tape  # the backward's tape (and a warm-up)
                run(direction, tape)  # untimed
                times = [run(direction, tape) for _ in range(rounds)]
                out[f"{direction}_{label}_ms"] = round(float(np.median(times)) * 1e3, 3)
        return out
    finally:
        ws.ops, ws.mirror = full_ops, full_mirror
