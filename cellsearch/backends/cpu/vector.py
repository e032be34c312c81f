"""The executor's elementwise ops as explicit vector loops, written in LLVM IR.

Each op of a cell's step program (``interp.py``) runs over a chunk's rows of one ``[B, H]`` block
per operand, all in the arena A (forward) or in the gradient slots G and A (backward). Written as
plain Numba loops, each one became a vectorised loop with a scalar remainder and run-time overlap
checks between its operands (they all index the same array), and those loops were ~40 % of the
executor's compile time. Here each op is an intrinsic (``f_add``, ``b_mul``, ... below) that emits
one loop over whole vectors (16 float32s or 8 float64s: one AVX-512 register; LLVM splits them where
the machine has narrower ones) and a scalar loop for the rest, with the same operations in the same
order as the scalar code: the results are the same to the last bit. No overlap checks are needed:
two operands are either the same block or blocks that do not overlap (``tables``), and every
vector's operands are all loaded before the stores that could touch them, or stored in the scalar
code's order.

Each intrinsic takes the element count, the operands' addresses (where their first element sits)
and R (``interp.constants``: the typed constants, whose dtype picks float32 or float64); the
``*_rows`` forms run over a chunk's rows, each operand with a row stride of its own (0: one row for
all, a bias or a bias's gradient). float32 tanh is the rational approximation
(``interp.RATIONAL_TANH``); float64 calls libm's tanh per element. No fast-math flags: NaN and Inf
propagate, so a diverging candidate is detected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# where the constants sit in R (interp.constants): the rational tanh's 12 coefficients, then 0, 1/2, 1,
# the dtype's smallest normal number
R_ZERO, R_HALF, R_ONE, R_TINY = 12, 13, 14, 15


class _Lanes:
    """What an op's body sees: its operands at the current element (``ld``, ``st``), R's constants
    (``r``) and tanh, for one vector or one scalar."""

    def __init__(self, builder: ir.IRBuilder, ptrs: list[ir.Value], index: ir.Value, ty: ir.Type, consts: list[ir.Value],
                 width: int) -> None:  # fmt: skip
        self.b = builder
        self.ty = ty  # the float type or the vector type
        self.width = width
        self.el = ty.element if isinstance(ty, ir.VectorType) else ty
        self.f32 = isinstance(self.el, ir.FloatType)  # else float64 (ir.DoubleType)
        self._ptrs = [builder.bitcast(builder.gep(p, [index]), ty.as_pointer()) for p in ptrs]
        self._bases = ptrs
        self._consts = consts

    def ld(self, i: int) -> ir.Value:
        return self.b.load(self._ptrs[i], align=self._align())

    def st(self, i: int, v: ir.Value) -> None:
        self.b.store(v, self._ptrs[i], align=self._align())

    def _align(self) -> int:
        return 4 if self.f32 else 8

    def r(self, k: int) -> ir.Value:
        """Constant R[k], splat over the lanes."""
        return self._splat(self._consts[k])

    def scalar(self, i: int) -> ir.Value:
        """Operand i's first element (whatever the current element), splat over the lanes."""
        return self._splat(self.b.load(self._bases[i]))

    def flush(self, v: ir.Value) -> ir.Value:
        """v, or zero where |v| is below the smallest normal number (a denormal; NaN stays)."""
        b = self.b
        name = ("" if self.width == 1 else f"v{self.width}") + ("f32" if self.f32 else "f64")
        fabs = cgutils.get_or_insert_function(b.module, ir.FunctionType(self.ty, [self.ty]), f"llvm.fabs.{name}")
        return b.select(b.fcmp_ordered("<", b.call(fabs, [v]), self.r(R_TINY)), self.r(R_ZERO), v)

    def _splat(self, v: ir.Value) -> ir.Value:
        if self.width == 1:
            return v
        undef = ir.Constant(self.ty, ir.Undefined)
        one = self.b.insert_element(undef, v, ir.Constant(ir.IntType(32), 0))
        return self.b.shuffle_vector(one, undef, ir.Constant(ir.VectorType(ir.IntType(32), self.width), [0] * self.width))

    def tanh(self, v: ir.Value) -> ir.Value:
        b = self.b
        if self.f32:  # float32: x * P(x^2) / Q(x^2) on [-clamp, clamp], R[0..11]
            c = self.r(0)
            x = b.select(b.fcmp_ordered(">", v, c), c, v)
            nc = b.fneg(c)
            x = b.select(b.fcmp_ordered("<", x, nc), nc, x)
            x2 = b.fmul(x, x)
            p = self.r(7)
            for k in (6, 5, 4, 3, 2, 1):
                p = b.fadd(self.r(k), b.fmul(x2, p))
            p = b.fmul(x, p)
            q = self.r(11)
            for k in (10, 9, 8):
                q = b.fadd(self.r(k), b.fmul(x2, q))
            return b.fdiv(p, q)
        fn = cgutils.get_or_insert_function(b.module, ir.FunctionType(self.el, [self.el]), "tanh")
        if self.width == 1:
            return b.call(fn, [v])
        out = ir.Constant(self.ty, ir.Undefined)
        for lane in range(self.width):
            k = ir.Constant(ir.IntType(32), lane)
            out = b.insert_element(out, b.call(fn, [b.extract_element(v, k)]), k)
        return out


