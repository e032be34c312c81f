"""A float32 GEMM for the per-step recurrent products, with the weights packed once per call.

Per step the kernels multiply a few rows of sources by the same weight matrix: ``[b, K] @ [K, N]``
with b = the rows of a chunk (1-128), K and N a few hundred. OpenBLAS packs the weights again at
every one of those calls and reached only 60-80 GF/s of the core's ~160 for them here (one thread,
b = 32-64). Here the weights are packed once per forward or backward into panels of 32 columns
(``pack_panels``), and a register-blocked tile written in LLVM IR (<16 x float> vectors, ``llvm.fma``)
keeps 8 rows x 32 columns of the product in registers over the whole K loop, so each step's GEMM
reads the panel from cache and A once. The vectors are portable LLVM: on a machine without AVX-512
LLVM splits them into narrower registers; the result is the same up to the order of the sums.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

NR = 32  # columns of a panel: two 16-float vectors
_W = 16  # floats per vector


def _tile(MR: int) -> Any:
    """An intrinsic ``tile(a, sr, sk, b, ldb, c, ldc, K, acc)``: ``C[MR, 32] (+)= A[MR, K] @ B[K, 32]``
    with element (r, k) of A at float offset ``r*sr + k*sk`` from address a (row-major A: sr = its
    leading dimension, sk = 1; A stored transposed: sr = 1, sk = its leading dimension), row k of B
    (32 floats) ``k*ldb`` floats from b (a packed panel: ldb = 32), C row-major at c (ldc). ``acc``
    nonzero: the tile starts from C's values, else from zero."""

    @intrinsic(prefer_literal=False)
    def tile(typingctx: Any, a: Any, sr: Any, sk: Any, b: Any, ldb: Any, c: Any, ldc: Any, K: Any, acc: Any) -> Any:
        ip = types.intp
        sig = types.void(types.uintp, ip, ip, types.uintp, ip, types.uintp, ip, ip, ip)

        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
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
            bv = [
                builder.load(builder.bitcast(builder.gep(B, [builder.add(brow, const(_W * v))]), vptr), align=4) for v in range(2)
            ]
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
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _scalar_access() -> tuple[Any, Any]:
    """Intrinsics ``load(addr, i)``: the float32 at float offset i from address addr, and
    ``store(addr, i, v)``."""

    @intrinsic(prefer_literal=False)
    def load(typingctx: Any, addr: Any, i: Any) -> Any:
        sig = types.float32(types.uintp, types.intp)

        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
            ptr = builder.inttoptr(args[0], ir.FloatType().as_pointer())
            return builder.load(builder.gep(ptr, [args[1]]), align=4)

        return sig, codegen

    @intrinsic(prefer_literal=False)
    def store(typingctx: Any, addr: Any, i: Any, v: Any) -> Any:
        sig = types.void(types.uintp, types.intp, types.float32)

        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
            ptr = builder.inttoptr(args[0], ir.FloatType().as_pointer())
            builder.store(args[2], builder.gep(ptr, [args[1]]), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return load, store


_load, _store = _scalar_access()


def _mover(n: int) -> Any:
    """An intrinsic ``move(src, dst)``: n floats from address src to address dst, as vectors."""

    @intrinsic(prefer_literal=False)
    def move(typingctx: Any, src: Any, dst: Any) -> Any:
        sig = types.void(types.uintp, types.uintp)

        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
            w = min(n, _W)
            vptr = ir.VectorType(ir.FloatType(), w).as_pointer()
            for v in range(n // w):
                off = ir.Constant(ir.IntType(64), 4 * w * v)
                val = builder.load(builder.inttoptr(builder.add(args[0], off), vptr), align=4)
                builder.store(val, builder.inttoptr(builder.add(args[1], off), vptr), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return move


_move8 = _mover(8)
_move32 = _mover(NR)
_tile8 = _tile(8)
_tile4 = _tile(4)
_tile1 = _tile(1)


@njit(cache=True, error_model="numpy", inline="always")
def _tiles(M, a, sr, sk, b, ldb, c, ldc, K, acc):  # pragma: no cover - njit
    """Rows 0..M of ``C[:, 32] (+)= A @ B`` by tiles of 8, 4, then 1 rows (``_tile``'s arguments)."""
    i = np.int64(0)
    while i + 8 <= M:
        _tile8(a + np.uint64(i * sr * 4), sr, sk, b, ldb, c + np.uint64(i * ldc * 4), ldc, K, acc)
        i += 8
    while i + 4 <= M:
        _tile4(a + np.uint64(i * sr * 4), sr, sk, b, ldb, c + np.uint64(i * ldc * 4), ldc, K, acc)
        i += 4
    while i < M:
        _tile1(a + np.uint64(i * sr * 4), sr, sk, b, ldb, c + np.uint64(i * ldc * 4), ldc, K, acc)
        i += 1


@njit(cache=True, error_model="numpy")  # not inlined: compiled once for both kernels (compile time)
def gemm_panels(M, N, K, a, lda, bp, c, ldc, acc):  # pragma: no cover - njit
    """Row-major float32 ``C[M, ceil(N/32)*32] (+)= A[M, K] @ W`` with W packed by ``pack_panels`` at
    address bp; a, c addresses, lda, ldc leading dimensions in floats (C's must hold the padded
    columns); ``+=`` where acc is nonzero, else C is overwritten."""
    M = np.int64(M)
    K = np.int64(K)
    lda = np.int64(lda)
    ldc = np.int64(ldc)
    for j in range((np.int64(N) + NR - 1) // NR):
        _tiles(M, a, lda, np.int64(1), bp + np.uint64(j * K * NR * 4), np.int64(NR), c + np.uint64(j * NR * 4), ldc, K, acc)


#: rows of B (the sum's length) packed at once by ``gemm_packed``: its scratch holds KC rows of A and B
KC = 256


def gemm_scratch(M: int, N: int) -> int:
    """Floats of scratch ``gemm_packed`` needs for ``C[M, N]``: KC rows of A's strips and B's panels,
    and a tile."""
    return KC * (-(-M // 8) * 8 + padded(N)) + 8 * NR


@njit(cache=True, error_model="numpy")
def gemm_packed(M, N, K, a, sr, sk, b, ldb, c, ldc, acc, S):  # pragma: no cover - njit
    """Float32 ``C[M, N] (+)= A[M, K] @ B[K, N]`` (``+=`` where acc is nonzero), every operand by its
    address: element (r, k) of A at float offset ``r*sr + k*sk`` from a (so A may be stored
    transposed: sr = 1), B and C row-major (ldb, ldc). For the weight gradients (``x^T @ dz``, sums
    over batch rows): each block of KC rows is packed into S (``gemm_scratch`` floats), A as strips of
    8 of its rows and B as panels of 32 columns, so that the tiles read both contiguously from cache;
    C is touched only in its N columns (the last, partial panel goes through a tile in S)."""
    M = np.int64(M)
    N = np.int64(N)
    K = np.int64(K)
    sr = np.int64(sr)
    sk = np.int64(sk)
    ldb = np.int64(ldb)
    ldc = np.int64(ldc)
    nb = (N + NR - 1) // NR
    ns = (M + 7) // 8
    zero = np.float32(0.0)
    ao = KC * nb * NR  # A's strips after B's panels in S, then the edge tile
    to = ao + KC * ns * 8
    sp = S.ctypes.data
    if K == 0:
        if acc == 0:
            for i in range(M):
                for q in range(N):
                    _store(c, i * ldc + q, zero)
        return
    k0 = np.int64(0)
    while k0 < K:
        kn = min(KC, K - k0)
        ac = np.int64(1) if (acc != 0 or k0 > 0) else np.int64(0)
        for kk in range(kn):  # B's panels [nb][kn][32], zero past N
            brow = (k0 + kk) * ldb
            for j in range(nb):
                dst = (j * kn + kk) * NR
                if (j + 1) * NR <= N:
                    _move32(b + np.uint64((brow + j * NR) * 4), sp + np.uint64(dst * 4))
                else:
                    for q in range(NR):
                        S[dst + q] = _load(b, brow + j * NR + q) if j * NR + q < N else zero
        if sr == 1:  # A stored transposed: row k of the block holds 8 consecutive floats of each strip
            for kk in range(kn):
                arow = (k0 + kk) * sk
                for s in range(ns):
                    dst = ao + (s * kn + kk) * 8
                    if s * 8 + 8 <= M:
                        _move8(a + np.uint64((arow + s * 8) * 4), sp + np.uint64(dst * 4))
                    else:
                        for r in range(8):
                            S[dst + r] = _load(a, arow + s * 8 + r) if s * 8 + r < M else zero
        else:
            for s in range(ns):
                for r in range(8):
                    i = s * 8 + r
                    for kk in range(kn):
                        S[ao + (s * kn + kk) * 8 + r] = _load(a, i * sr + (k0 + kk) * sk) if i < M else zero
        for j in range(nb):
            pj = sp + np.uint64(j * kn * NR * 4)
            cols = min(NR, N - j * NR)
            if cols == NR:  # strip s: its rows at offsets 0..7 of each 8-float row k (sr 1, sk 8)
                for s in range(ns):
                    _tiles(min(8, M - s * 8), sp + np.uint64((ao + s * kn * 8) * 4), np.int64(1), np.int64(8), pj, np.int64(NR),
                           c + np.uint64((s * 8 * ldc + j * NR) * 4), ldc, kn, ac)  # fmt: skip
            else:  # the last columns: 8 rows at a time through a tile in S
                for s in range(ns):
                    rows = min(8, M - s * 8)
                    for r in range(rows):
                        for q in range(NR):
                            S[to + r * NR + q] = _load(c, (s * 8 + r) * ldc + j * NR + q) if (q < cols and ac != 0) else zero
                    _tiles(rows, sp + np.uint64((ao + s * kn * 8) * 4), np.int64(1), np.int64(8), pj, np.int64(NR),
                           sp + np.uint64(to * 4), np.int64(NR), kn, np.int64(1))  # fmt: skip
                    for r in range(rows):
                        for q in range(cols):
                            _store(c, (s * 8 + r) * ldc + j * NR + q, S[to + r * NR + q])
        k0 += kn


@njit(cache=True, error_model="numpy")
def pack_panels(W, K, N, out, transposed):  # pragma: no cover - njit
    """W (flat, row-major [K, N]; with ``transposed``, [N, K] holding that matrix's transpose) into
    panels ``out[j, k, 0:32] = W[k, 32j : 32j+32]``, zero past N; out flat, at least ``panels_size(K, N)``
    long."""
    for j in range((N + NR - 1) // NR):
        if transposed:  # the 32 rows a panel reads stay in cache while k walks along them
            for k in range(K):
                o = (j * K + k) * NR
                for q in range(NR):
                    col = j * NR + q
                    out[o + q] = W[col * K + k] if col < N else 0.0
        else:
            for k in range(K):
                o = (j * K + k) * NR
                for q in range(NR):
                    col = j * NR + q
                    out[o + q] = W[k * N + col] if col < N else 0.0


def panels_size(K: int, N: int) -> int:
    return -(-N // NR) * NR * K


def padded(N: int) -> int:
    """Columns a C written by ``gemm_panels`` must hold."""
    return -(-N // NR) * NR


__all__ = ["KC", "NR", "gemm_packed", "gemm_panels", "gemm_scratch", "pack_panels", "padded", "panels_size"]
