"""The cuda backend's kernels as PTX, without a GPU (NVVM does the compiling): the signatures every
kernel is launched with, and what the PTX holds.

The time loops are bound by the number of instructions they execute (gpu/README.md, Nsight
Compute), and most of those are integer and control instructions around the arithmetic. On a
machine without a GPU, the PTX's instruction mix is the proxy we have for that: ``counts`` sorts a
kernel's instructions into classes (``python3 gpu/ptx_counts.py`` prints them for the time-loop
kernels). It counts instructions in the code, not instructions executed; a GPU's profiler says
what runs.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Any

import numpy as np

#: (dot_unroll, warp, warp_rows, warp_loads) of the units kernels compiled: thread dots (eight
#: terms in flight in float32), warp dots at the defaults and at the most registers
UNITS_VARIANTS = {
    np.dtype(np.float32): ((8, False, 4, 4), (4, True, 4, 4), (4, True, 2, 8), (4, True, 1, 16)),
    np.dtype(np.float64): ((4, False, 4, 4), (4, True, 4, 4)),
}


#: cells whose fused units kernels (``CudaKernel(fuse_ops=True)``) are compiled too, float32, warp 4 x 4 (one: each
#: adds ~30 s of NVVM to the test suite)
FUSED_CELLS = ("lstm",)


def fused_program(name: str) -> Any:
    """The zoo cell ``name``'s ``fused.program`` as the forward with the input projection mirrored
    sees it (a program does not depend on the shape)."""
    from ... import zoo
    from ...lowering import lower
    from ..tables import tables
    from .fused import program
    from .kernel import mirror_tables

    plan = lower(zoo.get(name))
    tb = tables(plan, 2, 2, 2)
    return program(tb, mirror_tables(plan, tb, 2, 2, 2, True)[0], 4), True


def signatures(dtype: Any, cooperative: tuple[bool, ...] = (False,), units_only: bool = False) -> list[tuple[str, Any, tuple]]:
    """(label, kernel, Numba signature) for every kernel of ``dtype`` as the host launches it: the rows
    schedule's loops at a few rows per block, the tiled GEMM and its helpers, and the units
    schedule's loops in ``UNITS_VARIANTS`` with each barrier in ``cooperative`` (the grid sync's
    typing asks the driver for the device: only where there is one)."""
    from numba import typeof, types

    from .kernels import ROWS, gemm_kernel, kernels, unit_kernels

    dt = np.dtype(dtype)

    def arr(nd: int, t: Any) -> Any:
        return types.Array(typeof(np.dtype(t).type(0)), nd, "C")

    i64 = types.int64
    B_ = types.boolean

    def I(n: int) -> Any:  # noqa: E743 - the tables' int64 arrays
        return arr(n, np.int64)

    def F(n: int) -> Any:
        return arr(n, dt)

    def Um(n: int) -> Any:  # the units schedule's mirror tables
        return arr(n, np.uint64)

    out: list[tuple[str, Any, tuple]] = []
    if not units_only:
        for rows, unroll in ((ROWS[0], 4), (ROWS[-1], 8)) if dt == np.float32 else ((ROWS[1], 4),):
            ks = kernels(dt, rows, unroll)
            fwd = (I(2), I(2), I(3), I(3), i64, i64, i64, I(1), I(1), I(2), F(1), F(2), F(3), F(2), F(1), F(2), F(2), F(1),
                   F(1), F(3), F(3))  # fmt: skip
            bwd = (I(2), I(2), I(3), I(3), i64, i64, i64, F(1), I(1), I(1), i64, F(3), F(2), F(2), F(1), F(1), F(1), F(2),
                   F(3), F(2), F(2))  # fmt: skip
            tag = f"rows{rows}-unroll{unroll}"
            out += [(f"forward_loop {tag}", ks.forward_loop, fwd), (f"backward_loop {tag}", ks.backward_loop, bwd),
                    ("column_sums", ks.column_sums, (F(2), F(1))), ("fill", ks.fill, (F(1), typeof(dt.type(0))))]  # fmt: skip
            if rows == ROWS[-1] or dt == np.float64:
                g = gemm_kernel(dt)
                out += [
                    ("gemm", g, (F(2), F(2), F(3), F(1), *[B_] * 4, i64)),
                    ("gemm.sum_parts", g.sum_parts, (F(3), F(2), F(1), *[B_] * 2)),
                ]
    bar = arr(1, np.int32)
    head = (I(2), I(2), I(3), I(3), Um(2), Um(3), Um(3), Um(1), i64, i64, i64, i64, i64, B_, i64, B_, B_)
    fwd_u = (*head, i64, I(1), I(1), I(2), F(1), F(2), F(3), F(2), F(1), F(2), F(2), F(1), F(1), F(3), F(3), bar)
    bwd_u = (*head, i64, F(1), I(1), I(1), i64, F(3), F(2), F(2), F(1), F(1), F(1), F(2), F(3), F(2), F(2), bar)
    for coop in cooperative:
        for unroll, warp, wrows, wloads in UNITS_VARIANTS[dt]:
            uk = unit_kernels(dt, coop, unroll, warp, wrows, wloads)
            tag = (f"warp {wrows}x{wloads}" if warp else f"thread unroll{unroll}") + (" grid" if coop else " atomic")
            out += [(f"forward_units {tag}", uk.forward_units, fwd_u), (f"backward_units {tag}", uk.backward_units, bwd_u),
                    (f"barriers {tag}", uk.barriers, (i64, bar))]  # fmt: skip
        for name in FUSED_CELLS if dt == np.float32 else ():
            uk = unit_kernels(dt, coop, 4, True, 4, 4, fused_program(name))
            tag = f"fused {name} warp 4x4" + (" grid" if coop else " atomic")
            out += [(f"forward_units {tag}", uk.forward_units, fwd_u), (f"backward_units {tag}", uk.backward_units, bwd_u)]
    return out


def compile_ptx(kernel: Any, sig: tuple, cc: tuple[int, int] = (9, 0)) -> str:
    """The kernel's PTX for compute capability ``cc`` (NVVM must be installed; no GPU needed)."""
    from numba import cuda

    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
    return str(ptx)


