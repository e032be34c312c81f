"""A cell's elementwise ops as straight-line device code for the units schedule's mirror path
(``CudaKernel(fuse_ops=True)``): compiled once per cell, not once for every cell.

The compile-once executor (``kernels.unit_kernels``) interprets the step program: for every op of
every step it reads the op's row of the tables, finds its operands' places, and dispatches on its
opcode for each element. On the H200 that interpretation was most of what the time loop executes
(gpu/README.md, session 10: ~90 % integer and control instructions; 0.7-0.9 µs an elementwise op).
Here the ops between two GEMM stages (a **segment**) become one generated device function body: a
single loop over the thread's elements that runs every op of the segment for the element, its
opcodes and mirror slots constants, the operands it computed itself kept in registers (shared
memory is still written: the GEMM stages, later segments and the tape read it there), so no table
read, dispatch or per-op loop remains per element. The backward's segment keeps the gradients it
accumulates in registers and writes each back once, at the segment's end.

Each element's arithmetic is the interpreter's, op for op and in the same order (the same
expressions), so the results are the same bits (``tests/backends/test_cuda.py`` checks that in
the simulator). What it costs is a compilation per cell (and per pmirror choice), so it is an option
for long trainings of one cell — the benchmarks, ``reproduce`` — not for a search's population.

The generated source is Python that Numba compiles: built here from the Plan's tables (opcodes,
slot numbers), never from user text.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numba import cuda

from ..tables import C_AUX, C_BG, C_CODE, C_DC, C_DM, Tables

# opcodes (kernels.OP_*; kept in step with lowering.Code by tests/test_tables.py)
STATE, X, CONST, LOADP, BIAS, GEMM, ADD, SUB, MUL, BLEND, SIGMOID, TANH, RELU, PEEP = range(14)


class FusedOp(NamedTuple):
    """One elementwise op as the generator needs it: its row ``r`` in the op table, opcode, aux,
    flag (a STATE op copies its state when 1); the mirror slots of d, a, b, c at an even and at an
    odd step (slot numbers: the offsets are these times the mirror's stride E), its gradient slots
    (d, a, b, c), and whether its result is taped (written to the arena every step) or a scratch
    value (written at the last step)."""

    r: int
    code: int
    aux: int
    flag: int
    slots: tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]
    gslots: tuple[int, int, int, int]
    taped: bool
    scratch: bool


#: the segments of a step program, in order: each the elementwise ops between two GEMM stages
Program = tuple[tuple[FusedOp, ...], ...]


def program(tb: Tables, mops: np.ndarray, E: int) -> Program:
    """The step program's segments from its op table and its mirror table (``kernel.mirror_tables``,
    offsets in elements, E apart): independent of the shape, so one compilation serves a cell at any
    (T, B, H) with the same mirror choices."""
    segments: list[tuple[FusedOp, ...]] = []
    cur: list[FusedOp] = []
    for r, row in enumerate(tb.ops):
        code = int(row[C_CODE])
        if code == GEMM:
            segments.append(tuple(cur))
            cur = []
            continue
        m = [int(v) // E for v in mops[r]]
        slots = ((m[0], m[4]), (m[1], m[5]), (m[2], m[6]), (m[3], m[7]))
        dm = int(row[C_DM])
        scratch = dm == 0 and int(row[C_DC]) >= tb.scratch0
        cur.append(FusedOp(r, code, int(row[C_AUX]), int(row[C_BG]), slots, (m[8], m[9], m[10], m[11]), dm != 0, scratch))
    segments.append(tuple(cur))
    return tuple(s for s in segments if s)


class _Segment:
    """The lines of one segment's branch of a generated function: offsets hoisted out of the element
    loop (depth 2), the loop's body (depth 3), and which slots' values and gradients the body already
    holds in registers."""

    def __init__(self, lines: list[str], counter: list[int]) -> None:
        self.lines = lines
        self.counter = counter
        self.offs: dict[tuple[int, int], str] = {}  # a value slot pair's offset variable
        self.goffs: dict[int, str] = {}  # a gradient slot's offset variable
        self.vals: dict[tuple[int, int], str] = {}  # a value slot pair's register in the loop body
        self.grads: dict[int, str] = {}  # a gradient slot's register
        self.dirty: list[int] = []  # gradient slots to write back at the body's end

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def fresh(self, stem: str) -> str:
        self.counter[0] += 1
        return f"{stem}{self.counter[0]}"

    def off(self, pair: tuple[int, int]) -> str:
        if pair not in self.offs:
            self.offs[pair] = name = self.fresh("o")
            even, odd = pair
            sel = f"u({even})" if even == odd else f"(u({even}) if par == 0 else u({odd}))"
            self.emit(2, f"{name} = v_at + {sel} * Eu")
        return self.offs[pair]

    def goff(self, slot: int) -> str:
        if slot not in self.goffs:
            self.goffs[slot] = name = self.fresh("q")
            self.emit(2, f"{name} = g_at + u({slot}) * Eu")
        return self.goffs[slot]

    def loop(self) -> None:
        self.emit(2, "idx, bb, ju = tidu, bb0, ju0")
        self.emit(2, "while idx < Eb:")
        self.emit(3, "j = g0u + ju")

    def end_loop(self) -> None:
        for slot in self.dirty:
            self.emit(3, f"SH[{self.goffs[slot]} + idx] = {self.grads[slot]}")
        self.emit(3, "idx += nthu")
        self.emit(3, "bb, ju = advance(bb, ju, dbb, dju, Ug1)")

    def val(self, pair: tuple[int, int]) -> str:
        """The value at a slot pair, loaded from the mirror the first time the body needs it."""
        if pair not in self.vals:
            self.vals[pair] = name = self.fresh("v")
            self.emit(3, f"{name} = SH[{self.offs[pair]} + idx]")
        return self.vals[pair]

    def set(self, pair: tuple[int, int], expr: str) -> str:
        """A value computed: into a register, and the mirror."""
        self.vals[pair] = name = self.fresh("x")
        self.emit(3, f"{name} = {expr}")
        self.emit(3, f"SH[{self.offs[pair]} + idx] = {name}")
        return name

    def grad(self, slot: int) -> str:
        if slot not in self.grads:
            self.grads[slot] = name = self.fresh("g")
            self.emit(3, f"{name} = SH[{self.goffs[slot]} + idx]")
        return self.grads[slot]

    def add(self, slot: int, term: str, sign: str = "+", cond: str | None = None) -> None:
        """gradient[slot] (+ or -)= term (only where ``cond``), as the interpreter's ``G[g + e] += term``."""
        name = self.grad(slot)
        if cond is None:
            self.emit(3, f"{name} = {name} {sign} ({term})")
        else:
            self.emit(3, f"if {cond}:")
            self.emit(4, f"{name} = {name} {sign} ({term})")
        if slot not in self.dirty:
            self.dirty.append(slot)


