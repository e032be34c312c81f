"""The Plan as arrays, shared by the compiled backends (cpu and cuda): the step program as a table of
int64 rows with every operand's address in the value arena, the stage tables, the parameters packed
into the Plan's matrices, and the packed gradients unpacked back into named parameters.

The value arena ``A`` holds the tape ``[T+1, NT, B, H]`` (step 0 holds the initial states; only the
values the backward reads are taped) and then the scratch slots ``[NS, B, H]`` reused every step.
Node k's value at step t starts at ``A[const + t * tmul]`` (``tmul`` is 0 for scratch values); its
gradient during the backward step lives at ``G[k * B * H]``. A row of batch element b, unit j is at
``+ b * H + j`` in every slot. Backends walk the same tables, so the cpu and cuda kernels read the
same tape layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..lowering import Code, Plan

Array = np.ndarray

# columns of the ops table: code, aux, then per operand (d, a, b, c) its gradient offset in G (g)
# and its value address (const, tmul)
C_CODE, C_AUX = 0, 1
C_DG, C_DC, C_DM, C_AG, C_AC, C_AM, C_BG, C_BC, C_BM, C_CG, C_CC, C_CM = range(2, 14)
# columns of the stage tables (one row per source or destination): g offset, const, tmul
S_G, S_C, S_M = 0, 1, 2
# columns of the stage info table: sources, destinations, weight offset, K offset, DZ offset
I_NS, I_NK, I_W, I_K, I_Z = range(5)


@dataclass
class Tables:
    """The Plan's arrays for one (T, B, H), and the sizes of the work buffers they address."""

    ops: Array  # [n_ops, 14] int64
    stage_info: Array  # [n_stages, 6] int64
    stage_src: Array  # [n_stages, max srcs, 3] int64
    stage_dst: Array  # [n_stages, max dsts, 3] int64
    state_g: Array  # [n_states] gradient offset of each state's leaf (-1: never read)
    update_g: Array  # [n_states] gradient offset of each state's update
    init_at: Array  # [n_states] where each state's initial value goes in A (-1: copied at t == 0 instead)
    update_at: Array  # [n_states, 2] (const, tmul) of each state's update
    output_at: tuple[int, int]  # (const, tmul) of the output's value
    arena: int  # sizes (elements) of A, K (packed GEMM sources), DZ (GEMM output gradients), G, and
    k_size: int  # of the widest stage's [B, width] temporary
    dz_size: int
    g_size: int
    tmp_size: int
    scratch0: int  # where the scratch slots start in A


def tables(plan: Plan, T: int, B: int, H: int) -> Tables:
    BH = B * H
    NT = plan.n_taped
    scratch0 = (T + 1) * NT * BH
    tmul = NT * BH
    leaf_of = {s: k for s, k in zip(plan.states, plan.state_slots, strict=True)}
    update_of = dict(zip(plan.states, plan.update_slots, strict=True))
    state_name = {k: s for s, k in leaf_of.items() if k >= 0}

    def at(k: int) -> tuple[int, int, int]:
        """(gradient offset, const, tmul) of node k; its value at step t is A[const + t * tmul]."""
        if k < 0:
            return (0, 0, 0)
        if plan.aliased[k]:  # the update's slot, one tape step back
            return (k * BH, plan.tape_index[update_of[state_name[k]]] * BH, tmul)
        if plan.tape_index[k] >= 0:
            return (k * BH, (NT + plan.tape_index[k]) * BH, tmul)
        if plan.scratch_index[k] >= 0:
            return (k * BH, scratch0 + plan.scratch_index[k] * BH, 0)
        return (k * BH, 0, 0)

    rows = []
    for ins in plan.program:
        d, a, b, c = at(ins.dst), at(ins.a), at(ins.b), at(ins.c)
        if ins.code == Code.STATE:  # a copied state reads its update's slot one tape step back
            u = update_of[plan.states[ins.aux]]
            a = (0, plan.tape_index[u] * BH, tmul)
            b = (int(not plan.aliased[ins.dst]), 0, 0)
        rows.append((int(ins.code), ins.aux, *d, *a, *b, *c))
    ops = np.array(rows, dtype=np.int64).reshape(-1, 14)
    n = max(len(plan.stages), 1)
    info = np.zeros((n, 6), dtype=np.int64)
    src = np.zeros((n, max([len(s.srcs) for s in plan.stages] + [1]), 3), dtype=np.int64)
    dst = np.zeros((n, max([len(s.dsts) for s in plan.stages] + [1]), 3), dtype=np.int64)
    w = k = z = tmp = 0
    for g, st in enumerate(plan.stages):
        ns, nk = len(st.srcs), len(st.dsts)
        info[g] = (ns, nk, w, k, z, 0)
        src[g, :ns] = [at(v) for v in st.srcs]
        dst[g, :nk] = [at(v) for v in st.dsts]
        w += ns * H * nk * H
        k += T * B * ns * H
        z += T * B * nk * H
        tmp = max(tmp, B * ns * H, B * nk * H)
    init_at = [
        plan.tape_index[update_of[s]] * BH if leaf >= 0 and plan.aliased[leaf] else -1
        for s, leaf in zip(plan.states, plan.state_slots, strict=True)
    ]
    _, out_c, out_m = at(plan.output_slot)
    return Tables(
        ops,
        info,
        src,
        dst,
        state_g=np.array([v * BH if v >= 0 else -1 for v in plan.state_slots], dtype=np.int64),
        update_g=np.array([u * BH for u in plan.update_slots], dtype=np.int64),
        init_at=np.array(init_at, dtype=np.int64),
        update_at=np.array([at(u)[1:] for u in plan.update_slots], dtype=np.int64).reshape(-1, 2),
        output_at=(out_c, out_m),
        arena=scratch0 + plan.n_scratch * BH,
        k_size=max(k, 1),
        dz_size=max(z, 1),
        g_size=plan.n_slots * BH,
        tmp_size=max(tmp, 1),
        scratch0=scratch0,
    )


