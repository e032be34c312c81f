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
    """An intrinsic ``tile(a, lda, b, c, ldc, K)``: ``C[MR, 32] = A[MR, K] @ Bp[K, 32]`` with A row-major
    at address a (leading dimension lda, floats), the panel Bp contiguous at b, C at c (ldc)."""

    @intrinsic(prefer_literal=False)
    def tile(typingctx: Any, a: Any, lda: Any, b: Any, c: Any, ldc: Any, K: Any) -> Any:
        sig = types.void(types.uintp, types.intp, types.uintp, types.uintp, types.intp, types.intp)

        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
            a_addr, lda_v, b_addr, c_addr, ldc_v, k_n = args
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

            rows = [builder.mul(const(r), lda_v) for r in range(MR)]
            entry = builder.basic_block
            loop = builder.append_basic_block("tile.loop")
            done = builder.append_basic_block("tile.done")
            builder.cbranch(builder.icmp_signed(">", k_n, const(0)), loop, done)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(const(0), entry)
            accs = []
            for _ in range(MR * 2):
                acc = builder.phi(vec)
                acc.add_incoming(zero, entry)
                accs.append(acc)
            brow = builder.mul(k, const(NR))
            bv = [
                builder.load(builder.bitcast(builder.gep(B, [builder.add(brow, const(_W * v))]), vptr), align=4) for v in range(2)
            ]
            new = []
            for r in range(MR):
                av = builder.load(builder.gep(A, [builder.add(rows[r], k)]))
                ab = builder.shuffle_vector(builder.insert_element(undef, av, ir.Constant(ir.IntType(32), 0)), undef, mask)
                for v in range(2):
                    new.append(builder.call(fma, [ab, bv[v], accs[2 * r + v]]))
            k1 = builder.add(k, const(1))
            end = builder.basic_block
            k.add_incoming(k1, end)
            for acc, n in zip(accs, new, strict=True):
                acc.add_incoming(n, end)
            builder.cbranch(builder.icmp_signed("<", k1, k_n), loop, done)
            builder.position_at_end(done)
            results = []
            for n in new:  # every phi first, then the stores
                res = builder.phi(vec)
                res.add_incoming(zero, entry)
                res.add_incoming(n, end)
                results.append(res)
            for r in range(MR):
                crow = builder.mul(const(r), ldc_v)
                for v in range(2):
                    ptr = builder.bitcast(builder.gep(C, [builder.add(crow, const(_W * v))]), vptr)
                    builder.store(results[2 * r + v], ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile8 = _tile(8)
_tile4 = _tile(4)
_tile1 = _tile(1)


@njit(cache=True, error_model="numpy")  # not inlined: compiled once for both kernels (compile time)
def gemm_panels(M, N, K, a, lda, bp, c, ldc):  # pragma: no cover - njit
    """Row-major float32 ``C[M, ceil(N/32)*32] = A[M, K] @ W`` with W packed by ``pack_panels`` at
    address bp; a, c addresses, lda, ldc leading dimensions in floats (C's must hold the padded
    columns). No transposes, no accumulation: C is overwritten."""
    M = np.int64(M)
    K = np.int64(K)
    lda = np.int64(lda)
    ldc = np.int64(ldc)
    for j in range((np.int64(N) + NR - 1) // NR):
        pj = bp + np.uint64(j * K * NR * 4)
        cj = c + np.uint64(j * NR * 4)
        i = np.int64(0)
        while i + 8 <= M:
            _tile8(a + np.uint64(i * lda * 4), lda, pj, cj + np.uint64(i * ldc * 4), ldc, K)
            i += 8
        while i + 4 <= M:
            _tile4(a + np.uint64(i * lda * 4), lda, pj, cj + np.uint64(i * ldc * 4), ldc, K)
            i += 4
        while i < M:
            _tile1(a + np.uint64(i * lda * 4), lda, pj, cj + np.uint64(i * ldc * 4), ldc, K)
            i += 1


@njit(cache=True, error_model="numpy")
def pack_panels(W, K, N, out):  # pragma: no cover - njit
    """W (flat, row-major [K, N]) into panels ``out[j, k, 0:32] = W[k, 32j : 32j+32]``, zero past N;
    out flat, at least ``panels_size(K, N)`` long."""
    for j in range((N + NR - 1) // NR):
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


__all__ = ["NR", "gemm_panels", "pack_panels", "padded", "panels_size"]
