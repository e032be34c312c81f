"""The op vocabulary of the cell IR and every per-op fact, each in one table keyed by ``Op``.

A test fails when an op is missing from any table (``tests/test_tables.py``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Op(enum.Enum):
    # ** leaves: what a step starts from **
    INPUT = "input"  # x_t, size I
    STATE = "state"  # a state's value from the previous step, size H; attrs: name
    CONST = "const"  # a scalar, broadcast; attrs: value
    # ** parameterised: each node owns its parameters **
    LINEAR = "linear"  # sum_k arg_k @ W_k + b; attrs: bias (a number: init hint; NO_BIAS: no b at all)
    PEEP = "peep"  # p * v, p a vector (H)
    # ** elementwise arithmetic **
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    BLEND = "blend"  # blend(a, b, g) = g*a + (1-g)*b
    # ** activations **
    SIGMOID = "sigmoid"
    TANH = "tanh"
    RELU = "relu"
    IDENTITY = "identity"


@dataclass(frozen=True)
class OpInfo:
    arity: int | None  # None: one or more arguments (linear)
    commutative: bool  # argument order does not matter
    dsl: str | None  # the DSL spelling: a function name or an operator symbol


OP_INFO: dict[Op, OpInfo] = {
    Op.INPUT: OpInfo(0, False, "x"),
    Op.STATE: OpInfo(0, False, None),
    Op.CONST: OpInfo(0, False, None),
    Op.LINEAR: OpInfo(None, True, "linear"),
    Op.PEEP: OpInfo(1, False, "peep"),
    Op.ADD: OpInfo(2, True, "+"),
    Op.SUB: OpInfo(2, False, "-"),
    Op.MUL: OpInfo(2, True, "*"),
    Op.BLEND: OpInfo(3, False, "blend"),
    Op.SIGMOID: OpInfo(1, False, "sigmoid"),
    Op.TANH: OpInfo(1, False, "tanh"),
    Op.RELU: OpInfo(1, False, "relu"),
    Op.IDENTITY: OpInfo(1, False, "identity"),
}

LEAVES = frozenset({Op.INPUT, Op.STATE, Op.CONST})
PARAMETERISED = frozenset({Op.LINEAR, Op.PEEP})
ACTIVATIONS = frozenset({Op.SIGMOID, Op.TANH, Op.RELU, Op.IDENTITY})
BINARY = frozenset({Op.ADD, Op.SUB, Op.MUL})
#: ops whose result is a pure function of their arguments (safe to merge when equal)
PURE = frozenset(Op) - PARAMETERISED - {Op.INPUT, Op.STATE}
#: DSL function names -> op
FUNCTIONS: dict[str, Op] = {
    info.dsl: op for op, info in OP_INFO.items() if info.dsl is not None and info.dsl.isidentifier() and op is not Op.INPUT
}
#: keyword arguments each function accepts: ``linear(..., bias=v)`` with a number (an initialisation
#: hint) or ``none`` (no bias parameter at all)
KEYWORDS: dict[Op, frozenset[str]] = {Op.LINEAR: frozenset({"bias"})}
#: the ``bias`` attribute of a ``linear`` without a bias, spelled ``linear(..., bias=none)``
NO_BIAS = "none"
