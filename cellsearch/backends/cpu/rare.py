"""The executor's rarely used ops (x read elementwise, a constant, ``-``, relu, a peephole), forward
and backward, compiled apart and called by address.

The zoo's gated cells never use them, yet every loop in ``forward_rows`` / ``backward_rows`` costs
compile time on a machine's first use (these five: ~0.3 s in each). Here they are C functions
(``microkernel.address("rare_forward_float32")``, ...), compiled the first time a cell needs one and
cached on disk like the rest; a kernel calls them per op and step with raw addresses. The loops are
the same as the ones they replace.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic

from .microkernel import FUNCTIONS, call_c

# opcodes: keep in step with cellsearch.lowering.plan.Code (tests/test_tables.py checks interp's)
OP_X, OP_CONST, OP_SUB, OP_RELU, OP_PEEP = 1, 2, 7, 12, 13
RARE = (OP_X, OP_CONST, OP_SUB, OP_RELU, OP_PEEP)


def _typed_pointer() -> Any:
    """An intrinsic ``typed_ptr(addr, like)``: address addr as a pointer to like's type."""

    @intrinsic(prefer_literal=False)
    def typed_ptr(typingctx: Any, addr: Any, like: Any) -> Any:
        sig = types.CPointer(like)(types.uintp, like)

        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
            return builder.inttoptr(args[0], context.get_value_type(types.CPointer(signature.args[1])))

        return sig, codegen

    return typed_ptr


typed_ptr = _typed_pointer()


@njit(cache=True, error_model="numpy", inline="always")
def _rows(H, r0, r1):  # pragma: no cover - njit
    """Rows r0..r1 of [B, H] blocks as unsigned offsets: H, r0, r1 and the flat range r0*H..r1*H."""
    Hu = np.uint64(H)
    R0 = np.uint64(r0)
    R1 = np.uint64(r1)
    return Hu, R0, R1, R0 * Hu, R1 * Hu


@njit(cache=True, error_model="numpy")
def rare_forward(code, aux, d, a, b, pA, nA, pX, T, B, I, t, pC, nC, pP, nP, H, r0, r1, like):  # pragma: no cover - njit
    """Op ``code`` of ``forward_rows`` at step t, rows r0..r1: A (nA values), X [T, B, I], consts
    (nC), peeps [nP, H] at the addresses given; d, a, b the op's value addresses in A (this step's)."""
    A = carray(typed_ptr(pA, like), (nA,))
    Hu, R0, R1, e0, e1 = _rows(H, r0, r1)
    zero = like
    if code == OP_X:
        X = carray(typed_ptr(pX, like), (T, B, I))
        for bb in range(R0, R1):
            row = d + bb * Hu
            for j in range(Hu):
                A[row + j] = X[t, bb, j]
    elif code == OP_CONST:
        v = carray(typed_ptr(pC, like), (nC,))[aux]
        for e in range(e0, e1):
            A[d + e] = v
    elif code == OP_SUB:
        for e in range(e0, e1):
            A[d + e] = A[a + e] - A[b + e]
    elif code == OP_RELU:
        for e in range(e0, e1):
            v = A[a + e]
            A[d + e] = v if v > zero else zero
    elif code == OP_PEEP:
        peeps = carray(typed_ptr(pP, like), (nP, H))
        for bb in range(R0, R1):
            row = bb * Hu
            for j in range(Hu):
                A[d + row + j] = peeps[aux, j] * A[a + row + j]


