"""Blocks of numbers moved between the parameters and the kernels' buffers, all of a call's in one
njit call (``pack``, ``sums``), as a table of moves.

A training step packs the parameters twice (the forward's weights, the backward's transposed ones)
and unpacks the gradients once. Done with NumPy, that was ~40 calls of 1-15 µs each: ~110 µs of a
~450 µs step at the search's sizes (H = 32, one thread), ~1.3 ms at H = 256. Here each of the three
is one call over a table built once per workspace (~30 µs in all at H = 32), whose rows read:

    src, R, C, rs, cs, n, ns, dst, K, a, b, kind, add

For each element (r, c) of an R x C block whose element (r, c) is at ``src + (r*rs + c*cs)`` elements
(src: an address in bytes), the sum of ``n`` such blocks ``ns`` elements apart (the chunks' partial
gradients, summed in chunk order as NumPy's ``sum(axis=0)``) is written to (``add``: added to) the
buffer's element

- ``kind`` AFFINE: ``dst + r*a + c*b`` (a plain matrix, transposed or not, or a vector);
- ``kind`` PANEL: (k, n) = (a + r, b + c) of a matrix stored as the microkernel's panels
  (``microkernel.pack_panels``: ``(n // 32) * K * 32 + k * 32 + n % 32`` from ``dst``);
- ``kind`` PANEL_T: the same with (k, n) = (a + c, b + r): the block's transpose.

The loops are written in LLVM IR (as ``ir_loops``'s) and compiled at -O1 (``interp.OPT``), so each
function's first compile on a machine is ~0.1 s (at -O3 ~0.25 s; Numba's front end on them as Python
loops ~0.5 s): whole rows of 16 move as one vector, which -O1 leaves as fast as -O3's code; a transposed
block moves one element at a time, at about NumPy's speed. Both compile in the forward's process
(``first_use``) while ahead.py's child compiles the backward. Moves of one parameter summed from
several sites come in the order ``tables.pack_weights`` sums them, so the bytes are NumPy's
(tests/backends/test_moves.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import interp
from .microkernel import NR

M_SRC, M_R, M_C, M_RS, M_CS, M_N, M_NS, M_DST, M_K, M_A, M_B, M_KIND, M_ADD = range(13)
WIDTH = 13
AFFINE, PANEL, PANEL_T = 0, 1, 2
COLS = 16  # a block's columns moved at a time (``_emit``)

I64 = ir.IntType(64)


def _emit(summed: bool) -> Any:
    """The codegen of ``pack`` (``summed`` False: one block per move, kinds AFFINE, PANEL and PANEL_T)
    or ``sums`` (True: the sum of ``n`` blocks per move, kind AFFINE)."""

    def codegen(context: Any, b: ir.IRBuilder, sig: Any, args: Any) -> Any:
        tab_ty, buf_ty = sig.args
        tab = context.make_array(tab_ty)(context, b, args[0])
        buf = context.make_array(buf_ty)(context, b, args[1])
        n_moves, width = cgutils.unpack_tuple(b, tab.shape)
        fty = context.get_value_type(buf_ty.dtype)
        fptr = fty.as_pointer()

        def k(v: int) -> ir.Constant:
            return ir.Constant(I64, v)

        acc = cgutils.alloca_once(b, ir.ArrayType(fty, COLS))
        vty, isz = ir.VectorType(fty, COLS), context.get_abi_sizeof(fty)
        with cgutils.for_range(b, n_moves) as move:
            row = b.mul(move.index, width)
            cells = (b.load(b.gep(tab.data, [b.add(row, k(c))])) for c in range(WIDTH))
            src, R, C, rs, cs, n, ns, dst, K, a, bb, kind, add = cells
            src = b.inttoptr(src, fptr)
            adding = b.icmp_signed("!=", add, k(0))
            is_t, on_panels = b.icmp_signed("==", kind, k(PANEL_T)), b.icmp_signed("!=", kind, k(AFFINE))

            def offset(r: Any, c: Any) -> Any:  # element (r, c)'s place in buf
                affine = b.add(b.mul(r, a), b.mul(c, bb))
                if summed:
                    return b.add(dst, affine)
                kk, nn = b.add(a, b.select(is_t, c, r)), b.add(bb, b.select(is_t, r, c))
                panel = b.add(b.mul(b.ashr(nn, k(5)), b.mul(K, k(NR))), b.add(b.mul(kk, k(NR)), b.and_(nn, k(NR - 1))))
                return b.add(dst, b.select(on_panels, panel, affine))

            def sum_into(first: Any, cols: Any, offset: Any, r: Any, c0: Any) -> None:
                with cgutils.for_range(b, cols) as lc:  # the chunks' sum in acc, in chunk order
                    c = lc.index
                    b.store(b.load(b.gep(first, [b.mul(c, cs)])), b.gep(acc, [k(0), c]))
                with cgutils.for_range(b, b.sub(n, k(1))) as lj:
                    chunk = b.gep(first, [b.mul(b.add(lj.index, k(1)), ns)])
                    with cgutils.for_range(b, cols) as lc:
                        c = lc.index
                        a_c = b.gep(acc, [k(0), c])
                        b.store(b.fadd(b.load(a_c), b.load(b.gep(chunk, [b.mul(c, cs)]))), a_c)
                with b.if_else(adding) as (yes, no):  # then stored, or added
                    for adds, branch in ((True, yes), (False, no)):
                        with branch, cgutils.for_range(b, cols) as lc:
                            c = lc.index
                            d = b.gep(buf.data, [offset(r, b.add(c0, c))])
                            v = b.load(b.gep(acc, [k(0), c]))
                            b.store(b.fadd(b.load(d), v) if adds else v, d)

            def copy_into(first: Any, cols: Any, offset: Any, r: Any, c0: Any) -> None:
                # COLS elements in a row on both sides (the common case: a row of a parameter into
                # a row of a matrix or of a panel): one vector; else one element at a time
                nn0 = b.and_(b.add(bb, c0), k(NR - 1))
                rows_in = b.select(
                    on_panels, b.and_(b.not_(is_t), b.icmp_signed("<=", nn0, k(NR - COLS))), b.icmp_signed("==", bb, k(1))
                )
                whole = b.and_(b.and_(b.icmp_signed("==", cs, k(1)), b.icmp_signed("==", cols, k(COLS))), rows_in)
                with b.if_else(whole) as (vec, one):
                    with vec:
                        d = b.bitcast(b.gep(buf.data, [offset(r, c0)]), vty.as_pointer())
                        v = b.load(b.bitcast(first, vty.as_pointer()), align=isz)
                        with b.if_else(adding) as (yes, no):  # (adding: a parameter summed from several sites, rare)
                            with yes:
                                b.store(b.fadd(b.load(d, align=isz), v), d, align=isz)
                            with no:
                                b.store(v, d, align=isz)
                    with one:  # (the destination a constant step apart, but where a row crosses panels)
                        step = b.select(on_panels, b.select(is_t, k(NR), k(1)), bb)
                        crosses = b.and_(b.and_(on_panels, b.not_(is_t)), b.icmp_signed(">", b.add(nn0, cols), k(NR)))
                        start = b.gep(buf.data, [offset(r, c0)])
                        with b.if_else(crosses) as (apart, linear):
                            for where, at in ((apart, lambda c: b.gep(buf.data, [offset(r, b.add(c0, c))])),
                                              (linear, lambda c: b.gep(start, [b.mul(c, step)]))):  # fmt: skip
                                with where, cgutils.for_range(b, cols) as lc:
                                    d = at(lc.index)
                                    v = b.load(b.gep(first, [b.mul(lc.index, cs)]))
                                    b.store(b.select(adding, b.fadd(b.load(d), v), v), d)

            # columns COLS at a time, each for every row: a transposed source or destination is read or
            # written a few cache lines at a time, not a line per element
            with cgutils.for_range(b, b.sdiv(b.add(C, k(COLS - 1)), k(COLS))) as lb:
                c0 = b.mul(lb.index, k(COLS))
                c1 = b.add(c0, k(COLS))
                cols = b.sub(b.select(b.icmp_signed("<", c1, C), c1, C), c0)
                with cgutils.for_range(b, R) as lr:
                    r = lr.index
                    first = b.gep(src, [b.add(b.mul(r, rs), b.mul(c0, cs))])
                    (sum_into if summed else copy_into)(first, cols, offset, r, c0)
        return context.get_dummy_value()

    return codegen


def _intrinsic(summed: bool) -> Any:
    """The intrinsic ``moves(table, buf)``: ``_emit(summed)``'s loop."""

    @intrinsic(prefer_literal=False)
    def moves(typingctx: Any, table: Any, buf: Any) -> Any:
        return types.void(table, buf), _emit(summed)

    return moves


