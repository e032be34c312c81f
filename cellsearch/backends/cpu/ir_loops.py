"""The interpreters' time loops (``interp.forward_rows``, ``interp.backward_rows``) written in LLVM
IR directly.

Each of the two is one call of an intrinsic here (``forward``, ``backward``). As Numba functions,
each loop's first compile on a machine took ~1.5 s, of which Numba's own front end (bytecode to IR,
typing, inlining, lowering) was ~1 s and LLVM the rest; emitted as IR here, what is left is mostly
LLVM's part (benchmarks/README.md, session 13). The IR is the Numba code's, step for step: the same ops
in the same order through the same vector loops (``vector.emit``) and C functions (the microkernel,
the job runner, the rare ops), BLAS through Numba's own ``numba_xxgemm`` for float64, so the same bits
(tests/backends/test_conformance.py checks them against the reference; the zoo and 60 random cells
gave the Numba code's bytes, float32 and float64, one and two threads).

Forward, per step t: the step's input projection into P (rows r0..r1), then every op of the table
in order, each operand's rows q.. at ``A + (const + t * tmul + q * H) * itemsize``, the ops between
two GEMMs a tile of rows q..q' at a time; after the loop, the output's taped values copied to
``out``. Backward: the reverse walk (``interp.backward_rows``' doc). Row tiles keep each row's
sequence of operations (and the sums over rows in row order), so they give the same bytes as one
pass over all rows (tests/backends/test_conformance.py, ``test_cpu_row_tiles_give_the_same_bits``).
The tables' columns are ``interp``'s (``C_*``, ``S_*``, ``SEED_*``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import vector

I64 = ir.IntType(64)
Body = Callable[[], None]  # code emitted where it is called
# the arguments, as ``interp.forward_rows`` and ``interp.backward_rows`` take them
FORWARD_ARGS = ("ops stage_info stage_src stage_dst seed T B H A P bx X WX wx_panels S0 consts biases peeps W K TMP R r0 r1 "
                "out out_at out_step xr fpp fpr").split()  # fmt: skip
BACKWARD_ARGS = ("ops stage_info stage_src stage_dst T B H A state_g update_g output_g dOut dS peeps WT DZ TMP G dP dX dB "
                 "dPeep dBx R r0 r1 xr jobs chunk SB PK fpp fpk fpj fpr").split()  # fmt: skip


class _Emitter:
    """What the loop's code is written with: i64 arithmetic, loads from the int64 tables, loops and
    calls, on one IRBuilder."""

    def __init__(self, context: Any, builder: ir.IRBuilder, sig: Any, args: Any, names: list[str]) -> None:
        self.ctx, self.b = context, builder
        self.types = dict(zip(names, sig.args, strict=True))
        self.vals = dict(zip(names, args, strict=True))
        self.R_type = self.types["R"]
        self.isz = ir.Constant(I64, context.get_abi_sizeof(context.get_value_type(self.R_type.dtype)))
        R = context.make_array(self.R_type)(context, builder, self.vals["R"])
        self.zero = builder.load(builder.gep(R.data, [ir.Constant(I64, vector.R_ZERO)]))  # (0 in the dtype)
        # every array argument's data address (i64) and shape
        self.addr: dict[str, ir.Value] = {}
        self.shape: dict[str, list[ir.Value]] = {}
        for name, ty in self.types.items():
            if isinstance(ty, types.Array):
                ary = context.make_array(ty)(context, builder, self.vals[name])
                self.addr[name] = builder.ptrtoint(ary.data, I64)
                self.shape[name] = cgutils.unpack_tuple(builder, ary.shape)

    def k(self, v: int) -> ir.Constant:
        return ir.Constant(I64, v)

    def scalar(self, name: str) -> ir.Value:
        """An integer argument as i64 (bools and narrower ints widened)."""
        v, ty = self.vals[name], self.types[name]
        return self.ctx.cast(self.b, v, ty, types.int64)

    def addrs(self, names: str) -> list[ir.Value]:
        """The data addresses of the array arguments ``names`` (space-separated)."""
        return [self.addr[n] for n in names.split()]

    def row(self, name: str) -> ir.Value:
        """Elements per entry of the array argument ``name``'s first axis (a C-contiguous table's row)."""
        return self.mul(self.k(1), *self.shape[name][1:])

    def scalars(self, names: str) -> list[ir.Value]:
        """The integer arguments ``names`` (space-separated), as i64."""
        return [self.scalar(n) for n in names.split()]

    def add(self, *vs: ir.Value) -> ir.Value:
        out = vs[0]
        for v in vs[1:]:
            out = self.b.add(out, v)
        return out

    def mul(self, *vs: ir.Value) -> ir.Value:
        out = vs[0]
        for v in vs[1:]:
            out = self.b.mul(out, v)
        return out

    def load(self, base: ir.Value, index: ir.Value) -> ir.Value:
        """The int64 at element ``index`` of the table at address ``base``."""
        return self.b.load(self.b.gep(self.b.inttoptr(base, I64.as_pointer()), [index]))

    def loop(self, count: ir.Value, body: Callable[[ir.Value], None]) -> None:  # for i in range(count): body(i)
        with cgutils.for_range(self.b, count) as lp:
            body(lp.index)

    def loop_down(self, count: ir.Value, body: Callable[[ir.Value], None]) -> None:  # for i in range(count - 1, -1, -1)
        with cgutils.for_range(self.b, count) as lp:
            body(self.b.sub(self.b.sub(count, lp.index), self.k(1)))

    def cases(self, value: ir.Value, cases: list[tuple[tuple[int, ...], Body]], default: Body) -> None:
        """A switch on ``value``: the body of the first entry whose values hold it, else ``default``."""
        b = self.b
        other = b.append_basic_block("case.other")
        done = b.append_basic_block("case.done")
        switch = b.switch(value, other)
        for values, body in cases:
            block = b.append_basic_block(f"case.{values[0]}")
            for v in values:
                switch.add_case(self.k(v), block)
            b.position_at_end(block)
            body()
            b.branch(done)
        b.position_at_end(other)
        default()
        b.branch(done)
        b.position_at_end(done)

    def row_tiles(self, r0: ir.Value, r1: ir.Value, tile: ir.Value, body: Callable[[ir.Value, ir.Value], None]) -> None:
        """``body(q0, q1)`` for rows r0..r1 cut into tiles of ``tile`` rows (the last may be shorter)."""
        b = self.b

        def one(i: ir.Value) -> None:
            q0 = self.add(r0, self.mul(i, tile))
            end = self.add(q0, tile)
            body(q0, b.select(b.icmp_signed("<", end, r1), end, r1))

        self.loop(b.sdiv(self.add(b.sub(r1, r0), b.sub(tile, self.k(1))), tile), one)

    def when(self, cond: ir.Value, body: Body) -> None:  # if cond: body()
        with self.b.if_then(cond):
            body()

    def eq(self, a: ir.Value, v: int) -> ir.Value:
        return self.b.icmp_signed("==", a, self.k(v))

    def call(self, fn: ir.Value, sig: Any, args: list[ir.Value]) -> None:
        """The C function at address fn with Numba signature ``sig`` (its integers are all 64-bit)."""
        fnty = ir.FunctionType(ir.VoidType(), [self.ctx.get_value_type(t) for t in sig.args])
        self.b.call(self.b.inttoptr(fn, fnty.as_pointer()), args)

    def op(self, name: str, n: ir.Value, addrs: list[ir.Value]) -> None:
        vector.emit(self.ctx, self.b, self.R_type, self.vals["R"], vector.BODY[name], n, addrs)

    def op_rows(self, name: str, n: ir.Value, rows: ir.Value, operands: list[tuple[ir.Value, ir.Value]]) -> None:
        vector.emit_rows(self.ctx, self.b, self.R_type, self.vals["R"], vector.BODY[name], n, rows, operands)

    def gemm_blas(self, M: ir.Value, N: ir.Value, K: ir.Value, a: ir.Value, lda: ir.Value, b: ir.Value, ldb: ir.Value,
                  c: ir.Value, ldc: ir.Value, ab: ir.Value, isz: ir.Value) -> None:  # fmt: skip
        """``blas.gemm_at`` untransposed: row-major C[M, N] = alpha A[M, K] @ B[K, N] + beta C through
        Numba's ``numba_xxgemm`` (column-major: C^T = B^T @ A^T), ab the address of (alpha, beta)."""
        i8 = ir.IntType(8)
        fnty = ir.FunctionType(ir.IntType(32), [i8, i8, i8, *[I64] * 11])
        fn = cgutils.get_or_insert_function(self.b.module, fnty, "numba_xxgemm")
        kind = self.b.select(self.b.icmp_signed("==", isz, self.k(4)), ir.Constant(i8, 115), ir.Constant(i8, 100))  # s, d
        n = ir.Constant(i8, 110)
        self.b.call(fn, [kind, n, n, N, M, K, ab, b, ldb, a, lda, self.add(ab, isz), c, ldc])


