"""The compile-once Plan executor: one ``@njit`` forward and one backward that run any cell's step
program (int32 opcodes over a flat value arena), compiled once per dtype and cached on disk.

The time loop, forward and backward, runs inside these functions: no Python per step. A new cell
costs no compilation, only the Plan's arrays. Values live in ``A[T, NV, B, H]`` (flattened), one slot
per node; the recurrent GEMMs pack their sources into contiguous buffers kept for the deferred
weight gradients.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# opcodes: keep in step with cellsearch.lowering.plan.Code (tests/test_tables.py checks)
OP_STATE, OP_X, OP_CONST, OP_LOADP, OP_BIAS, OP_GEMM, OP_ADD, OP_SUB, OP_MUL, OP_BLEND, OP_SIGMOID, OP_TANH, OP_RELU, OP_PEEP = (
    range(14)
)


@njit(cache=True, error_model="numpy")
def forward_kernel(
    ops, stage_info, stage_src, stage_dst, T, B, H, NV, A, P, X, S0, update_slot, consts, biases, peeps, W, K, TMP
):
    BH = B * H
    zero = A.dtype.type(0.0)
    half = A.dtype.type(0.5)
    one = A.dtype.type(1.0)
    for t in range(T):
        base = t * NV * BH
        for r in range(ops.shape[0]):
            code = ops[r, 0]
            d = base + ops[r, 1] * BH
            a = base + ops[r, 2] * BH
            b = base + ops[r, 3] * BH
            c = base + ops[r, 4] * BH
            aux = ops[r, 5]
            if code == OP_STATE:
                if t == 0:
                    for e in range(BH):
                        A[d + e] = S0[aux, e]
                else:
                    src = (t - 1) * NV * BH + update_slot[aux] * BH
                    for e in range(BH):
                        A[d + e] = A[src + e]
            elif code == OP_X:
                for bb in range(B):
                    for j in range(H):
                        A[d + bb * H + j] = X[t, bb, j]
            elif code == OP_CONST:
                v = consts[aux]
                for e in range(BH):
                    A[d + e] = v
            elif code == OP_LOADP:
                for bb in range(B):
                    for j in range(H):
                        A[d + bb * H + j] = P[t, bb, aux * H + j]
            elif code == OP_BIAS:
                for bb in range(B):
                    for j in range(H):
                        A[d + bb * H + j] = biases[aux, j]
            elif code == OP_GEMM:
                ns = stage_info[aux, 0]
                nk = stage_info[aux, 1]
                woff = stage_info[aux, 2]
                koff = stage_info[aux, 3] + t * B * ns * H
                pk = K[koff : koff + B * ns * H]
                for i in range(ns):
                    s = base + stage_src[aux, i] * BH
                    for bb in range(B):
                        for j in range(H):
                            pk[bb * ns * H + i * H + j] = A[s + bb * H + j]
                out = TMP[: B * nk * H].reshape((B, nk * H))
                np.dot(pk.reshape((B, ns * H)), W[woff : woff + ns * H * nk * H].reshape((ns * H, nk * H)), out)
                for k in range(nk):
                    dd = base + stage_dst[aux, k] * BH
                    for bb in range(B):
                        for j in range(H):
                            A[dd + bb * H + j] += out[bb, k * H + j]
            elif code == OP_ADD:
                for e in range(BH):
                    A[d + e] = A[a + e] + A[b + e]
            elif code == OP_SUB:
                for e in range(BH):
                    A[d + e] = A[a + e] - A[b + e]
            elif code == OP_MUL:
                for e in range(BH):
                    A[d + e] = A[a + e] * A[b + e]
            elif code == OP_BLEND:
                for e in range(BH):
                    g = A[c + e]
                    A[d + e] = g * A[a + e] + (one - g) * A[b + e]
            elif code == OP_SIGMOID:
                for e in range(BH):
                    A[d + e] = half * np.tanh(half * A[a + e]) + half
            elif code == OP_TANH:
                for e in range(BH):
                    A[d + e] = np.tanh(A[a + e])
            elif code == OP_RELU:
                for e in range(BH):
                    v = A[a + e]
                    A[d + e] = v if v > zero else zero
            elif code == OP_PEEP:
                for bb in range(B):
                    for j in range(H):
                        A[d + bb * H + j] = peeps[aux, j] * A[a + bb * H + j]


@njit(cache=True, error_model="numpy")
def backward_kernel(
    ops,
    stage_info,
    stage_src,
    stage_dst,
    T,
    B,
    H,
    NV,
    A,
    state_slot,
    update_slot,
    output_slot,
    dOut,
    dS,
    peeps,
    WT,
    DZ,
    TMP,
    G,
    dP,
    dX,
    dB,
    dPeep,
):
    """Reverse walk; on return dS holds the initial states' gradients. dP, dX, dB, dPeep, DZ filled."""
    BH = B * H
    nS = dS.shape[0]
    zero = A.dtype.type(0.0)
    one = A.dtype.type(1.0)
    carry = dS.copy()
    for t in range(T - 1, -1, -1):
        base = t * NV * BH
        G[:] = zero
        if output_slot >= 0:
            o = output_slot * BH
            for bb in range(B):
                for j in range(H):
                    G[o + bb * H + j] += dOut[t, bb, j]
        for s in range(nS):
            u = update_slot[s] * BH
            for e in range(BH):
                G[u + e] += carry[s, e]
        for s in range(nS):
            if state_slot[s] < 0:
                for e in range(BH):
                    carry[s, e] = zero
        for r in range(ops.shape[0] - 1, -1, -1):
            code = ops[r, 0]
            gd = ops[r, 1] * BH
            ga = ops[r, 2] * BH
            gb = ops[r, 3] * BH
            gc = ops[r, 4] * BH
            d = base + gd
            a = base + ga
            b = base + gb
            c = base + gc
            aux = ops[r, 5]
            if code == OP_STATE:
                for e in range(BH):
                    carry[aux, e] = G[gd + e]
            elif code == OP_X:
                for bb in range(B):
                    for j in range(H):
                        dX[t, bb, j] += G[gd + bb * H + j]
            elif code == OP_CONST:
                pass
            elif code == OP_LOADP:
                for bb in range(B):
                    for j in range(H):
                        dP[t, bb, aux * H + j] = G[gd + bb * H + j]
            elif code == OP_BIAS:
                for bb in range(B):
                    for j in range(H):
                        dB[aux, j] += G[gd + bb * H + j]
            elif code == OP_GEMM:
                ns = stage_info[aux, 0]
                nk = stage_info[aux, 1]
                woff = stage_info[aux, 2]
                zoff = stage_info[aux, 4] + t * B * nk * H
                dz = DZ[zoff : zoff + B * nk * H]
                for k in range(nk):
                    s = stage_dst[aux, k] * BH
                    for bb in range(B):
                        for j in range(H):
                            dz[bb * nk * H + k * H + j] = G[s + bb * H + j]
                dsrc = TMP[: B * ns * H].reshape((B, ns * H))
                np.dot(dz.reshape((B, nk * H)), WT[woff : woff + ns * H * nk * H].reshape((nk * H, ns * H)), dsrc)
                for i in range(ns):
                    s = stage_src[aux, i] * BH
                    for bb in range(B):
                        for j in range(H):
                            G[s + bb * H + j] += dsrc[bb, i * H + j]
            elif code == OP_ADD:
                for e in range(BH):
                    g = G[gd + e]
                    G[ga + e] += g
                    G[gb + e] += g
            elif code == OP_SUB:
                for e in range(BH):
                    g = G[gd + e]
                    G[ga + e] += g
                    G[gb + e] -= g
            elif code == OP_MUL:
                for e in range(BH):
                    g = G[gd + e]
                    G[ga + e] += g * A[b + e]
                    G[gb + e] += g * A[a + e]
            elif code == OP_BLEND:
                for e in range(BH):
                    g = G[gd + e]
                    w = A[c + e]
                    G[ga + e] += g * w
                    G[gb + e] += g * (one - w)
                    G[gc + e] += g * (A[a + e] - A[b + e])
            elif code == OP_SIGMOID:
                for e in range(BH):
                    y = A[d + e]
                    G[ga + e] += G[gd + e] * y * (one - y)
            elif code == OP_TANH:
                for e in range(BH):
                    y = A[d + e]
                    G[ga + e] += G[gd + e] * (one - y * y)
            elif code == OP_RELU:
                for e in range(BH):
                    if A[a + e] > zero:
                        G[ga + e] += G[gd + e]
            elif code == OP_PEEP:
                for bb in range(B):
                    for j in range(H):
                        g = G[gd + bb * H + j]
                        G[ga + bb * H + j] += g * peeps[aux, j]
                        dPeep[aux, j] += g * A[a + bb * H + j]
    for s in range(nS):
        for e in range(BH):
            dS[s, e] = carry[s, e]
