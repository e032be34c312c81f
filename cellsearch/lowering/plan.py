"""The Plan: what a fast backend needs to run a cell, and nothing else.

Every node of the cell gets a value slot per time step (slot = node index). The Plan has:

- the **input GEMM**: every ``linear`` with ``x`` among its arguments owns one block of H columns in
  ``W_x [I, NX*H]``; the whole sequence is projected at once (``X[T*B, I] @ W_x + b``) before the
  time loop, and the block seeds that linear's slot each step (``LOADP``); a block's bias is None
  for a ``linear(..., bias=none)``, whose part of ``b`` is zero;
- a **step program**: a list of ops in dependency order. Leaves are filled (``STATE``, ``X``,
  ``CONST``); linears without an ``x`` term start from their bias (``BIAS``), or from 0 (``CONST``,
  a constant 0.0) when they have none (``linear(..., bias=none)``); each ``GEMM`` stage
  multiplies the already-computed H-vectors that linears read (``[B, ns*H] @ [ns*H, nk*H]``, all
  linears ready at that point fused) and adds into their slots; elementwise ops follow;
- the **backward** is the same program read in reverse, each op applying its VJP rule; weight
  gradients of the GEMM stages and the input GEMM are deferred to one GEMM each after the loop;
- a **tape layout**: only the values the backward reads (activation outputs, product and blend
  operands, ReLU and peephole inputs), the states' new values and the output are kept per step;
  everything else lives in scratch slots reused every step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..ir.ops import Op


class Code(enum.IntEnum):
    """Opcodes of the step program (int32 in the kernels)."""

    STATE = 0  # dst <- previous value of state aux
    X = 1  # dst <- x_t (x used elementwise; I == H)
    CONST = 2  # dst <- constant aux (also the 0 a linear without bias and x term starts from)
    LOADP = 3  # dst <- input projection block aux (x terms + bias)
    BIAS = 4  # dst <- bias aux
    GEMM = 5  # stage aux: dsts += pack(srcs) @ W
    ADD = 6
    SUB = 7
    MUL = 8
    BLEND = 9  # dst <- c*a + (1-c)*b
    SIGMOID = 10
    TANH = 11
    RELU = 12
    PEEP = 13  # dst <- p_aux * a


ELEMENTWISE = {
    Op.ADD: Code.ADD,
    Op.SUB: Code.SUB,
    Op.MUL: Code.MUL,
    Op.BLEND: Code.BLEND,
    Op.SIGMOID: Code.SIGMOID,
    Op.TANH: Code.TANH,
    Op.RELU: Code.RELU,
    Op.PEEP: Code.PEEP,
}


@dataclass(frozen=True)
class Instr:
    code: Code
    dst: int
    a: int = -1
    b: int = -1
    c: int = -1
    aux: int = -1


@dataclass(frozen=True)
class XBlock:
    """One block of the input GEMM: a linear's x weights (summed if x appears twice) and its bias
    (None for a ``linear(..., bias=none)``: that block's bias is zero and gets no gradient)."""

    node: int
    weights: tuple[str, ...]
    bias: str | None


@dataclass(frozen=True)
class Stage:
    """One recurrent GEMM: ``dsts += [srcs] @ W``; ``terms[k][i]`` names the weights from src i to dst k."""

    srcs: tuple[int, ...]
    dsts: tuple[int, ...]
    terms: tuple[tuple[tuple[str, ...], ...], ...]


@dataclass(frozen=True)
class Plan:
    cell_hash: str
    n_slots: int
    states: tuple[str, ...]
    state_slots: tuple[int, ...]  # slot of each state's previous value (-1: never read)
    update_slots: tuple[int, ...]
    output_slot: int
    xblocks: tuple[XBlock, ...]
    biases: tuple[str, ...]  # BIAS aux -> parameter name
    peeps: tuple[str, ...]  # PEEP aux -> parameter name
    consts: tuple[float, ...]
    stages: tuple[Stage, ...]
    program: tuple[Instr, ...]
    x_elementwise: bool
    # where each node's value lives: the tape (kept for every step, for the backward pass) or a
    # scratch slot reused every step; a state's previous value is read from the tape in place
    # (its update's slot one step back) unless the update is itself a leaf (then it is copied)
    tape_index: tuple[int, ...]  # node -> index among the taped slots, -1 when not taped
    scratch_index: tuple[int, ...]  # node -> index among the scratch slots, -1 when not scratch
    aliased: tuple[bool, ...]  # node -> a STATE leaf read in place from the tape

    VERSION = 2

    @property
    def n_taped(self) -> int:
        return max(self.tape_index, default=-1) + 1

    @property
    def n_scratch(self) -> int:
        return max(self.scratch_index, default=-1) + 1
