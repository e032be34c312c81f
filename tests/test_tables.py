"""Every per-op fact lives in one table keyed by Op; a missing entry fails here."""

from cellsearch.grad.rules import FORWARD, VJP
from cellsearch.ir.ops import FUNCTIONS, LEAVES, OP_INFO, Op


def test_every_op_has_info():
    assert set(OP_INFO) == set(Op)


def test_every_computed_op_has_forward_and_gradient_rule():
    computed = set(Op) - LEAVES
    assert set(FORWARD) == computed
    assert set(VJP) == computed


def test_dsl_functions():
    assert set(FUNCTIONS) == {"linear", "peep", "blend", "sigmoid", "tanh", "relu", "identity"}


def test_kernel_opcodes_match_the_plan():
    from cellsearch.backends.cpu import interp
    from cellsearch.lowering.plan import Code

    for code in Code:
        assert getattr(interp, f"OP_{code.name}") == code.value
    from cellsearch.backends.cpu import rare

    assert rare.RARE == tuple(Code[n] for n in ("X", "CONST", "SUB", "RELU", "PEEP"))
    for n in ("X", "CONST", "SUB", "RELU", "PEEP"):
        assert getattr(rare, f"OP_{n}") == Code[n].value


def test_cuda_kernel_opcodes_and_table_columns_match():
    import pytest

    pytest.importorskip("numba.cuda")
    from cellsearch.backends import tables
    from cellsearch.backends.cpu import interp
    from cellsearch.backends.cuda import kernels
    from cellsearch.lowering.plan import Code

    for code in Code:
        assert getattr(kernels, f"OP_{code.name}") == code.value
    for name in dir(tables):
        if name[:2] in ("C_", "S_") and name[2:].isupper():
            assert getattr(interp, name) == getattr(tables, name), name