@dataclass
class PackedWeights:
    """The parameters as the Plan's matrices (host arrays)."""

    Wx: Array  # [I, NX*H]: every x block's weights (summed where x appears twice in one linear)
    bx: Array  # [NX*H]: their biases
    biases: Array  # [n_biases, H]: biases of linears without an x term
    peeps: Array  # [n_peeps, H]
    stages: Array  # the recurrent stages' weights [ns*H, nk*H] (or transposed) flattened one after another


def pack_weights(plan: Plan, params: Mapping[str, Array], I: int, H: int, dtype: np.dtype, transposed: bool) -> PackedWeights:
    """The Plan's arrays from named parameters; each stage's weights transposed when ``transposed``
    (the backward's). Every array is new (never a parameter itself), built by one concatenation per
    matrix: a training step packs twice, and at small sizes the calls are the cost."""
    dt = dtype

    def total(names: tuple[str, ...], shape: tuple[int, ...]) -> Array:  # the named parameters' sum, or zeros
        if not names:
            return np.zeros(shape, dtype=dt)
        out = np.asarray(params[names[0]], dtype=dt)
        for name in names[1:]:
            out = out + np.asarray(params[name], dtype=dt)
        return out

    NX = len(plan.xblocks)
    Wx = np.concatenate([total(blk.weights, (I, H)) for blk in plan.xblocks], axis=1) if NX else np.zeros((I, 0), dtype=dt)
    bias_names = [(blk.bias,) if blk.bias is not None else () for blk in plan.xblocks]  # a linear(..., bias=none) keeps 0
    bx = np.concatenate([total(names, (H,)) for names in bias_names]) if NX else np.zeros(0, dtype=dt)
    biases = np.stack([total((n,), (H,)) for n in plan.biases]) if plan.biases else np.zeros((0, H), dtype=dt)
    peeps = np.stack([total((n,), (H,)) for n in plan.peeps]) if plan.peeps else np.zeros((0, H), dtype=dt)
    Ws = []
    for st in plan.stages:
        rows = [np.concatenate([total(row[i], (H, H)) for row in st.terms], axis=1) for i in range(len(st.srcs))]
        W = np.concatenate(rows, axis=0)  # [ns*H, nk*H]: source i's rows, destination k's columns
        Ws.append((np.ascontiguousarray(W.T) if transposed else W).ravel())
    stages = np.concatenate(Ws) if Ws else np.zeros(1, dtype=dt)
    return PackedWeights(Wx, bx, biases, peeps, stages)


#: where a parameter's gradient sits in ``unpack_gradients``' arrays: (which, index, rows, columns), which
#: 0: dWx[:, columns], 1: dbx[columns], 2: dWs[index][rows, columns], 3: dB[index], 4: dPeep[index]
Part = tuple[int, int, slice, slice]


def unpack_recipe(plan: Plan, H: int) -> list[tuple[str, list[Part]]]:
    """Each parameter's parts for ``unpack_gradients``, in the order they are summed (a kernel that
    unpacks every step keeps this)."""
    parts: dict[str, list[Part]] = {}
    whole = slice(None)

    def cols(i: int) -> slice:
        return slice(i * H, (i + 1) * H)

    for i, blk in enumerate(plan.xblocks):
        for name in blk.weights:
            parts.setdefault(name, []).append((0, 0, whole, cols(i)))
        if blk.bias is not None:
            parts.setdefault(blk.bias, []).append((1, 0, whole, cols(i)))
    for g, st in enumerate(plan.stages):
        for k, row in enumerate(st.terms):
            for i, names in enumerate(row):
                for name in names:
                    parts.setdefault(name, []).append((2, g, cols(i), cols(k)))
    for i, name in enumerate(plan.biases):
        parts.setdefault(name, []).append((3, i, whole, whole))
    for i, name in enumerate(plan.peeps):
        parts.setdefault(name, []).append((4, i, whole, whole))
    return list(parts.items())


def unpack_gradients(
    plan: Plan,
    H: int,
    dWx: Array,
    dbx: Array,
    dWs: list[Array],
    dB: Array,
    dPeep: Array,
    recipe: list[tuple[str, list[Part]]] | None = None,
) -> dict[str, Array]:
    """Named parameter gradients from the packed ones (host arrays): ``dWx [I, NX*H]``, ``dbx
    [NX*H]``, one ``[ns*H, nk*H]`` per recurrent stage, ``dB [n_biases, H]``, ``dPeep [n_peeps, H]``.
    A parameter used at several sites gets the sum. Every array is new: never a view of these.
    ``recipe``: ``unpack_recipe(plan, H)``, when the caller keeps it."""
    grads: dict[str, Array] = {}
    for name, parts in recipe if recipe is not None else unpack_recipe(plan, H):
        total: Array | None = None
        for which, index, rows, columns in parts:
            if which == 0:
                part = dWx[:, columns]
            elif which == 1:
                part = dbx[columns]
            elif which == 2:
                part = dWs[index][rows, columns]
            else:
                part = (dB if which == 3 else dPeep)[index]
            total = part if total is None else total + part
        grads[name] = np.array(total, order="C")
    return grads