@njit(cache=True, error_model="numpy")
def rare_backward(
    code, aux, gd, ga, gb, a, pA, nA, pG, nG, pdX, T, B, I, t, pP, nP, pdP, H, r0, r1, like
):  # pragma: no cover - njit
    """Op ``code`` of ``backward_rows`` at step t, rows r0..r1: A (nA values), G (nG), dX [T, B, I],
    peeps and dPeep [nP, H] at the addresses given; gd, ga, gb gradient offsets in G, a the op's
    first operand's value address in A."""
    A = carray(typed_ptr(pA, like), (nA,))
    G = carray(typed_ptr(pG, like), (nG,))
    Hu, R0, R1, e0, e1 = _rows(H, r0, r1)
    zero = like
    if code == OP_X:
        dX = carray(typed_ptr(pdX, like), (T, B, I))
        for bb in range(R0, R1):
            for j in range(Hu):
                dX[t, bb, j] += G[gd + bb * Hu + j]
                G[gd + bb * Hu + j] = zero
    elif code == OP_CONST:
        for e in range(e0, e1):
            G[gd + e] = zero
    elif code == OP_SUB:
        for e in range(e0, e1):
            g = G[gd + e]
            G[gd + e] = zero
            G[ga + e] += g
            G[gb + e] -= g
    elif code == OP_RELU:
        for e in range(e0, e1):
            g = G[gd + e]
            G[gd + e] = zero
            if A[a + e] > zero:
                G[ga + e] += g
    elif code == OP_PEEP:
        peeps = carray(typed_ptr(pP, like), (nP, H))
        dPeep = carray(typed_ptr(pdP, like), (nP, H))
        for bb in range(R0, R1):
            row = bb * Hu
            for j in range(Hu):
                g = G[gd + row + j]
                G[gd + row + j] = zero
                G[ga + row + j] += g * peeps[aux, j]
                dPeep[aux, j] += g * A[a + row + j]


_I, _U = types.int64, types.uint64


def signatures(like: Any) -> tuple[Any, Any]:
    """The C signatures of ``rare_forward`` and ``rare_backward`` for values of Numba type ``like``."""
    fwd = types.void(_I, _I, _U, _U, _U, _U, _I, _U, _I, _I, _I, _I, _U, _I, _U, _I, _I, _I, _I, like)
    bwd = types.void(_I, _I, _U, _U, _U, _U, _U, _I, _U, _I, _U, _I, _I, _I, _I, _U, _I, _U, _I, _I, _I, like)
    return fwd, bwd


for _dt in (types.float32, types.float64):
    _fwd, _bwd = signatures(_dt)
    FUNCTIONS[f"rare_forward_{_dt}"] = (rare_forward, _fwd)
    FUNCTIONS[f"rare_backward_{_dt}"] = (rare_backward, _bwd)


def _callers() -> tuple[Any, Any]:
    """Intrinsics ``call_rare_forward(fn, *rare_forward's arguments)`` and ``call_rare_backward``: the
    C function at address fn (0 where the cell has no rare op: then never called)."""

    @intrinsic(prefer_literal=False)
    def forward(typingctx: Any, fn: Any, code: Any, aux: Any, d: Any, a: Any, b: Any, pA: Any, nA: Any, pX: Any, T: Any, B: Any,
                I: Any, t: Any, pC: Any, nC: Any, pP: Any, nP: Any, H: Any, r0: Any, r1: Any, like: Any) -> Any:  # fmt: skip
        sig = signatures(like)[0]
        return types.void(types.uintp, *sig.args), lambda ctx, bld, sg, args: call_c(ctx, bld, sig, sg, args)

    @intrinsic(prefer_literal=False)
    def backward(typingctx: Any, fn: Any, code: Any, aux: Any, gd: Any, ga: Any, gb: Any, a: Any, pA: Any, nA: Any, pG: Any,
                 nG: Any, pdX: Any, T: Any, B: Any, I: Any, t: Any, pP: Any, nP: Any, pdP: Any, H: Any, r0: Any, r1: Any,
                 like: Any) -> Any:  # fmt: skip
        sig = signatures(like)[1]
        return types.void(types.uintp, *sig.args), lambda ctx, bld, sg, args: call_c(ctx, bld, sig, sg, args)

    return forward, backward


call_rare_forward, call_rare_backward = _callers()


def rare_name(direction: str, dtype: np.dtype) -> str:
    """The name of the C function for ``direction`` ("forward", "backward") and dtype."""
    return f"rare_{direction}_{np.dtype(dtype).name}"


__all__ = ["RARE", "call_rare_backward", "call_rare_forward", "rare_backward", "rare_forward", "rare_name", "signatures"]