Body = Callable[[_Lanes], None]


#: operand addresses every op takes (an op that needs fewer is passed 0 for the rest: one signature)
N_PTRS = 7
#: operands of the ``_rows`` form (address and row stride each)
N_ROW_PTRS = 4


def _emit(context: Any, builder: ir.IRBuilder, R_type: Any, n: ir.Value, ptrs: list[ir.Value], R: ir.Value, body: Body) -> None:
    """``body`` over elements 0..n of the operands at ptrs (typed pointers): whole vectors, then one
    element at a time (R: the constants, an array of Numba type ``R_type``)."""
    dtype = R_type.dtype
    el = context.get_value_type(dtype)
    width = 16 if dtype == types.float32 else 8
    i64 = ir.IntType(64)
    Ra = context.make_array(R_type)(context, builder, R)
    consts = [builder.load(builder.gep(Ra.data, [ir.Constant(i64, k)])) for k in range(R_TINY + 1)]
    vec = ir.VectorType(el, width)

    def loop(name: str, start: ir.Value, stop: ir.Value, step: int, ty: ir.Type, w: int) -> None:
        pre = builder.basic_block
        head = builder.append_basic_block(f"{name}.body")
        done = builder.append_basic_block(f"{name}.done")
        builder.cbranch(builder.icmp_unsigned("<", start, stop), head, done)
        builder.position_at_end(head)
        i = builder.phi(i64)
        i.add_incoming(start, pre)
        body(_Lanes(builder, ptrs, i, ty, consts, w))
        nxt = builder.add(i, ir.Constant(i64, step))
        i.add_incoming(nxt, builder.basic_block)
        builder.cbranch(builder.icmp_unsigned("<", nxt, stop), head, done)
        builder.position_at_end(done)

    whole = builder.and_(n, ir.Constant(i64, -width))  # elements in whole vectors
    # (gep on the element pointer: vector k starts at element k * width)
    loop("vec", ir.Constant(i64, 0), whole, width, vec, width)
    loop("rest", whole, n, 1, el, 1)


def emit(context: Any, builder: ir.IRBuilder, R_type: Any, R: ir.Value, body: Body, n: ir.Value, addrs: list[ir.Value]) -> None:
    """``body`` over elements 0..n of the operands at addresses ``addrs`` (i64), R (of Numba type
    ``R_type``) the constants: what the intrinsics below emit, for a kernel written in LLVM IR
    directly (``forward_ir``)."""
    el = context.get_value_type(R_type.dtype)
    ptrs = [builder.inttoptr(a, el.as_pointer()) for a in addrs]
    _emit(context, builder, R_type, n, ptrs, R, body)


def emit_rows(context: Any, builder: ir.IRBuilder, R_type: Any, R: ir.Value, body: Body, n: ir.Value, rows: ir.Value,
              operands: list[tuple[ir.Value, ir.Value]]) -> None:  # fmt: skip
    """``emit`` over ``rows`` rows, operand i at address a_i plus r * s_i elements in row r (operands:
    (a_i, s_i) pairs, i64)."""
    el = context.get_value_type(R_type.dtype)
    i64 = ir.IntType(64)
    bases = [builder.inttoptr(a, el.as_pointer()) for a, _ in operands]
    pre = builder.basic_block
    head = builder.append_basic_block("rows.body")
    done = builder.append_basic_block("rows.done")
    zero = ir.Constant(i64, 0)
    builder.cbranch(builder.icmp_signed(">", rows, zero), head, done)
    builder.position_at_end(head)
    r = builder.phi(i64)
    r.add_incoming(zero, pre)
    ptrs = [builder.gep(b, [builder.mul(r, st)]) for b, (_, st) in zip(bases, operands, strict=True)]
    _emit(context, builder, R_type, n, ptrs, R, body)
    nxt = builder.add(r, ir.Constant(i64, 1))
    r.add_incoming(nxt, builder.basic_block)
    builder.cbranch(builder.icmp_signed("<", nxt, rows), head, done)
    builder.position_at_end(done)