_READS_A = (ADD, SUB, MUL, BLEND, SIGMOID, TANH, RELU, PEEP)
_READS_B = (ADD, SUB, MUL, BLEND)


def forward_source(prog: Program, pmirror: bool) -> str:
    """``fwd_segment(r, ...) -> next r``: runs the segment that starts at op row r and returns the row after
    it (the kernel goes on there: its GEMM stage); for another r, nothing, and r + 1."""
    lines = ["def fwd_segment(r, tu, par, last, SH, A, ops, v_at, Eu, g0u, tidu, bb0, ju0, Eb, nthu, dbb, dju, Ug1, Bu, Hu, "
             "X, P, S0, consts, biases, peeps):"]  # fmt: skip
    counter = [0]
    for si, seg in enumerate(prog):
        lines.append(f"    {'if' if si == 0 else 'elif'} r == {seg[0].r}:")
        s = _Segment(lines, counter)
        tape_at: dict[int, str] = {}
        for op in seg:
            d, a, b, c = op.slots
            s.off(d)
            if op.code in _READS_A or (op.code == STATE and op.flag == 1) or (op.code == LOADP and pmirror):
                s.off(a)
            if op.code in _READS_B:
                s.off(b)
            if op.code == BLEND:
                s.off(c)
            if op.taped or op.scratch:
                tape_at[op.r] = name = s.fresh("t")
                s.emit(2, f"{name} = u(ops[{op.r}, {C_DC}]) + tu * u(ops[{op.r}, {C_DM}]) + g0u")
        s.loop()
        for op in seg:
            d, a, b, c = op.slots
            if op.code == STATE:
                if op.flag == 1:  # a copied state (the others are read in place)
                    s.set(d, f"S0[{op.aux}, bb * Hu + j] if tu == u(0) else {s.val(a)}")
            elif op.code == X:
                s.set(d, "X[tu, bb, j]")
            elif op.code == CONST:
                s.set(d, f"consts[{op.aux}]")
            elif op.code == LOADP:
                s.set(d, s.val(a) if pmirror else f"P[tu * Bu + bb, u({op.aux}) * Hu + j]")
            elif op.code == BIAS:
                s.set(d, f"biases[{op.aux}, j]")
            elif op.code in (ADD, SUB, MUL):
                s.set(d, f"{s.val(a)} {'+-*'[op.code - ADD]} {s.val(b)}")
            elif op.code == BLEND:
                g = s.val(c)
                s.set(d, f"{g} * {s.val(a)} + (one - {g}) * {s.val(b)}")
            elif op.code == SIGMOID:
                s.set(d, f"half * math.tanh(half * {s.val(a)}) + half")
            elif op.code == TANH:
                s.set(d, f"math.tanh({s.val(a)})")
            elif op.code == RELU:
                v = s.val(a)
                s.set(d, f"zero if {v} <= zero else {v}")  # NaN passes
            elif op.code == PEEP:
                s.set(d, f"peeps[{op.aux}, j] * {s.val(a)}")
            else:
                raise ValueError(f"op {op.r}: opcode {op.code} is not elementwise")
            if op.taped:  # the tape (and at the last step the scratch values) for the backward
                s.emit(3, f"A[{tape_at[op.r]} + bb * Hu + ju] = {s.val(d)}")
            elif op.scratch:
                v = s.val(d)
                s.emit(3, "if last:")
                s.emit(4, f"A[{tape_at[op.r]} + bb * Hu + ju] = {v}")
        s.end_loop()
        s.emit(2, f"return {seg[-1].r + 1}")
    lines.append("    return r + 1")
    return "\n".join(lines) + "\n"