_pack, _sums = _intrinsic(False), _intrinsic(True)


@njit(cache=True, error_model="numpy")
def _pack_all(table, buf):  # pragma: no cover - njit
    _pack(table, buf)


@njit(cache=True, error_model="numpy")
def _sum_all(table, buf):  # pragma: no cover - njit
    _sums(table, buf)


def pack(table: np.ndarray, buf: np.ndarray) -> None:
    """Every move of ``table`` (int64 [n, WIDTH], the module's doc; ``n`` is 1) into ``buf`` (flat
    float32 or float64): the parameters into a kernel's buffer."""
    with interp.compiling("moves.pack", buf.dtype):
        _pack_all(table, buf)


def sums(table: np.ndarray, buf: np.ndarray) -> None:
    """Every move of ``table`` (kind AFFINE, ``n`` blocks summed) into ``buf``: the chunks' gradients
    into the named ones."""
    with interp.compiling("moves.sums", buf.dtype):
        _sum_all(table, buf)


_used: set[np.dtype] = set()


def first_use(dtype: np.dtype) -> None:
    """Compile ``sums`` for ``dtype`` (or load it from the cache), once per process: the forward calls
    this, so that on a machine's first use it compiles there while ahead.py's child compiles the
    backward."""
    if dtype not in _used:
        _used.add(dtype)
        sums(np.zeros((0, WIDTH), dtype=np.int64), np.zeros(1, dtype=dtype))


def row(
    src: int, R: int, C: int, rs: int, cs: int, dst: int, kind: int, a: int, b: int, K: int = 0, add: bool = False,
    n: int = 1, ns: int = 0,
) -> list[int]:  # fmt: skip
    """One move's table row (columns in the module's doc)."""
    out = [0] * WIDTH
    out[M_SRC], out[M_R], out[M_C], out[M_RS], out[M_CS], out[M_N], out[M_NS] = src, R, C, rs, cs, n, ns
    out[M_DST], out[M_K], out[M_A], out[M_B], out[M_KIND], out[M_ADD] = dst, K, a, b, kind, int(add)
    return out


__all__ = ["AFFINE", "PANEL", "PANEL_T", "WIDTH", "first_use", "pack", "row", "sums"]
