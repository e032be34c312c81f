"""Lowering: Cell -> Plan, as a list of named passes."""

from __future__ import annotations

from functools import lru_cache

from ..errors import IRError
from ..ir.cell import Cell, Node
from ..ir.ops import Op
from ..ir.params import param_names
from .plan import ELEMENTWISE, Code, Instr, Plan, Stage, XBlock


def _input_gemm(cell: Cell) -> tuple[XBlock, ...]:
    """Every linear with an x argument gets one block of the input GEMM (its x weights and its bias,
    None for a linear(..., bias=none))."""
    names = param_names(cell)
    blocks = []
    for k, node in enumerate(cell.nodes):
        if node.op is Op.LINEAR:
            xs = tuple(names[k].weights[i] for i, a in enumerate(node.args) if cell.nodes[a].op is Op.INPUT)
            if xs:
                blocks.append(XBlock(k, xs, names[k].bias))
    return tuple(blocks)


def _schedule(
    cell: Cell, xblocks: tuple[XBlock, ...]
) -> tuple[tuple[Instr, ...], tuple[Stage, ...], tuple[str, ...], tuple[str, ...], tuple[float, ...]]:
    """The step program: leaves, then rounds of (one fused GEMM stage for every linear whose
    arguments are ready) and (every elementwise op whose arguments are ready), in node order."""
    names = param_names(cell)
    block_of = {b.node: i for i, b in enumerate(xblocks)}
    program: list[Instr] = []
    stages: list[Stage] = []
    biases: list[str] = []
    peeps: list[str] = []
    consts: list[float] = []
    done: set[int] = set()
    for k, node in enumerate(cell.nodes):
        if node.op is Op.STATE:
            program.append(Instr(Code.STATE, k, aux=cell.states.index(node.attr("name"))))
        elif node.op is Op.INPUT:
            if any(cell.nodes[u].op is not Op.LINEAR for u in cell.uses[k]) or k in cell.updates:
                program.append(Instr(Code.X, k))
        elif node.op is Op.CONST:
            program.append(Instr(Code.CONST, k, aux=len(consts)))
            consts.append(float(node.attr("value")))
        else:
            continue
        done.add(k)
    pending = [k for k, n in enumerate(cell.nodes) if k not in done]

    def ready(k: int) -> bool:
        return all(a in done or cell.nodes[a].op is Op.INPUT for a in cell.nodes[k].args)

    while pending:
        linears = [k for k in pending if cell.nodes[k].op is Op.LINEAR and ready(k)]
        if linears:
            for k in linears:
                bias = names[k].bias
                if k in block_of:
                    program.append(Instr(Code.LOADP, k, aux=block_of[k]))
                elif bias is None:  # a linear(..., bias=none) on H-vectors only: its GEMM adds to 0
                    program.append(Instr(Code.CONST, k, aux=len(consts)))
                    consts.append(0.0)
                else:
                    program.append(Instr(Code.BIAS, k, aux=len(biases)))
                    biases.append(bias)
            rec = [k for k in linears if any(cell.nodes[a].op is not Op.INPUT for a in cell.nodes[k].args)]
            if rec:
                srcs = sorted({a for k in rec for a in cell.nodes[k].args if cell.nodes[a].op is not Op.INPUT})
                terms = tuple(
                    tuple(tuple(names[k].weights[i] for i, a in enumerate(cell.nodes[k].args) if a == s) for s in srcs)
                    for k in rec
                )
                program.append(Instr(Code.GEMM, -1, aux=len(stages)))
                stages.append(Stage(tuple(srcs), tuple(rec), terms))
            done.update(linears)
        progressed = bool(linears)
        rest = []
        for k in pending:
            node = cell.nodes[k]
            if k in done:
                continue
            if node.op is not Op.LINEAR and ready(k):
                args = list(node.args) + [-1] * (3 - len(node.args))
                aux = -1
                if node.op is Op.PEEP:
                    aux = len(peeps)
                    peeps.append(str(names[k].peep))
                if node.op not in ELEMENTWISE:
                    raise IRError(f"cannot lower {node.op.name} (identity should have been removed by canonicalize)")
                program.append(Instr(ELEMENTWISE[node.op], k, args[0], args[1], args[2], aux))
                done.add(k)
                progressed = True
            else:
                rest.append(k)
        if not progressed:
            raise IRError(f"cannot schedule nodes {rest} of cell '{cell.name}'")
        pending = rest
    return tuple(program), tuple(stages), tuple(biases), tuple(peeps), tuple(consts)


#: what each op's VJP reads from the tape: its arguments ("args") and/or its own value ("self")
TAPE_READS: dict[Code, tuple[str, ...]] = {
    Code.MUL: ("args",),
    Code.BLEND: ("args",),
    Code.RELU: ("args",),
    Code.PEEP: ("args",),
    Code.SIGMOID: ("self",),
    Code.TANH: ("self",),
}


def _homes(cell: Cell, program: tuple[Instr, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[bool, ...]]:
    """Which values the tape keeps; the rest go to scratch slots. A STATE leaf is read in place from
    its update's tape slot one step back, unless the update is a leaf itself (then it is copied)."""
    n = len(cell.nodes)
    updates = set(cell.updates)
    shared = {u for u in updates if cell.updates.count(u) > 1}  # one slot cannot hold two initial states

    def in_place(k: int, node: Node) -> bool:
        if node.op is not Op.STATE or k in updates:
            return False
        u = cell.update_of(node.attr("name"))
        return not cell.nodes[u].is_leaf and u not in shared

    aliased = [in_place(k, node) for k, node in enumerate(cell.nodes)]
    keep = set(updates) | {cell.output}
    for ins in program:
        reads = TAPE_READS.get(ins.code, ())
        if "args" in reads:
            keep.update(a for a in (ins.a, ins.b, ins.c) if a >= 0)
        if "self" in reads:
            keep.add(ins.dst)
    tape = [-1] * n
    scratch = [-1] * n
    nt = ns = 0
    for k, node in enumerate(cell.nodes):
        if aliased[k] or (node.op is Op.INPUT and not any(i.code is Code.X and i.dst == k for i in program)):
            continue
        if k in keep and node.op is not Op.CONST:
            tape[k], nt = nt, nt + 1
        else:
            scratch[k], ns = ns, ns + 1
    return tuple(tape), tuple(scratch), tuple(aliased)


@lru_cache(maxsize=1024)
def lower(cell: Cell) -> Plan:
    xblocks = _input_gemm(cell)
    program, stages, biases, peeps, consts = _schedule(cell, xblocks)
    tape_index, scratch_index, aliased = _homes(cell, program)
    leaves = cell.state_nodes
    return Plan(
        cell_hash=cell.hash,
        n_slots=len(cell.nodes),
        states=cell.states,
        state_slots=tuple(leaves.get(s, -1) for s in cell.states),
        update_slots=cell.updates,
        output_slot=cell.output,
        xblocks=xblocks,
        biases=biases,
        peeps=peeps,
        consts=consts,
        stages=stages,
        program=program,
        x_elementwise=cell.x_elementwise,
        tape_index=tape_index,
        scratch_index=scratch_index,
        aliased=aliased,
    )