def _elementwise(n_ptrs: int, body: Body) -> Any:
    """An intrinsic ``op(n, p_0, ..., p_6, R)``: ``body`` over elements 0..n of the operands at
    addresses p_0..p_{n_ptrs-1}."""

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
        emit(context, builder, sig.args[-1], args[-1], body, args[0], list(args[1 : 1 + n_ptrs]))
        return context.get_dummy_value()

    def op(typingctx: Any, n: Any, p0: Any, p1: Any, p2: Any, p3: Any, p4: Any, p5: Any, p6: Any, R: Any) -> Any:
        return types.void(types.intp, *([types.uintp] * N_PTRS), R), codegen

    return intrinsic(prefer_literal=False)(op)


def _rows(n_ptrs: int, body: Body) -> Any:
    """An intrinsic ``op(n, rows, p_0, s_0, ..., p_3, s_3, R)``: ``body`` over elements 0..n of each of
    ``rows`` rows, row r of operand i at address p_i plus r * s_i elements (s_i = 0: the same row for
    all, as a bias added to each row or a bias gradient summed over them, in row order)."""

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
        operands = [(args[2 + 2 * k], args[3 + 2 * k]) for k in range(n_ptrs)]
        emit_rows(context, builder, sig.args[-1], args[-1], body, args[0], args[1], operands)
        return context.get_dummy_value()

    def op(
        typingctx: Any, n: Any, rows: Any, p0: Any, s0: Any, p1: Any, s1: Any, p2: Any, s2: Any, p3: Any, s3: Any, R: Any
    ) -> Any:
        args = [types.intp, types.intp] + [types.uintp, types.intp] * N_ROW_PTRS
        return types.void(*args, R), codegen

    return intrinsic(prefer_literal=False)(op)


# ---- the forward ops: p_0 the destination, then the operands (a, b, c) ----------------------------


def _f_add(v: _Lanes) -> None:
    v.st(0, v.b.fadd(v.ld(1), v.ld(2)))


def _f_mul(v: _Lanes) -> None:
    v.st(0, v.b.fmul(v.ld(1), v.ld(2)))


def _f_blend(v: _Lanes) -> None:  # d = g * a + (1 - g) * b, g = c
    b = v.b
    g = v.ld(3)
    v.st(0, b.fadd(b.fmul(g, v.ld(1)), b.fmul(b.fsub(v.r(R_ONE), g), v.ld(2))))


def _f_sigmoid(v: _Lanes) -> None:  # 1/2 tanh(a / 2) + 1/2
    b = v.b
    half = v.r(R_HALF)
    v.st(0, b.fadd(b.fmul(half, v.tanh(b.fmul(half, v.ld(1)))), half))


def _f_tanh(v: _Lanes) -> None:
    v.st(0, v.tanh(v.ld(1)))


# ---- the backward ops: p_0 the destination's gradient (read, zeroed last), then the operands'
# gradients (accumulated, in the scalar code's order), then values from the tape ---------------------


def _accumulate(v: _Lanes, i: int, term: ir.Value) -> None:
    v.st(i, v.b.fadd(v.ld(i), term))


def _clear(v: _Lanes) -> None:
    """The destination's gradient slot zeroed, after the op has read it (its slot is never one of
    the operands': ``kernel.gradient_slots``; so the loads and stores of the operands' slots need not
    wait behind this store)."""
    v.st(0, v.r(R_ZERO))


def _b_add(v: _Lanes) -> None:  # p: gd, ga, gb
    g = v.ld(0)
    _accumulate(v, 1, g)
    _accumulate(v, 2, g)
    _clear(v)


def _b_mul(v: _Lanes) -> None:  # p: gd, ga, gb, a, b
    av, bv = v.ld(3), v.ld(4)
    g = v.ld(0)
    _accumulate(v, 1, v.b.fmul(g, bv))
    _accumulate(v, 2, v.b.fmul(g, av))
    _clear(v)


