"""The cpu backend's table of moves (cellsearch/backends/cpu/moves.py): parameters into panels and
plain matrices, and the chunks' gradients summed into named ones, byte for byte as NumPy does them."""

from __future__ import annotations

import numpy as np
import pytest

from cellsearch.backends.cpu import moves
from cellsearch.backends.cpu.microkernel import pack_panels, panels_size

SHAPES = [(40, 70), (5, 33), (16, 32), (1, 1), (33, 17)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("K,N", SHAPES)
def test_panels_as_pack_panels(K, N, dtype):
    """A [K, N] matrix moved in as panels (kind PANEL), or given as its [N, K] transpose (PANEL_T),
    lands where ``pack_panels`` puts it (every element of the matrix's written over the 7s)."""
    rng = np.random.default_rng(K * 100 + N)
    W = rng.normal(size=(K, N)).astype(dtype)
    want = np.zeros(panels_size(K, N), dtype)
    pack_panels(W.ravel(), K, N, want, False)
    WT = np.ascontiguousarray(W.T)
    for kind, src in ((moves.PANEL, W), (moves.PANEL_T, WT)):
        out = np.full(panels_size(K, N), 7.0, dtype)
        out[want == 0] = 0  # (the padding, which the moves leave alone)
        table = np.array([moves.row(src.ctypes.data, *src.shape, src.shape[1], 1, 0, kind, 0, 0, K=K)], np.int64)
        moves.pack(table, out)
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("H", [20, 32])
def test_blocks_into_a_bigger_matrix_and_added(H, dtype):
    """Blocks side by side into [6, 2*H] (affine), then added onto: ``a`` again onto the first (a row
    16 at a time where it can), ``b``'s transpose onto the second (one element at a time): the sums
    are NumPy's, element by element."""
    rng = np.random.default_rng(H)
    a, b = rng.normal(size=(6, H)).astype(dtype), rng.normal(size=(H, 6)).astype(dtype)
    out = np.zeros((6, 2 * H), dtype)
    table = np.array(
        [
            moves.row(a.ctypes.data, 6, H, H, 1, 0, moves.AFFINE, 2 * H, 1),
            moves.row(a.ctypes.data, 6, H, H, 1, H, moves.AFFINE, 2 * H, 1),
            moves.row(a.ctypes.data, 6, H, H, 1, 0, moves.AFFINE, 2 * H, 1, add=True),
            moves.row(b.ctypes.data, H, 6, 6, 1, H, moves.AFFINE, 1, 2 * H, add=True),  # b^T added at columns H..
        ],
        np.int64,
    )
    moves.pack(table, out.ravel())
    assert out[:, :H].tobytes() == (a + a).tobytes()
    assert out[:, H:].tobytes() == (a + b.T).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("K,N", [(16, 64), (8, 40)])
def test_panels_added(K, N, dtype):
    """A matrix moved in as panels, then a second one added onto it: ``pack_panels`` of their sum."""
    rng = np.random.default_rng(N)
    W, V = rng.normal(size=(K, N)).astype(dtype), rng.normal(size=(K, N)).astype(dtype)
    want = np.zeros(panels_size(K, N), dtype)
    pack_panels((W + V).ravel(), K, N, want, False)
    out = np.zeros(panels_size(K, N), dtype)
    table = np.array(
        [moves.row(m.ctypes.data, K, N, N, 1, 0, moves.PANEL, 0, 0, K=K, add=i > 0) for i, m in enumerate((W, V))], np.int64
    )
    moves.pack(table, out)
    assert out.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("chunks", [1, 2, 3, 5])
def test_chunk_sums_are_numpys(chunks, dtype):
    """The chunks' partial gradients summed and transposed (as the weight gradients are unpacked),
    then a second part added: the same bytes as ``d.sum(axis=0).T`` and then ``+``."""
    rng = np.random.default_rng(chunks)
    R, C = 37, 21  # the block [R, C] is read transposed from [chunks, C, R]
    d = (rng.normal(size=(chunks, C, R)) * 10.0 ** rng.integers(-3, 4, size=(chunks, C, R))).astype(dtype)
    e = rng.normal(size=(chunks, R, C)).astype(dtype)
    out = np.empty((R, C), dtype)
    table = np.array(
        [
            moves.row(d.ctypes.data, R, C, 1, R, 0, moves.AFFINE, C, 1, n=chunks, ns=C * R),
            moves.row(e.ctypes.data, R, C, C, 1, 0, moves.AFFINE, C, 1, add=True, n=chunks, ns=R * C),
        ],
        np.int64,
    )
    moves.sums(table, out.ravel())
    want = d.sum(axis=0).T + e.sum(axis=0)
    assert out.tobytes() == want.tobytes()


def test_an_empty_table_moves_nothing():
    out = np.arange(4, dtype=np.float32)
    moves.pack(np.zeros((0, moves.WIDTH), np.int64), out)
    moves.sums(np.zeros((0, moves.WIDTH), np.int64), out)
    np.testing.assert_array_equal(out, np.arange(4, dtype=np.float32))