def _forward(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
    from . import interp as ip  # (the tables' columns and op codes; interp imports this module)
    from .microkernel import PANELS_SIG
    from .rare import signatures

    e = _Emitter(context, builder, sig, args, FORWARD_ARGS)
    b, k, add, mul, load, isz, zero = builder, e.k, e.add, e.mul, e.load, e.isz, e.zero
    ops, info, src_t, dst_t, seed, A, P, bx, X, WX, S0, consts, biases, peeps, W, K, TMP, R, out = e.addrs(
        "ops stage_info stage_src stage_dst seed A P bx X WX S0 consts biases peeps W K TMP R out"
    )
    T, B, H, r0, r1, wx_panels, out_at, out_step, xr, fpp, fpr = e.scalars("T B H r0 r1 wx_panels out_at out_step xr fpp fpr")
    shape = e.shape
    nr = b.sub(r1, r0)
    ne = mul(nr, H)
    ab = add(R, mul(k(ip.R_AB), isz))  # (alpha, beta) = (1, 0)
    mw = b.udiv(shape["TMP"][0], B)  # TMP is [B, mw]: each range owns its rows
    I_, nx, nxh = shape["X"][2], shape["P"][1], shape["bx"][0]
    pp = add(P, mul(r0, nx, isz))
    W_ops, W_info, W_src, W_dst, W_seed = (e.row(n) for n in ("ops", "stage_info", "stage_src", "stage_dst", "seed"))

    def at(v: ir.Value, q: ir.Value) -> ir.Value:  # the address of rows q.. of the arena value at element v
        return add(A, mul(add(v, mul(q, H)), isz))

    def panels(*mnk_a_lda_bp_c_ldc: ir.Value) -> None:  # the microkernel: C = A @ W's panels (acc 0, rows of A)
        e.call(fpp, PANELS_SIG, [*mnk_a_lda_bp_c_ldc, k(0), k(0)])

    def step(t: ir.Value) -> None:
        def projection() -> None:  # this step's input projection, rows r0..r1: P = X[t] @ Wx
            xa = add(X, mul(add(mul(t, shape["X"][1]), r0), I_, isz))
            with b.if_else(b.icmp_signed("!=", wx_panels, k(0))) as (yes, no):
                with yes:
                    panels(nr, nxh, I_, xa, I_, WX, pp, nx)
                with no:
                    e.gemm_blas(nr, nxh, I_, xa, I_, WX, nxh, pp, nx, ab, isz)

        e.when(b.icmp_signed(">", nxh, k(0)), projection)
        e.loop(shape["ops"][0], lambda r: e.when(b.icmp_signed(">=", load(ops, add(mul(r, W_ops), k(ip.C_NEXT))), k(0)),
                                                 lambda: run(t, r)))  # fmt: skip

    def run(t: ir.Value, r: ir.Value) -> None:
        """The ops from r (a GEMM, or op 0) to the next GEMM: the GEMM's product over rows r0..r1 first,
        then the rest a tile of rows at a time (rows never interact), so their values stay in L1."""
        head = mul(r, W_ops)
        end, tile = load(ops, add(head, k(ip.C_NEXT))), load(ops, add(head, k(ip.C_TILE)))
        e.when(e.eq(load(ops, add(head, k(ip.C_CODE))), ip.OP_GEMM), lambda: product(t, load(ops, add(head, k(ip.C_AUX)))))

        e.row_tiles(r0, r1, tile, lambda q0, q1: e.loop(b.sub(end, r), lambda j: one_op(t, add(r, j), q0, q1)))

    def stage(g: ir.Value, t: ir.Value) -> tuple[ir.Value, ...]:  # GEMM stage g's (ns, nk, W offset, panels, K offset)
        irow = mul(g, W_info)
        ns, nk, woff, pan = (load(info, add(irow, k(c))) for c in (0, 1, 2, ip.C_PF))
        return ns, nk, woff, pan, add(load(info, add(irow, k(3))), mul(t, B, ns, H))

    def product(t: ir.Value, g: ir.Value) -> None:  # stage g's sources into K[t], their product into TMP (rows r0..r1)
        ns, nk, woff, pan, koff = stage(g, t)
        width = mul(ns, H)

        def gather(i: ir.Value) -> None:  # K[t] = [src_0 | src_1 | ...], one row per batch row
            s = add(mul(g, W_src), mul(i, shape["stage_src"][2]))
            src = add(load(src_t, add(s, k(ip.S_C))), mul(t, load(src_t, add(s, k(ip.S_M)))))
            kr = add(K, mul(add(koff, mul(r0, width), mul(i, H)), isz))
            e.op_rows("copy", H, nr, [(kr, width), (at(src, r0), H)])

        e.loop(ns, gather)
        ow = mul(nk, H)  # out: TMP's rows r0..r1, [nr, nk*H], row stride mw
        ka = add(K, mul(add(koff, mul(r0, width)), isz))
        tmp = add(TMP, mul(r0, mw, isz))
        with b.if_else(b.icmp_signed(">=", pan, k(0))) as (yes, no):
            with yes:
                panels(nr, ow, width, ka, width, add(W, mul(pan, isz)), tmp, mw)
            with no:
                e.gemm_blas(nr, ow, width, ka, width, add(W, mul(woff, isz)), ow, tmp, mw, ab, isz)

    def one_op(t: ir.Value, r: ir.Value, q0: ir.Value, q1: ir.Value) -> None:  # op r on rows q0..q1
        row = mul(r, W_ops)
        n = b.sub(q1, q0)
        eq0 = mul(q0, H)
        ne = mul(n, H)

        def col(c: int) -> ir.Value:
            return load(ops, add(row, k(c)))

        def val(v: ir.Value) -> ir.Value:
            return at(v, q0)

        code, aux = col(ip.C_CODE), col(ip.C_AUX)
        d, a, bb, c = (add(col(cc), mul(t, col(cm))) for cc, cm in ((ip.C_DC, ip.C_DM), (ip.C_AC, ip.C_AM),
                                                                     (ip.C_BC, ip.C_BM), (ip.C_CC, ip.C_CM)))  # fmt: skip

        def state() -> None:  # a copied state (the others are read in place from the tape)
            def copy() -> None:
                first = add(S0, mul(add(mul(aux, shape["S0"][1]), eq0), isz))
                src = b.select(b.icmp_signed("==", t, k(0)), first, val(a))
                e.op("copy", ne, [val(d), src])

            e.when(e.eq(col(ip.C_BG), 1), copy)

        def rare() -> None:
            fwd = signatures(e.R_type.dtype)[0]
            e.call(fpr, fwd, [code, aux, d, a, bb, A, shape["A"][0], X, shape["X"][0], shape["X"][1], shape["X"][2], t, consts,
                              shape["consts"][0], peeps, shape["peeps"][0], H, q0, q1, zero])  # fmt: skip

        def unless_folded(body: Body) -> Body:
            return lambda: e.when(e.eq(col(ip.C_FOLD), 0), body)

        def p_at(block: ir.Value) -> ir.Value:  # rows q0.. of the input projection's block
            return add(P, mul(add(mul(q0, nx), mul(block, H)), isz))

        def loadp() -> None:
            e.op_rows("add", H, n, [(val(d), H), (p_at(aux), nx), (add(bx, mul(aux, H, isz)), k(0))])

        def bias() -> None:
            e.op_rows("copy", H, n, [(val(d), H), (add(biases, mul(aux, H, isz)), k(0))])

        def unpack() -> None:  # each destination of stage aux: the product (in TMP) plus its seed, one pass
            nk = load(info, add(mul(aux, W_info), k(1)))

            def one(kk: ir.Value) -> None:
                s = add(mul(aux, W_dst), mul(kk, shape["stage_dst"][2]))
                dst = val(add(load(dst_t, add(s, k(ip.S_C))), mul(t, load(dst_t, add(s, k(ip.S_M))))))
                q = add(mul(aux, W_seed), mul(kk, shape["seed"][2]))
                kind, sx = load(seed, q), load(seed, add(q, k(1)))
                prod = add(TMP, mul(add(mul(q0, mw), mul(kk, H)), isz))

                def with_p() -> None:  # the input projection's block and bias, folded in
                    e.op_rows("add3", H, n, [(dst, H), (prod, mw), (p_at(sx), nx), (add(bx, mul(sx, H, isz)), k(0))])

                def with_bias() -> None:
                    e.op_rows("add", H, n, [(dst, H), (prod, mw), (add(biases, mul(sx, H, isz)), k(0))])

                def with_const() -> None:
                    e.op_rows("add_scalar", H, n, [(dst, H), (prod, mw), (add(consts, mul(sx, isz)), k(0))])

                def added() -> None:  # SEED_ADD: the product added to what is there
                    e.op_rows("add", H, n, [(dst, H), (dst, H), (prod, mw)])

                e.cases(kind, [((ip.SEED_P,), with_p), ((ip.SEED_BIAS,), with_bias), ((ip.SEED_CONST,), with_const)], added)

            e.loop(nk, one)

        e.cases(code, [
            ((ip.OP_STATE,), state),
            ((ip.OP_X, ip.OP_SUB, ip.OP_RELU, ip.OP_PEEP), rare),
            ((ip.OP_CONST,), unless_folded(rare)),
            ((ip.OP_LOADP,), unless_folded(loadp)),
            ((ip.OP_BIAS,), unless_folded(bias)),
            ((ip.OP_GEMM,), unpack),
            ((ip.OP_ADD,), lambda: e.op("add", ne, [val(d), val(a), val(bb)])),
            ((ip.OP_MUL,), lambda: e.op("mul", ne, [val(d), val(a), val(bb)])),
            ((ip.OP_BLEND,), lambda: e.op("blend", ne, [val(d), val(a), val(bb), val(c)])),
            ((ip.OP_SIGMOID,), lambda: e.op("sigmoid", ne, [val(d), val(a)])),
            ((ip.OP_TANH,), lambda: e.op("tanh", ne, [val(d), val(a)])),
        ], lambda: None)  # fmt: skip

    e.loop(T, step)

    def output(t: ir.Value) -> None:  # the output's taped values to out[t, xr + r0 .. xr + r1]
        o = add(out_at, mul(add(t, k(1)), out_step))
        dst = add(out, mul(add(mul(t, shape["out"][1]), xr, r0), H, isz))
        e.op("copy", ne, [dst, at(o, r0)])

    e.loop(T, output)
    return context.get_dummy_value()


@intrinsic(prefer_literal=False)
def forward(
    typingctx: Any, ops: Any, stage_info: Any, stage_src: Any, stage_dst: Any, seed: Any, T: Any, B: Any, H: Any, A: Any, P: Any,
    bx: Any, X: Any, WX: Any, wx_panels: Any, S0: Any, consts: Any, biases: Any, peeps: Any, W: Any, K: Any, TMP: Any, R: Any,
    r0: Any, r1: Any, out: Any, out_at: Any, out_step: Any, xr: Any, fpp: Any, fpr: Any,
) -> Any:  # fmt: skip
    """``interp.forward_rows``' loop, on its arguments (``FORWARD_ARGS``)."""
    args = (ops, stage_info, stage_src, stage_dst, seed, T, B, H, A, P, bx, X, WX, wx_panels, S0, consts, biases, peeps, W, K,
            TMP, R, r0, r1, out, out_at, out_step, xr, fpp, fpr)  # fmt: skip
    return types.void(*args), _forward


def _backward(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
    from . import interp as ip
    from .blas import JOBS_SIG
    from .microkernel import NR, PANELS_SIG
    from .rare import signatures

    e = _Emitter(context, builder, sig, args, BACKWARD_ARGS)
    b, k, add, mul, load, isz, zero = builder, e.k, e.add, e.mul, e.load, e.isz, e.zero
    ops, info, src_t, dst_t, A, state_g, update_g, dOut, dS, peeps, WT, DZ, TMP, G, dP, dX, dB, dPeep, dBx, R, jobs, PK = e.addrs(
        "ops stage_info stage_src stage_dst A state_g update_g dOut dS peeps WT DZ TMP G dP dX dB dPeep dBx R jobs PK"
    )
    T, B, H, r0, r1, xr, output_g, chunk, SB, fpp, fpk, fpj, fpr = e.scalars("T B H r0 r1 xr output_g chunk SB fpp fpk fpj fpr")
    shape = e.shape

    BH = mul(B, H)
    nr = b.sub(r1, r0)
    ne = mul(nr, H)
    ab = add(R, mul(k(ip.R_AB), isz))  # (alpha, beta) = (1, 0), then (1, 1)
    mw = b.udiv(shape["TMP"][0], B)  # TMP is [B, mw]: each range owns its rows
    # dS [nS, B*H] is the carry: each state's gradient into the step before (see interp.backward_rows)
    dPw = shape["dP"][1]
    W_ops, W_info, W_src, W_dst = (e.row(n) for n in ("ops", "stage_info", "stage_src", "stage_dst"))

    def g_at(v: ir.Value, q: ir.Value) -> ir.Value:  # rows q.. of gradient slot offset v in G
        return add(G, mul(add(v, mul(q, H)), isz))

    def a_at(v: ir.Value, q: ir.Value) -> ir.Value:  # rows q.. of the tape's value at element v in A
        return add(A, mul(add(v, mul(q, H)), isz))

    def carry_at(s: ir.Value, q: ir.Value) -> ir.Value:  # rows q.. of state s's carry in dS
        return add(dS, mul(add(mul(s, BH), mul(q, H)), isz))

    e.loop(b.udiv(shape["G"][0], BH), lambda slot: e.op("zero", ne, [g_at(mul(slot, BH), r0)]))

    def step(t: ir.Value) -> None:
        slot = b.urem(t, SB)  # this step's row block in the rings DZ and dP
        og = g_at(output_g, r0)
        e.op("add", ne, [og, og, add(dOut, mul(add(mul(t, shape["dOut"][1]), xr, r0), H, isz))])

        def carry(s: ir.Value) -> None:
            ug = g_at(load(update_g, s), r0)
            cs = carry_at(s, r0)
            e.op("add", ne, [ug, ug, cs])
            e.when(b.icmp_signed("<", load(state_g, s), k(0)), lambda: e.op("zero", ne, [cs]))

        e.loop(shape["dS"][0], carry)
        e.loop_down(shape["ops"][0], lambda r: e.when(b.icmp_signed(">=", load(ops, add(mul(r, W_ops), k(ip.C_PREV))), k(0)),
                                                      lambda: run(t, slot, r)))  # fmt: skip
        e.when(e.eq(slot, 0), lambda: weight_gradients(t))

    def weight_gradients(t: ir.Value) -> None:  # the first step of a block: its weight gradients
        left = b.sub(T, t)
        n = b.select(b.icmp_signed("<", SB, left), SB, left)
        e.call(fpj, JOBS_SIG, [jobs, shape["jobs"][0], chunk, t, n, ab, isz, fpp, fpk, PK])

    def stage(g: ir.Value) -> tuple[ir.Value, ...]:
        """GEMM stage g's ns, nk, W offset, panels offset, and whether its product goes straight into
        its one source's gradient (G[src] +=) rather than through TMP."""
        irow = mul(g, W_info)
        ns, nk, woff, pb = (load(info, add(irow, k(cc))) for cc in (0, 1, 2, ip.C_PB))
        panels_ok = b.or_(b.icmp_signed("<", pb, k(0)), e.eq(b.urem(H, k(NR)), 0))
        return ns, nk, woff, pb, b.and_(e.eq(ns, 1), panels_ok)

    def run(t: ir.Value, slot: ir.Value, r: ir.Value) -> None:
        """Walking down from op r to the next GEMM (or op 0) a tile of rows at a time: the scatter of
        the product of the GEMM just above first, then the ops, the GEMM's gather last; then that
        GEMM's product over rows r0..r1."""
        head = mul(r, W_ops)
        lo, above, tile = (load(ops, add(head, k(c))) for c in (ip.C_PREV, ip.C_SCAT, ip.C_TILE))

        def one_tile(q0: ir.Value, q1: ir.Value) -> None:
            e.when(b.icmp_signed(">=", above, k(0)), lambda: scatter(load(ops, add(mul(above, W_ops), k(ip.C_AUX))), q0, q1))
            e.loop(add(b.sub(r, lo), k(1)), lambda j: one_op(t, slot, b.sub(r, j), q0, q1))

        e.row_tiles(r0, r1, tile, one_tile)
        lo_row = mul(lo, W_ops)
        e.when(e.eq(load(ops, add(lo_row, k(ip.C_CODE))), ip.OP_GEMM), lambda: product(slot, load(ops, add(lo_row, k(ip.C_AUX)))))

    def product(slot: ir.Value, g: ir.Value) -> None:  # stage g: DZ[t] @ W^T, rows r0..r1, into G[src] or TMP
        ns, nk, woff, pb, direct = stage(g)
        width = mul(nk, H)
        zoff = add(load(info, add(mul(g, W_info), k(ip.C_ZR))), mul(slot, B, width))
        sw = mul(ns, H)
        first_src = load(src_t, add(mul(g, W_src), k(ip.S_G)))
        cp = b.select(direct, g_at(first_src, r0), add(TMP, mul(r0, mw, isz)))
        ldc = b.select(direct, H, mw)
        acc = b.select(direct, k(1), k(0))
        za = add(DZ, mul(add(zoff, mul(r0, width)), isz))
        with b.if_else(b.icmp_signed(">=", pb, k(0))) as (yes, no):
            with yes:
                e.call(fpp, PANELS_SIG, [nr, sw, width, za, width, add(WT, mul(pb, isz)), cp, ldc, acc, k(0)])
            with no:
                abk = add(ab, mul(acc, k(2), isz))
                e.gemm_blas(nr, sw, width, za, width, add(WT, mul(woff, isz)), sw, cp, ldc, abk, isz)

    def scatter(g: ir.Value, q0: ir.Value, q1: ir.Value) -> None:  # stage g's product in TMP added to its sources' gradients
        ns, _, _, _, direct = stage(g)
        n = b.sub(q1, q0)

        def one(i: ir.Value) -> None:
            grow = g_at(load(src_t, add(mul(g, W_src), mul(i, shape["stage_src"][2]), k(ip.S_G))), q0)
            e.op_rows("add", H, n, [(grow, H), (grow, H), (add(TMP, mul(add(mul(q0, mw), mul(i, H)), isz)), mw)])

        e.when(b.not_(direct), lambda: e.loop(ns, one))

    def one_op(t: ir.Value, slot: ir.Value, r: ir.Value, q0: ir.Value, q1: ir.Value) -> None:  # op r on rows q0..q1
        row = mul(r, W_ops)
        n = b.sub(q1, q0)
        ne = mul(n, H)

        def col(c: int) -> ir.Value:
            return load(ops, add(row, k(c)))

        def gv(v: ir.Value) -> ir.Value:
            return g_at(v, q0)

        def av(v: ir.Value) -> ir.Value:
            return a_at(v, q0)

        code, aux = col(ip.C_CODE), col(ip.C_AUX)
        gd, ga, gb, gc = (col(c) for c in (ip.C_DG, ip.C_AG, ip.C_BG, ip.C_CG))
        d, a, bb, c = (add(col(cc), mul(t, col(cm))) for cc, cm in ((ip.C_DC, ip.C_DM), (ip.C_AC, ip.C_AM),
                                                                     (ip.C_BC, ip.C_BM), (ip.C_CC, ip.C_CM)))  # fmt: skip

        def rare() -> None:
            bwd = signatures(e.R_type.dtype)[1]
            e.call(fpr, bwd, [code, aux, gd, ga, gb, a, A, shape["A"][0], G, shape["G"][0], dX, shape["dX"][0], shape["dX"][1],
                              shape["dX"][2], t, peeps, shape["peeps"][0], dPeep, H, q0, q1, zero])  # fmt: skip

        def loadp() -> None:  # (denormals flushed to zero, NaN kept)
            pc = mul(aux, H)
            pb = col(ip.C_DPB)
            grow = gv(gd)
            with b.if_else(b.icmp_signed(">=", pb, k(0))) as (yes, no):
                with yes:
                    prow = add(dP, mul(add(mul(add(mul(slot, B), q0), dPw), mul(pb, H)), isz))
                    e.op_rows("b_loadp", H, n, [(grow, H), (prow, dPw), (add(dBx, mul(pc, isz)), k(0))])
                with no:  # the stage's DZ holds this gradient already
                    e.op_rows("b_loadp_bias", H, n, [(grow, H), (add(dBx, mul(pc, isz)), k(0))])

        def gather() -> None:  # DZ[t] = [g_dst_0 | g_dst_1 | ...], denormals flushed to zero (rows q0..q1)
            irow = mul(aux, W_info)
            nk = load(info, add(irow, k(1)))
            width = mul(nk, H)
            zoff = add(load(info, add(irow, k(ip.C_ZR))), mul(slot, B, width))

            def one(kk: ir.Value) -> None:
                src = load(dst_t, add(mul(aux, W_dst), mul(kk, shape["stage_dst"][2]), k(ip.S_G)))
                zr = add(DZ, mul(add(zoff, mul(q0, width), mul(kk, H)), isz))
                e.op_rows("flush_copy", H, n, [(zr, width), (gv(src), H)])

            e.loop(nk, one)

        e.cases(code, [
            ((ip.OP_STATE,), lambda: e.op("move", ne, [gv(gd), carry_at(aux, q0)])),
            ((ip.OP_X, ip.OP_CONST, ip.OP_SUB, ip.OP_RELU, ip.OP_PEEP), rare),
            ((ip.OP_LOADP,), loadp),
            ((ip.OP_BIAS,), lambda: e.op_rows("b_bias", H, n, [(gv(gd), H), (add(dB, mul(aux, H, isz)), k(0))])),
            ((ip.OP_GEMM,), gather),
            ((ip.OP_ADD,), lambda: e.op("b_add", ne, [gv(gd), gv(ga), gv(gb)])),
            ((ip.OP_MUL,), lambda: e.op("b_mul", ne, [gv(gd), gv(ga), gv(gb), av(a), av(bb)])),
            ((ip.OP_BLEND,), lambda: e.op("b_blend", ne, [gv(gd), gv(ga), gv(gb), gv(gc), av(a), av(bb), av(c)])),
            ((ip.OP_SIGMOID,), lambda: e.op("b_sigmoid", ne, [gv(gd), gv(ga), av(d)])),
            ((ip.OP_TANH,), lambda: e.op("b_tanh", ne, [gv(gd), gv(ga), av(d)])),
        ], lambda: None)  # fmt: skip

    e.loop_down(T, step)
    return context.get_dummy_value()


@intrinsic(prefer_literal=False)
def backward(
    typingctx: Any, ops: Any, stage_info: Any, stage_src: Any, stage_dst: Any, T: Any, B: Any, H: Any, A: Any, state_g: Any,
    update_g: Any, output_g: Any, dOut: Any, dS: Any, peeps: Any, WT: Any, DZ: Any, TMP: Any, G: Any, dP: Any, dX: Any, dB: Any,
    dPeep: Any, dBx: Any, R: Any, r0: Any, r1: Any, xr: Any, jobs: Any, chunk: Any, SB: Any, PK: Any, fpp: Any, fpk: Any,
    fpj: Any, fpr: Any,
) -> Any:  # fmt: skip
    """``interp.backward_rows``' loop, on its arguments (``BACKWARD_ARGS``)."""
    args = (ops, stage_info, stage_src, stage_dst, T, B, H, A, state_g, update_g, output_g, dOut, dS, peeps, WT, DZ, TMP, G,
            dP, dX, dB, dPeep, dBx, R, r0, r1, xr, jobs, chunk, SB, PK, fpp, fpk, fpj, fpr)  # fmt: skip
    return types.void(*args), _backward


__all__ = ["BACKWARD_ARGS", "FORWARD_ARGS", "backward", "forward"]