def _b_blend(v: _Lanes) -> None:  # p: gd, ga, gb, gc, a, b, c
    b = v.b
    av, bv, w = v.ld(4), v.ld(5), v.ld(6)
    g = v.ld(0)
    _accumulate(v, 1, b.fmul(g, w))
    _accumulate(v, 2, b.fmul(g, b.fsub(v.r(R_ONE), w)))
    _accumulate(v, 3, b.fmul(g, b.fsub(av, bv)))
    _clear(v)


def _b_sigmoid(v: _Lanes) -> None:  # p: gd, ga, y (the op's output)
    b = v.b
    y = v.ld(2)
    g = v.ld(0)
    _accumulate(v, 1, b.fmul(b.fmul(g, y), b.fsub(v.r(R_ONE), y)))
    _clear(v)


def _b_tanh(v: _Lanes) -> None:  # p: gd, ga, y
    b = v.b
    y = v.ld(2)
    g = v.ld(0)
    _accumulate(v, 1, b.fmul(g, b.fsub(v.r(R_ONE), b.fmul(y, y))))
    _clear(v)


# ---- moving values: the seeding of a GEMM stage's destinations, copies, the gradients' bookkeeping ---


def _copy(v: _Lanes) -> None:
    v.st(0, v.ld(1))


def _add3(v: _Lanes) -> None:  # a GEMM's product plus the input projection's block and its bias
    v.st(0, v.b.fadd(v.ld(1), v.b.fadd(v.ld(2), v.ld(3))))


def _add_scalar(v: _Lanes) -> None:  # a GEMM's product plus a constant
    v.st(0, v.b.fadd(v.ld(1), v.scalar(2)))


def _zero(v: _Lanes) -> None:
    v.st(0, v.r(R_ZERO))


def _move(v: _Lanes) -> None:  # p_1 = p_0, then p_0 = 0 (a state's gradient into the carry)
    v.st(1, v.ld(0))
    _clear(v)


def _flush_copy(v: _Lanes) -> None:  # a gradient that feeds a GEMM, denormals flushed to zero
    v.st(0, v.flush(v.ld(1)))


def _b_bias(v: _Lanes) -> None:  # p_1 += p_0, then p_0 = 0: a bias's gradient summed over rows
    _accumulate(v, 1, v.ld(0))
    _clear(v)


def _b_loadp(v: _Lanes) -> None:  # the input projection's gradient (flushed) to dP (p_1) and its bias's (p_2)
    g = v.flush(v.ld(0))
    v.st(1, g)
    _accumulate(v, 2, g)
    _clear(v)


def _b_loadp_bias(v: _Lanes) -> None:  # as _b_loadp where a stage's DZ already holds the gradient: bias only
    _accumulate(v, 1, v.flush(v.ld(0)))
    _clear(v)


copy = _elementwise(2, _copy)
zero = _elementwise(1, _zero)
move = _elementwise(2, _move)
f_add = _elementwise(3, _f_add)
# ... and over rows of a chunk, each operand with its row stride
copy_rows = _rows(2, _copy)
add_rows = _rows(3, _f_add)
add3_rows = _rows(4, _add3)
add_scalar_rows = _rows(3, _add_scalar)
flush_copy_rows = _rows(2, _flush_copy)
b_bias_rows = _rows(2, _b_bias)
b_loadp_rows = _rows(3, _b_loadp)
b_loadp_bias_rows = _rows(2, _b_loadp_bias)
f_mul = _elementwise(3, _f_mul)
f_blend = _elementwise(4, _f_blend)
f_sigmoid = _elementwise(2, _f_sigmoid)
f_tanh = _elementwise(2, _f_tanh)
b_add = _elementwise(3, _b_add)
b_mul = _elementwise(5, _b_mul)
b_blend = _elementwise(7, _b_blend)
b_sigmoid = _elementwise(3, _b_sigmoid)
b_tanh = _elementwise(3, _b_tanh)

#: the ops' bodies by name, for kernels written in LLVM IR directly (``emit``, ``emit_rows``)
BODY: dict[str, Body] = {
    "copy": _copy, "add": _f_add, "add3": _add3, "add_scalar": _add_scalar, "mul": _f_mul, "blend": _f_blend,
    "sigmoid": _f_sigmoid, "tanh": _f_tanh, "zero": _zero, "move": _move, "flush_copy": _flush_copy, "b_bias": _b_bias,
    "b_loadp": _b_loadp, "b_loadp_bias": _b_loadp_bias, "b_add": _b_add, "b_mul": _b_mul, "b_blend": _b_blend,
    "b_sigmoid": _b_sigmoid, "b_tanh": _b_tanh,
}  # fmt: skip