@functools.cache
def _signatures(dtype: str, cooperative: bool) -> dict[str, tuple[Any, tuple]]:
    return {label: (kernel, sig) for label, kernel, sig in signatures(dtype, (cooperative,))}


def compile_counts(dtype: str, label: str, cooperative: bool = False) -> dict[str, float]:
    """``counts`` of the PTX of the kernel ``label`` of ``signatures(dtype, (cooperative,))``, and
    ``local_text``: 1 where the PTX mentions local memory at all (a declaration included), else 0. A
    function of plain values, so that a process pool can compile the kernels side by side (each
    compile is single-threaded NVVM work: the units loops take 10-15 s each)."""
    kernel, sig = _signatures(dtype, cooperative)[label]
    ptx = compile_ptx(kernel, sig)
    return {**counts(ptx), "local_text": int(".local" in ptx)}


_INSTRUCTION = re.compile(r"^\s+(?:@!?%p\d+\s+)?([a-z][a-z0-9]*)((?:\.[a-z0-9]+)*)")
_CLASSES = {
    "float": ("fma", "add", "sub", "mul", "neg", "abs", "min", "max", "ex2", "rcp", "div", "sqrt", "tanh", "lg2"),
    "memory": ("ld", "st", "atom", "red"),
    "control": ("bra", "setp", "selp", "bar", "ret", "call", "exit", "membar", "fence"),
    "warp": ("shfl",),
}
_FLOAT_TYPES = (".f32", ".f64", ".f16")


def _blocks(ptx: str) -> list[list[str]]:
    """The PTX's basic blocks (split at labels and after branches), as lists of instructions."""
    out: list[list[str]] = [[]]
    for line in ptx.splitlines():
        if re.match(r"^\$\w+:", line):
            out.append([])
            continue
        m = _INSTRUCTION.match(line)
        if m is None:
            continue
        out[-1].append(line)
        if m.group(1) in ("bra", "ret", "exit"):
            out.append([])
    return [b for b in out if b]


def counts(ptx: str) -> dict[str, float]:
    """The PTX's instructions (lines that are instructions, not directives or labels): ``total``;
    by class — ``float`` (arithmetic on floating-point values), ``memory`` (loads, stores,
    atomics), ``control`` (branches, compares, selects, barriers), ``warp`` (shuffles), ``integer``
    (the rest: index arithmetic, conversions, moves); and three that should stay at zero or low:
    ``div64`` (64-bit integer divisions and remainders: a long instruction sequence each),
    ``f64`` (instructions on float64 values) and ``local`` (local-memory accesses). And
    ``per_fma``: the instructions of the basic blocks that hold fused multiply-adds per such
    multiply-add — how much index arithmetic, testing and loading surrounds the GEMM stages' inner
    loops (and the few elementwise ops with an fma), which the code's total hides: a loop
    unrolled in two versions has more code and executes less of it."""
    c: Counter[str] = Counter()
    for line in ptx.splitlines():
        m = _INSTRUCTION.match(line)
        if m is None or line.rstrip().endswith(":"):
            continue
        op, suffix = m.group(1), m.group(2)
        c["total"] += 1
        if op in _CLASSES["memory"]:
            c["memory"] += 1
        elif op in _CLASSES["control"]:
            c["control"] += 1
        elif op in _CLASSES["warp"]:
            c["warp"] += 1
        elif op in _CLASSES["float"] and suffix.endswith(_FLOAT_TYPES):
            c["float"] += 1
        else:
            c["integer"] += 1
        if op in ("div", "rem") and suffix.endswith(("s64", "u64")):
            c["div64"] += 1
        if ".f64" in suffix:
            c["f64"] += 1
        if ".local" in suffix:
            c["local"] += 1
    blocks = _blocks(ptx)
    fma = [sum(1 for line in b if re.match(r"^\s+(?:@!?%p\d+\s+)?fma\.", line)) for b in blocks]
    in_fma = sum(len(b) for b, n in zip(blocks, fma, strict=True) if n)
    out: dict[str, float] = {k: c[k] for k in ("total", "float", "memory", "control", "warp", "integer", "div64", "f64", "local")}
    out["per_fma"] = round(in_fma / max(sum(fma), 1), 2)
    return out
