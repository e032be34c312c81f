"""A float32 GEMM for the per-step recurrent products, with the weights packed once per call.

Per step the kernels multiply a few rows of sources by the same weight matrix: ``[b, K] @ [K, N]``
with b = the rows of a chunk (1-128), K and N a few hundred. OpenBLAS packs the weights again at
every one of those calls and reached only 60-80 GF/s of the core's ~160 for them here (one thread,
b = 32-64). Here the weights are packed once per forward or backward into panels of 32 columns
(``pack_panels``), and a register-blocked tile written in LLVM IR (``llvm.fma`` on vectors) keeps
the product in registers over the whole K loop, so each step's GEMM reads the panel from cache and A
once. The tile's shape follows the vector registers of the CPU Numba compiles for (``tile_shape``):
12 rows x 32 columns with AVX-512, 6 rows x 16 columns with AVX2 (a 12 x 32 tile there spilled and
ran at a third of the core's rate). Each element's sum runs over k in order whatever the shape, so
the bytes are the same on every machine.

The same microkernel runs the weight gradients (``gemm_packed``: ``x^T @ dz`` over blocks of batch
rows, both operands read in place where their rows are close, else packed per block) and the
per-step input projection. The kernels call both
GEMMs as C functions by address (``address``, ``call_panels``, ``call_packed``), compiled once per
machine: as njit callees they would be compiled again inside each kernel. Their loops are LLVM IR
written at that compile (``_emit_panels``, ``_emit_packed``, the tile ``_emit_tile``), as the
interpreters' are (``ir_loops``): Numba's front end on them as Python loops took ~0.5 s of each
first compile (benchmarks/README.md, session 15).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from llvmlite import ir
from numba import cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

NR = 32  # columns of a panel


def _features() -> str:
    """The CPU features Numba compiles for (its own rule: ``NUMBA_CPU_FEATURES`` where set, else the host's)."""
    from llvmlite import binding
    from numba.core import config

    features = getattr(config, "CPU_FEATURES", None)  # (set from the environment at Numba's import)
    return str(features) if features is not None else str(binding.get_host_cpu_features().flatten())


def tile_shape(features: str) -> tuple[int, tuple[int, ...]]:
    """(floats per vector register, the tiles' heights tallest first) for a CPU with these features. A
    tile is two vectors wide and keeps its product in registers over the whole sum: with AVX-512's 32
    registers 12 rows x 32 columns (24 of them), with AVX2's (or SSE's) 16, 6 rows x 16 (or 8) columns
    (12 of them): a 12-row tile of 8-float vectors spilled and ran at a third of the core's rate
    (benchmarks/README.md, session 17). A panel of 32 columns is then 1, 2 or 4 tiles wide."""
    flags = set(features.split(","))
    if "+avx512f" in flags:
        return 16, (12, 4, 1)
    return (8 if "+avx" in flags else 4), (6, 4, 2, 1)


_W, _HEIGHTS = tile_shape(_features())
SH = _HEIGHTS[0]  # rows of the tallest tile, and of A's strips as ``gemm_packed`` packs it (see ``_emit_tiles``)
_TC = 2 * _W  # columns of a tile


def _emit_tile(builder: ir.IRBuilder, MR: int, *args: ir.Value) -> None:
    """``C[MR, TC] (+)= A[MR, K] @ B[K, TC]`` in IR (TC = ``_TC`` columns: two vectors), args ``(a, sr,
    sk, b, ldb, c, ldc, K, acc)`` (i64): element (r, k) of A at float offset ``r*sr + k*sk`` from
    address a (row-major A: sr = its leading dimension, sk = 1; A stored transposed: sr = 1, sk = its
    leading dimension), row k of B (TC floats) ``k*ldb`` floats from b (a packed panel: ldb = 32), C
    row-major at c (ldc). ``acc`` nonzero: the tile starts from C's values, else from zero."""
    a_addr, sr_v, sk_v, b_addr, ldb_v, c_addr, ldc_v, k_n, acc_v = args
    i64 = ir.IntType(64)
    f32 = ir.FloatType()
    vec = ir.VectorType(f32, _W)
    fptr, vptr = f32.as_pointer(), vec.as_pointer()
    A = builder.inttoptr(a_addr, fptr)
    B = builder.inttoptr(b_addr, fptr)
    C = builder.inttoptr(c_addr, fptr)
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{_W}f32")
    zero = ir.Constant(vec, [0.0] * _W)
    mask = ir.Constant(ir.VectorType(ir.IntType(32), _W), [0] * _W)
    undef = ir.Constant(vec, ir.Undefined)

    def const(v: int) -> ir.Constant:
        return ir.Constant(i64, v)

    cptrs = [
        builder.bitcast(builder.gep(C, [builder.add(builder.mul(const(r), ldc_v), const(_W * v))]), vptr)
        for r in range(MR)
        for v in range(2)
    ]
    # the starting values: C's tile (acc != 0) or zeros
    first = builder.basic_block
    load = builder.append_basic_block("tile.load")
    start = builder.append_basic_block("tile.start")
    builder.cbranch(builder.icmp_signed("!=", acc_v, const(0)), load, start)
    builder.position_at_end(load)
    loaded = [builder.load(p, align=4) for p in cptrs]
    builder.branch(start)
    builder.position_at_end(start)
    init = []
    for v in loaded:
        phi = builder.phi(vec)
        phi.add_incoming(zero, first)
        phi.add_incoming(v, load)
        init.append(phi)
    rows = [builder.mul(const(r), sr_v) for r in range(MR)]
    entry = builder.basic_block
    loop = builder.append_basic_block("tile.loop")
    done = builder.append_basic_block("tile.done")
    builder.cbranch(builder.icmp_signed(">", k_n, const(0)), loop, done)
    builder.position_at_end(loop)
    k = builder.phi(i64)
    k.add_incoming(const(0), entry)
    accs = []
    for v in init:
        phi = builder.phi(vec)
        phi.add_incoming(v, entry)
        accs.append(phi)
    brow = builder.mul(k, ldb_v)
    bv = [builder.load(builder.bitcast(builder.gep(B, [builder.add(brow, const(_W * v))]), vptr), align=4) for v in range(2)]
    kofs = builder.mul(k, sk_v)
    new = []
    for r in range(MR):
        av = builder.load(builder.gep(A, [builder.add(rows[r], kofs)]))
        ab = builder.shuffle_vector(builder.insert_element(undef, av, ir.Constant(ir.IntType(32), 0)), undef, mask)
        for v in range(2):
            new.append(builder.call(fma, [ab, bv[v], accs[2 * r + v]]))
    k1 = builder.add(k, const(1))
    end = builder.basic_block
    k.add_incoming(k1, end)
    for phi, n in zip(accs, new, strict=True):
        phi.add_incoming(n, end)
    builder.cbranch(builder.icmp_signed("<", k1, k_n), loop, done)
    builder.position_at_end(done)
    results = []
    for v, n in zip(init, new, strict=True):  # every phi first, then the stores
        res = builder.phi(vec)
        res.add_incoming(v, entry)
        res.add_incoming(n, end)
        results.append(res)
    for p, res in zip(cptrs, results, strict=True):
        builder.store(res, p, align=4)


def _int_access() -> Any:
    """An intrinsic ``load_i64(addr, i)``: the int64 at offset i (in int64s) from address addr."""

    @intrinsic(prefer_literal=False)
    def load(typingctx: Any, addr: Any, i: Any) -> Any:
        sig = types.int64(types.uintp, types.intp)

        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
            ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
            return builder.load(builder.gep(ptr, [args[1]]), align=8)

        return sig, codegen

    return load


load_i64 = _int_access()


def _emit_tiles(b: ir.IRBuilder, M: ir.Value, a: ir.Value, sr: ir.Value, sk: ir.Value, step: ir.Value, bp: ir.Value,
                c: ir.Value, ldc: ir.Value, K: ir.Value, acc: ir.Value, ldb: ir.Value) -> None:  # fmt: skip
    """Rows 0..M of ``C[:, 32] (+)= A @ B``: the panel's 32 columns as ``32 / TC`` blocks of ``TC``
    (one after the other: a block's rows of B stay in L1 over its tiles), each by tiles of the
    heights ``_HEIGHTS`` (with AVX-512: SH = 12, then 4, then 1 rows; 24 of the 32 vector registers
    hold the product; 8 rows measured 2-9 % slower: each k reloads B's two vectors for fewer rows). The
    block of SH rows from row i starts i*step bytes from a, and its element (r, k) is ``r*sr + k*sk``
    floats into it: a row-major A (sr = lda, sk = 1, step = lda*4), A packed as strips of SH rows,
    each [K, SH] (sr = 1, sk = SH, step = K*4), or A stored transposed (sr = 1, sk = lda, step = 4).
    Row k of B's 32 columns is ``k*ldb`` floats from bp (a packed panel: 32). Each element's sum runs
    over k in order whatever the tiles' shape: the same bits on every machine."""
    i64 = ir.IntType(64)

    def k(v: int) -> ir.Constant:
        return ir.Constant(i64, v)

    for col in range(0, NR, _TC):
        bq, cq = b.add(bp, k(4 * col)), b.add(c, k(4 * col))
        n_sh = b.sdiv(M, k(SH))
        with cgutils.for_range(b, n_sh) as lp:  # tiles of SH rows
            i = b.mul(lp.index, k(SH))
            _emit_tile(b, SH, b.add(a, b.mul(i, step)), sr, sk, bq, ldb, b.add(cq, b.mul(b.mul(i, ldc), k(4))), ldc, K, acc)
        i = b.mul(n_sh, k(SH))
        base, rest = b.add(a, b.mul(i, step)), b.sub(M, i)
        r0 = k(0)
        for MR in _HEIGHTS[1:]:  # then tiles of fewer rows, from row i + r0
            count = b.sdiv(b.sub(rest, r0), k(MR))
            with cgutils.for_range(b, count) as lp:
                r = b.add(r0, b.mul(lp.index, k(MR)))
                ar = b.add(base, b.mul(b.mul(r, sr), k(4)))
                _emit_tile(b, MR, ar, sr, sk, bq, ldb, b.add(cq, b.mul(b.mul(b.add(i, r), ldc), k(4))), ldc, K, acc)
            r0 = b.add(r0, b.mul(count, k(MR)))


def _emit_panels(b: ir.IRBuilder, M: ir.Value, N: ir.Value, K: ir.Value, a: ir.Value, lda: ir.Value, bp: ir.Value,
                 c: ir.Value, ldc: ir.Value, acc: ir.Value, strips: ir.Value) -> None:  # fmt: skip
    """``gemm_panels``' body: for each panel of 32 columns, its tiles (``_emit_tiles``)."""
    i64 = ir.IntType(64)

    def k(v: int) -> ir.Constant:
        return ir.Constant(i64, v)

    with cgutils.for_range(b, b.sdiv(b.add(N, k(NR - 1)), k(NR))) as lp:
        j = lp.index
        cj = b.add(c, b.mul(j, k(NR * 4)))
        with b.if_else(b.icmp_signed("==", strips, k(0))) as (per_step, other):
            with per_step:  # (constant strides here: the tiles' loops stay lean)
                pj = b.add(bp, b.mul(b.mul(j, K), k(NR * 4)))
                _emit_tiles(b, M, a, lda, k(1), b.mul(lda, k(4)), pj, cj, ldc, K, acc, k(NR))
            with other:  # (the weight gradients': their strides as values, so one more copy of the tiles, not two)
                packed = b.icmp_signed("==", strips, k(1))
                sk = b.select(packed, k(SH), lda)
                step = b.select(packed, b.mul(K, k(4)), k(4))
                pj = b.add(bp, b.select(packed, b.mul(b.mul(j, K), k(NR * 4)), b.mul(j, k(NR * 4))))
                _emit_tiles(b, M, a, k(1), sk, step, pj, cj, ldc, K, acc, b.select(packed, k(NR), strips))


def _panels_intrinsic() -> Any:
    """An intrinsic ``panels(*gemm_panels' arguments)``: ``_emit_panels``."""

    @intrinsic(prefer_literal=False)
    def panels(typingctx: Any, M: Any, N: Any, K: Any, a: Any, lda: Any, bp: Any, c: Any, ldc: Any, acc: Any, strips: Any) -> Any:
        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
            _emit_panels(builder, *args)
            return context.get_dummy_value()

        return PANELS_SIG, codegen

    return panels


_panels = _panels_intrinsic()


@njit(cache=True, error_model="numpy")
def gemm_panels(M, N, K, a, lda, bp, c, ldc, acc, strips):  # pragma: no cover - njit
    """Float32 ``C[M, ceil(N/32)*32] (+)= A[M, K] @ W`` with W packed by ``pack_panels`` at address bp,
    C row-major at c (ldc floats; it must hold the padded columns), ``+=`` where acc is nonzero; A
    row-major at a (lda floats). ``strips`` other than 0 is ``gemm_packed``'s: 1, A as it packs it,
    strips of SH rows, each [K, SH] (the rows' k-th elements side by side); 2 or more, A stored
    transposed ([K, M], lda floats apart) and B not packed but row-major at bp, its rows ``strips``
    floats apart (N a multiple of 32: whole panels only)."""
    _panels(M, N, K, a, lda, bp, c, ldc, acc, strips)  # (written in IR: Numba's front end took ~0.4 s of its compile)


#: rows of B (the sum's length) packed at once by ``gemm_packed``: its scratch holds KC rows of A and B
KC = 256


def gemm_scratch(M: int, N: int) -> int:
    """Floats of scratch ``gemm_packed`` needs for ``C[M, N]``: KC columns of A's strips of SH rows, KC
    rows of B's panels, and M rows of one panel (the last, partial panel's product)."""
    return KC * (-(-M // SH) * SH + padded(N)) + M * NR


#: ``gemm_packed`` reads A and B in place where both rows are at most this many floats apart
DIRECT_LD = 512


def _emit_packed(b: ir.IRBuilder, M: ir.Value, N: ir.Value, K: ir.Value, a: ir.Value, lda: ir.Value, bm: ir.Value,
                 ldb: ir.Value, c: ir.Value, ldc: ir.Value, acc: ir.Value, sp: ir.Value, fpp: ir.Value) -> None:  # fmt: skip
    """``gemm_packed``'s body (its doc), in IR."""
    i64, f32 = ir.IntType(64), ir.FloatType()
    fptr = f32.as_pointer()
    zero = ir.Constant(f32, 0.0)

    def k(v: int) -> ir.Constant:
        return ir.Constant(i64, v)

    def mul(*vs: ir.Value) -> ir.Value:
        out = vs[0]
        for v in vs[1:]:
            out = b.mul(out, v)
        return out

    def at(base: ir.Value, i: ir.Value) -> ir.Value:  # the float i floats from address base
        return b.gep(b.inttoptr(base, fptr), [i])

    def byte(base: ir.Value, i: ir.Value) -> ir.Value:  # address base + i floats
        return b.add(base, mul(i, k(4)))

    def panels(*args: ir.Value) -> None:
        fnty = ir.FunctionType(ir.VoidType(), [i64] * 10)
        b.call(b.inttoptr(fpp, fnty.as_pointer()), list(args))

    def move(n: int, src: ir.Value, dst: ir.Value) -> None:  # n floats, as vectors of up to _W
        done = 0
        while done < n:
            w = min(n - done, _W)
            vptr = ir.VectorType(f32, w).as_pointer()
            val = b.load(b.inttoptr(b.add(src, k(4 * done)), vptr), align=4)
            b.store(val, b.inttoptr(b.add(dst, k(4 * done)), vptr), align=4)
            done += w

    def ceil(x: ir.Value, d: int) -> ir.Value:
        return b.sdiv(b.add(x, k(d - 1)), k(d))

    def or_zero(inside: ir.Value, ptr: ir.Value) -> ir.Value:  # the float at ptr where inside, else 0 (ptr not read)
        with b.if_else(inside) as (yes, no):
            with yes:
                loaded, from_yes = b.load(ptr), b.basic_block
            with no:
                from_no = b.basic_block
        v = b.phi(f32)
        v.add_incoming(loaded, from_yes)
        v.add_incoming(zero, from_no)
        return v

    # where both operands' rows are close: whole panels of B read in place
    direct = b.and_(
        b.and_(b.icmp_signed(">", K, k(0)), b.icmp_signed(">=", N, k(NR))),
        b.and_(b.icmp_signed("<=", lda, k(DIRECT_LD)), b.icmp_signed("<=", ldb, k(DIRECT_LD))),
    )
    n0 = b.select(direct, mul(b.sdiv(N, k(NR)), k(NR)), k(0))
    with b.if_then(direct):
        panels(M, n0, K, a, lda, bm, c, ldc, acc, ldb)  # (ldb >= N >= 32: the in-place mode)
    bm, c, N = byte(bm, n0), byte(c, n0), b.sub(N, n0)
    nf, nb = b.sdiv(N, k(NR)), ceil(N, NR)
    ao = mul(k(KC), nb, k(NR))  # in the scratch: B's panels, then A's strips, then the partial panel's product [M, 32]
    to = b.add(ao, mul(k(KC), ceil(M, SH), k(SH)))
    ns = ceil(M, SH)
    with b.if_then(b.icmp_signed(">", N, k(0))), b.if_else(b.icmp_signed("==", K, k(0))) as (empty, blocks):
        with empty, b.if_then(b.icmp_signed("==", acc, k(0))):  # C = 0 (nothing to sum)
            with cgutils.for_range(b, M) as li, cgutils.for_range(b, N) as lq:
                b.store(zero, at(c, b.add(mul(li.index, ldc), lq.index)))
        with blocks, cgutils.for_range(b, ceil(K, KC)) as lk:
            k0 = mul(lk.index, k(KC))
            left = b.sub(K, k0)
            kn = b.select(b.icmp_signed("<", left, k(KC)), left, k(KC))
            ac = b.select(b.or_(b.icmp_signed("!=", acc, k(0)), b.icmp_signed(">", k0, k(0))), k(1), k(0))
            with cgutils.for_range(b, kn) as lkk:  # B's panels [nb][kn][32], zero past N
                kk = lkk.index
                brow = mul(b.add(k0, kk), ldb)
                with cgutils.for_range(b, nb) as lj:
                    j = lj.index
                    dst = mul(b.add(mul(j, kn), kk), k(NR))
                    with b.if_else(b.icmp_signed("<", j, nf)) as (whole, part):
                        with whole:
                            move(NR, byte(bm, b.add(brow, mul(j, k(NR)))), byte(sp, dst))
                        with part, cgutils.for_range(b, k(NR)) as lq:
                            col = b.add(mul(j, k(NR)), lq.index)
                            v = or_zero(b.icmp_signed("<", col, N), at(bm, b.add(brow, col)))
                            b.store(v, at(sp, b.add(dst, lq.index)))
            with cgutils.for_range(b, kn) as lkk:  # A's columns as strips of SH rows [ns][kn][SH], zero past M
                kk = lkk.index
                arow = mul(b.add(k0, kk), lda)
                with cgutils.for_range(b, ns) as lq:
                    q = lq.index
                    dst = b.add(ao, mul(b.add(mul(q, kn), kk), k(SH)))
                    with b.if_else(b.icmp_signed("<=", b.add(mul(q, k(SH)), k(SH)), M)) as (whole, part):
                        with whole:
                            move(SH, byte(a, b.add(arow, mul(q, k(SH)))), byte(sp, dst))
                        with part, cgutils.for_range(b, k(SH)) as lr:
                            row = b.add(mul(q, k(SH)), lr.index)
                            v = or_zero(b.icmp_signed("<", row, M), at(a, b.add(arow, row)))
                            b.store(v, at(sp, b.add(dst, lr.index)))
            strips = byte(sp, ao)
            with b.if_then(b.icmp_signed(">", nf, k(0))):
                panels(M, mul(nf, k(NR)), kn, strips, kn, sp, c, ldc, ac, k(1))
            with b.if_then(b.icmp_signed(">", nb, nf)):  # the last columns: their product into the scratch, then into C
                panels(M, k(NR), kn, strips, kn, byte(sp, mul(nf, kn, k(NR))), byte(sp, to), k(NR), k(0), k(1))
                cols = b.sub(N, mul(nf, k(NR)))
                adding = b.icmp_signed("!=", ac, k(0))
                with cgutils.for_range(b, M) as li, cgutils.for_range(b, cols) as lq:
                    i, q = li.index, lq.index
                    v = b.load(at(sp, b.add(to, b.add(mul(i, k(NR)), q))))
                    ci = at(c, b.add(mul(i, ldc), b.add(mul(nf, k(NR)), q)))
                    with b.if_else(adding) as (yes, no):
                        with yes:
                            b.store(b.fadd(b.load(ci), v), ci)
                        with no:
                            b.store(v, ci)


def _packed_intrinsic() -> Any:
    """An intrinsic ``packed(*gemm_packed's arguments)``: ``_emit_packed``."""

    @intrinsic(prefer_literal=False)
    def packed(typingctx: Any, M: Any, N: Any, K: Any, a: Any, lda: Any, b: Any, ldb: Any, c: Any, ldc: Any, acc: Any,
               sp: Any, fpp: Any) -> Any:  # fmt: skip
        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
            _emit_packed(builder, *args)
            return context.get_dummy_value()

        return PACKED_SIG, codegen

    return packed


_packed = _packed_intrinsic()


@njit(cache=True, error_model="numpy")
def gemm_packed(M, N, K, a, lda, b, ldb, c, ldc, acc, sp, fpp):  # pragma: no cover - njit
    """Float32 ``C[M, N] (+)= A^T @ B`` (``+=`` where acc is nonzero) with A stored [K, M] at address a
    (leading dimension lda), B [K, N] and C [M, N] row-major (ldb, ldc): the weight gradients, sums
    over batch rows (``x^T @ dz``). C is touched only in its N columns.

    Where A's and B's rows are at most DIRECT_LD floats apart, ``gemm_panels`` (the per-step GEMMs'
    microkernel, its C function at address fpp) reads both in place for B's whole panels of 32
    columns: packing them cost a fifth of this GEMM at the search's sizes (H = 32), while with rows
    further apart (H = 256: 3-4 KiB, a page per k) packed operands were 4-5 % faster. Otherwise, and
    for a last partial panel, each block of up to KC rows is packed into the scratch at sp
    (``gemm_scratch`` floats): B as panels of 32 columns, A's columns as strips of SH rows, which
    ``gemm_panels`` multiplies; the partial panel's product goes through the scratch. The same sums
    in the same order either way: the same bytes."""
    _packed(M, N, K, a, lda, b, ldb, c, ldc, acc, sp, fpp)  # (written in IR: Numba's front end took ~0.5 s of its compile)


_I64, _U64 = types.int64, types.uint64
#: the C signatures of the two GEMMs as compiled functions called by address (``call_panels``, ``call_packed``)
PANELS_SIG = types.void(_I64, _I64, _I64, _U64, _I64, _U64, _U64, _I64, _I64, _I64)
PACKED_SIG = types.void(_I64, _I64, _I64, _U64, _I64, _U64, _I64, _U64, _I64, _I64, _U64, _U64)


#: C functions the kernels call by address: name -> (njit function, C signature); ``blas`` adds its job runner
FUNCTIONS: dict[str, tuple[Any, Any]] = {}


@functools.cache
def _compiled(which: str) -> Any:
    """The function ``which`` of FUNCTIONS as a C function (cached on disk by Numba), built on first
    use. The kernels call it by its address (``call_panels``, ...) rather than as an njit function,
    which Numba would link into (and compile again inside) each kernel's own module."""
    fn, sig = FUNCTIONS[which]
    return cfunc(sig, cache=True, error_model="numpy")(fn.py_func)


def address(which: str) -> int:
    """The address of the C function ``which`` ("panels", "packed", "jobs")."""
    return int(_compiled(which).address)


def call_c(context: Any, builder: ir.IRBuilder, sig: Any, signature: Any, llargs: Any) -> Any:
    """Call the C function at address llargs[0] with C signature ``sig`` on the other arguments."""
    fnty = ir.FunctionType(ir.VoidType(), [context.get_value_type(t) for t in sig.args])
    fn = builder.inttoptr(llargs[0], fnty.as_pointer())
    args = [context.cast(builder, v, t, want) for v, t, want in zip(llargs[1:], signature.args[1:], sig.args, strict=True)]
    builder.call(fn, args)
    return context.get_dummy_value()


def _callers() -> tuple[Any, Any]:
    """Intrinsics ``call_panels(fn, *gemm_panels' arguments)`` and ``call_packed(fn, *gemm_packed's)``:
    the GEMM compiled as a C function at address fn (``address``)."""

    @intrinsic(prefer_literal=False)
    def panels(
        typingctx: Any, fn: Any, M: Any, N: Any, K: Any, a: Any, lda: Any, bp: Any, c: Any, ldc: Any, acc: Any, strips: Any
    ) -> Any:
        return types.void(types.uintp, *PANELS_SIG.args), lambda ctx, b, sg, args: call_c(ctx, b, PANELS_SIG, sg, args)

    @intrinsic(prefer_literal=False)
    def packed(typingctx: Any, fn: Any, M: Any, N: Any, K: Any, a: Any, lda: Any, b: Any, ldb: Any, c: Any, ldc: Any, acc: Any,
               sp: Any, fpp: Any) -> Any:  # fmt: skip
        return types.void(types.uintp, *PACKED_SIG.args), lambda ctx, b, sg, args: call_c(ctx, b, PACKED_SIG, sg, args)

    return panels, packed


call_panels, call_packed = _callers()
FUNCTIONS.update(panels=(gemm_panels, PANELS_SIG), packed=(gemm_packed, PACKED_SIG))


def pack_panels(W: np.ndarray, K: int, N: int, out: np.ndarray, transposed: bool) -> None:
    """W (flat, row-major [K, N]; with ``transposed``, [N, K] holding that matrix's transpose) into
    panels ``out[j, k, 0:32] = W[k, 32j : 32j+32]``, zero past N; out flat, at least ``panels_size(K, N)``
    long. (NumPy: nothing to compile on a first use.)"""
    nb = -(-N // NR)
    M = W.reshape(N, K).T if transposed else W.reshape(K, N)
    view = out[: nb * K * NR].reshape(nb, K, NR)
    full = N // NR
    if full:
        view[:full] = M[:, : full * NR].reshape(K, full, NR).transpose(1, 0, 2)
    if nb > full:
        view[full] = 0
        view[full, :, : N - full * NR] = M[:, full * NR :]


def panels_size(K: int, N: int) -> int:
    return -(-N // NR) * NR * K


def padded(N: int) -> int:
    """Columns a C written by ``gemm_panels`` must hold."""
    return -(-N // NR) * NR


__all__ = [
    "KC",
    "NR",
    "address",
    "call_packed",
    "call_panels",
    "gemm_packed",
    "gemm_panels",
    "gemm_scratch",
    "pack_panels",
    "padded",
    "panels_size",
]