def backward_source(prog: Program) -> str:
    """``bwd_segment(r, ...) -> r``: runs the segment that ends at op row r (the backward walks the
    program in reverse, so it meets a segment's last op first), its ops in reverse, and returns the
    segment's first row (the kernel goes on before it); for another r, nothing, and r."""
    lines = ["def bwd_segment(r, tu, par, SH, v_at, g_at, Eu, g0u, tidu, bb0, ju0, Eb, nthu, dbb, dju, Ug1, Bu, Hu, dS, dX, "
             "dP, dBr, dPeepr, peeps):"]  # fmt: skip
    counter = [0]
    first = True
    for seg in prog:
        ops = [op for op in reversed(seg) if op.code != CONST]
        if not ops:
            continue
        lines.append(f"    {'if' if first else 'elif'} r == {seg[-1].r}:")
        first = False
        s = _Segment(lines, counter)
        for op in ops:
            d, a, b, c = op.slots
            gd, ga, gb, gc = op.gslots
            s.goff(gd)
            if op.code in _READS_A:
                s.goff(ga)
            if op.code in _READS_B:
                s.goff(gb)
            if op.code == BLEND:
                s.goff(gc)
            if op.code in (MUL, BLEND, RELU, PEEP):
                s.off(a)
            if op.code in (MUL, BLEND):
                s.off(b)
            if op.code == BLEND:
                s.off(c)
            if op.code in (SIGMOID, TANH):
                s.off(d)
        s.loop()
        for op in ops:
            d, a, b, c = op.slots
            gd, ga, gb, gc = op.gslots
            g = s.grad(gd)
            if op.code == STATE:
                s.emit(3, f"dS[{op.aux}, bb * Hu + j] = {g}")
            elif op.code == X:
                s.emit(3, f"dX[tu, bb, j] += {g}")
            elif op.code == LOADP:
                s.emit(3, f"dP[tu * Bu + bb, u({op.aux}) * Hu + j] = {g}")
            elif op.code == BIAS:
                s.emit(3, f"dBr[bb, u({op.aux}) * Hu + j] += {g}")
            elif op.code in (ADD, SUB):
                s.add(ga, g)
                s.add(gb, g, "+" if op.code == ADD else "-")
            elif op.code == MUL:
                s.add(ga, f"{g} * {s.val(b)}")
                s.add(gb, f"{g} * {s.val(a)}")
            elif op.code == BLEND:
                w = s.val(c)
                s.add(ga, f"{g} * {w}")
                s.add(gb, f"{g} * (one - {w})")
                s.add(gc, f"{g} * ({s.val(a)} - {s.val(b)})")
            elif op.code == SIGMOID:
                y = s.val(d)
                s.add(ga, f"{g} * {y} * (one - {y})")
            elif op.code == TANH:
                y = s.val(d)
                s.add(ga, f"{g} * (one - {y} * {y})")
            elif op.code == RELU:
                s.add(ga, g, cond=f"{s.val(a)} > zero")
            elif op.code == PEEP:
                s.add(ga, f"{g} * peeps[{op.aux}, j]")
                s.emit(3, f"dPeepr[bb, u({op.aux}) * Hu + j] += {g} * {s.val(a)}")
            else:
                raise ValueError(f"op {op.r}: opcode {op.code} is not elementwise")
        s.end_loop()
        s.emit(2, f"return {seg[0].r}")
    lines.append("    return r")
    return "\n".join(lines) + "\n"


def segment_functions(prog: Program, pmirror: bool, dtype: np.dtype, u: Any, advance: Any) -> tuple[Any, Any]:
    """The generated ``fwd_segment`` and ``bwd_segment`` as inlined CUDA device functions for
    ``dtype``, with ``u`` the kernels' index type and ``advance`` their element stepper."""
    typ = np.dtype(dtype).type
    namespace: dict[str, Any] = {"math": math, "u": u, "advance": advance, "zero": typ(0), "half": typ(0.5), "one": typ(1)}
    out = []
    for name, src in (("fwd_segment", forward_source(prog, pmirror)), ("bwd_segment", backward_source(prog))):
        exec(compile(src, f"<cellsearch fused {name}>", "exec"), namespace)
        out.append(cuda.jit(device=True, inline="always")(namespace[name]))
    return out[0], out[1]
