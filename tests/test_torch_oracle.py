"""`lstm` and `gru` against torch.nn.LSTM / torch.nn.GRU in float64: outputs and every gradient.

Weight mapping (documented in the README): PyTorch stacks gate rows (LSTM: i, f, g, o; GRU: r, z, n)
in ``weight_ih_l0`` [G*H, I] and ``weight_hh_l0`` [G*H, H]; cellsearch multiplies ``x @ W`` so
``<gate>.W_x = weight_ih[rows].T`` and ``<gate>.W_h = weight_hh[rows].T``. PyTorch has two biases
per gate; a cellsearch ``linear`` has one, so ``<gate>.b = bias_ih[rows] + bias_hh[rows]``, except
the GRU's n gate, whose two linears keep them apart: ``n.b = bias_in``, ``n.1.b = bias_hn``.
"""

import numpy as np
import pytest

from cellsearch import param_specs, zoo
from cellsearch.backends import compile

T, B, I, H = 7, 3, 4, 5
LSTM_GATES = {"i": 0, "f": 1, "g": 2, "o": 3}
GRU_GATES = {"r": 0, "u": 1}


def rows(k):
    return slice(k * H, (k + 1) * H)


def lstm_params(mod):
    W_ih, W_hh = mod.weight_ih_l0.detach().numpy(), mod.weight_hh_l0.detach().numpy()
    b = (mod.bias_ih_l0 + mod.bias_hh_l0).detach().numpy()
    out = {}
    for gate, k in LSTM_GATES.items():
        out[f"{gate}.W_x"] = W_ih[rows(k)].T.copy()
        out[f"{gate}.W_h"] = W_hh[rows(k)].T.copy()
        out[f"{gate}.b"] = b[rows(k)].copy()
    return out


def gru_params(mod):
    W_ih, W_hh = mod.weight_ih_l0.detach().numpy(), mod.weight_hh_l0.detach().numpy()
    b_ih, b_hh = mod.bias_ih_l0.detach().numpy(), mod.bias_hh_l0.detach().numpy()
    out = {}
    for gate, k in GRU_GATES.items():
        out[f"{gate}.W_x"] = W_ih[rows(k)].T.copy()
        out[f"{gate}.W_h"] = W_hh[rows(k)].T.copy()
        out[f"{gate}.b"] = (b_ih[rows(k)] + b_hh[rows(k)]).copy()
    out["n.W_x"] = W_ih[rows(2)].T.copy()
    out["n.b"] = b_ih[rows(2)].copy()
    out["n.1.W_h"] = W_hh[rows(2)].T.copy()
    out["n.1.b"] = b_hh[rows(2)].copy()
    return out


def lstm_grads(mod):
    g_ih, g_hh = mod.weight_ih_l0.grad.numpy(), mod.weight_hh_l0.grad.numpy()
    g_b = mod.bias_ih_l0.grad.numpy()  # equals bias_hh's gradient: both are the summed bias's
    assert np.allclose(g_b, mod.bias_hh_l0.grad.numpy(), rtol=0, atol=1e-14)
    out = {}
    for gate, k in LSTM_GATES.items():
        out[f"{gate}.W_x"] = g_ih[rows(k)].T
        out[f"{gate}.W_h"] = g_hh[rows(k)].T
        out[f"{gate}.b"] = g_b[rows(k)]
    return out


def gru_grads(mod):
    g_ih, g_hh = mod.weight_ih_l0.grad.numpy(), mod.weight_hh_l0.grad.numpy()
    gb_ih, gb_hh = mod.bias_ih_l0.grad.numpy(), mod.bias_hh_l0.grad.numpy()
    out = {}
    for gate, k in GRU_GATES.items():
        out[f"{gate}.W_x"] = g_ih[rows(k)].T
        out[f"{gate}.W_h"] = g_hh[rows(k)].T
        out[f"{gate}.b"] = gb_ih[rows(k)]
    out["n.W_x"] = g_ih[rows(2)].T
    out["n.b"] = gb_ih[rows(2)]
    out["n.1.W_h"] = g_hh[rows(2)].T
    out["n.1.b"] = gb_hh[rows(2)]
    return out


def assert_close(name, ours, theirs, tol=1e-10):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} vs {theirs.shape}"
    err = np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-300)
    assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_matches_pytorch(torch, kind):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mod = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(I, H).double()
    cell = zoo.get(kind)
    params = (lstm_params if kind == "lstm" else gru_params)(mod)
    assert set(params) == {s.name for s in param_specs(cell, I, H)}

    x = rng.normal(size=(T, B, I))
    h0 = rng.normal(size=(B, H))
    c0 = rng.normal(size=(B, H))
    R = rng.normal(size=(T, B, H))
    Sh = rng.normal(size=(B, H))
    Sc = rng.normal(size=(B, H))

    tx = torch.tensor(x, requires_grad=True)
    th0 = torch.tensor(h0[None], requires_grad=True)
    tc0 = torch.tensor(c0[None], requires_grad=True)
    if kind == "lstm":
        out, (hT, cT) = mod(tx, (th0, tc0))
        loss = (out * torch.tensor(R)).sum() + (hT[0] * torch.tensor(Sh)).sum() + (cT[0] * torch.tensor(Sc)).sum()
    else:
        out, hT = mod(tx, th0)
        loss = (out * torch.tensor(R)).sum() + (hT[0] * torch.tensor(Sh)).sum()
    loss.backward()

    kernel = compile(cell, "reference")
    state0 = {"h": h0, "c": c0} if kind == "lstm" else {"h": h0}
    fwd = kernel.forward(params, x, state0)
    d_state = {"h": Sh, "c": Sc} if kind == "lstm" else {"h": Sh}
    grads = kernel.backward(params, fwd.tape, R, d_state)

    assert_close("outputs", fwd.outputs, out.detach().numpy())
    assert_close("h_T", fwd.states["h"], hT[0].detach().numpy())
    if kind == "lstm":
        assert_close("c_T", fwd.states["c"], cT[0].detach().numpy())
        assert_close("dc0", grads.state0["c"], tc0.grad[0].numpy())
    assert_close("dx", grads.x, tx.grad.numpy())
    assert_close("dh0", grads.state0["h"], th0.grad[0].numpy())
    theirs = (lstm_grads if kind == "lstm" else gru_grads)(mod)
    for name, g in theirs.items():
        assert_close(f"d{name}", grads.params[name], g)
