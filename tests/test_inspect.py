"""`cellsearch inspect` and the diagnostics behind it: the gradient flow against finite differences,
across backends and against PyTorch's autograd; the Jacobian; gates; figures; the CLI contract."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from cellsearch import compile, init_params, parse, zoo
from cellsearch.cli import cli, main
from cellsearch.inspect import diagnose, gate_names, lag_gradients
from cellsearch.inspect.diagnostics import (
    StepMap,
    fit_decay,
    reach,
    spectrum_dense,
    spectrum_matrix_free,
    step_jacobians,
    with_initial,
)
from cellsearch.inspect.figures import render_all
from cellsearch.train import evaluate, make_hp

T, B, I, H = 7, 2, 3, 4
TINY = make_hp(hidden=8, batch=4, backend="reference")


def setup(cell, rng, T=T):
    """Parameters, inputs, the reference trajectory (initial states first) and a projection r."""
    params = init_params(cell, I, H, rng, scale=2.0)  # larger weights: gradients that do not just vanish
    x = rng.normal(size=(T, B, I))
    state0 = {s: rng.normal(size=(B, H)) * 0.5 for s in cell.states}
    fwd = compile(cell, "reference").forward(params, x, state0)
    values = fwd.tape.values
    states = {s: np.stack([values[t][u] for t in range(T)]) for s, u in zip(cell.states, cell.updates, strict=True)}
    return params, x, with_initial(states, state0)


def surrogate(cell, params, x, full, t, k, r, state):
    """L_t = sum_s <r_s, s_t> with the states after step t-k set to ``state``: the reference run from
    step t-k+1 to t (k = 0: the states themselves)."""
    if k == 0:
        final = state
    else:
        final = compile(cell, "reference").forward(params, x[t - k + 1 : t + 1], state).states
    return sum(float(np.sum(r[s] * final[s])) for s in cell.states)


CELLS = ["rnn", "lstm", "gru", "lstm_peephole", "janet"]


@pytest.mark.parametrize("name", CELLS)
def test_lag_gradients_match_finite_differences(name, rng):
    cell = zoo.get(name)
    params, x, full = setup(cell, rng)
    positions, K = [4, 6], 5
    r = {s: rng.normal(size=(len(positions), B, H)) for s in cell.states}
    norms, kept = lag_gradients(compile(cell, "reference"), params, x, full, positions, r, K, keep=True)
    eps = 1e-6
    for p, t in enumerate(positions):
        for k in (0, 1, 3, 5):
            base = {s: full[s][t - k + 1].copy() for s in cell.states}  # s after step t-k
            rp = {s: r[s][p] for s in cell.states}
            for s in cell.states:
                fd = np.zeros((B, H))
                for idx in np.ndindex(B, H):
                    plus = {q: v.copy() for q, v in base.items()}
                    minus = {q: v.copy() for q, v in base.items()}
                    plus[s][idx] += eps
                    minus[s][idx] -= eps
                    fd[idx] = (
                        surrogate(cell, params, x, full, t, k, rp, plus) - surrogate(cell, params, x, full, t, k, rp, minus)
                    ) / (2 * eps)
                got = kept[k][s][p]
                assert np.allclose(got, fd, rtol=1e-6, atol=1e-8), (name, t, k, s, np.max(np.abs(got - fd)))
                assert np.allclose(norms[s][k, p], np.linalg.norm(fd, axis=1), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["lstm", "gru", "fgr"])
def test_cpu_backend_gives_the_same_lag_gradients(name, rng):
    cell = zoo.get(name)
    params, x, full = setup(cell, rng)
    positions, K = [5, 6], 6
    r = {s: rng.normal(size=(len(positions), B, H)) for s in cell.states}
    _, ref = lag_gradients(compile(cell, "reference"), params, x, full, positions, r, K, keep=True)
    _, cpu = lag_gradients(compile(cell, "cpu", np.float64), params, x, full, positions, r, K, keep=True)
    for k in range(K + 1):
        for s in cell.states:
            assert np.allclose(cpu[k][s], ref[k][s], rtol=1e-10, atol=1e-13)


def test_lag_gradients_match_pytorch_autograd_for_lstm(torch, rng):
    """Per-step state gradients from torch.nn.LSTMCell run step by step: each step's (h, c) is cloned
    into the tensors the next step reads, and those clones keep their gradients (retain_grad), so a
    clone's gradient is dL/d(state as the next step reads it), the quantity lag_gradients returns."""
    import test_torch_oracle as oracle  # its weight mapping, at its sizes

    T, B, I, H = oracle.T, oracle.B, oracle.I, oracle.H
    torch.manual_seed(0)
    mod = torch.nn.LSTM(I, H).double()
    step = torch.nn.LSTMCell(I, H).double()
    with torch.no_grad():
        step.weight_ih.copy_(mod.weight_ih_l0)
        step.weight_hh.copy_(mod.weight_hh_l0)
        step.bias_ih.copy_(mod.bias_ih_l0)
        step.bias_hh.copy_(mod.bias_hh_l0)
    cell = zoo.get("lstm")
    params = oracle.lstm_params(mod)
    x = rng.normal(size=(T, B, I))
    state0 = {"c": rng.normal(size=(B, H)), "h": rng.normal(size=(B, H))}
    fwd = compile(cell, "reference").forward(params, x, state0)
    states = {s: np.stack([fwd.tape.values[t][u] for t in range(T)]) for s, u in zip(cell.states, cell.updates, strict=True)}
    full = with_initial(states, state0)
    positions, K = [T - 2, T - 1], T - 1
    r = {s: rng.normal(size=(len(positions), B, H)) for s in cell.states}
    norms, kept = lag_gradients(compile(cell, "reference"), params, x, full, positions, r, K, keep=True)

    for p, t in enumerate(positions):
        h = torch.tensor(state0["h"], requires_grad=True)
        c = torch.tensor(state0["c"], requires_grad=True)
        carried = [(h, c)]  # carried[j + 1]: the states after step j, as step j + 1 reads them
        for j in range(t + 1):
            h_new, c_new = step(torch.tensor(x[j]), carried[-1])
            h_read, c_read = h_new.clone(), c_new.clone()
            h_read.retain_grad()
            c_read.retain_grad()
            carried.append((h_read, c_read))
        h_t, c_t = carried[t + 1]
        loss = (h_t * torch.tensor(r["h"][p])).sum() + (c_t * torch.tensor(r["c"][p])).sum()
        loss.backward()
        for k in range(K + 1):
            th, tc = carried[t + 1 - k]
            assert np.allclose(kept[k]["h"][p], th.grad.numpy(), rtol=1e-10, atol=1e-14), (t, k, "h")
            assert np.allclose(kept[k]["c"][p], tc.grad.numpy(), rtol=1e-10, atol=1e-14), (t, k, "c")
            both = np.sqrt(np.sum(th.grad.numpy() ** 2, axis=1) + np.sum(tc.grad.numpy() ** 2, axis=1))
            assert np.allclose(np.sqrt(norms["h"][k, p] ** 2 + norms["c"][k, p] ** 2), both, rtol=1e-10)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_step_jacobian_matches_finite_differences(name, rng):
    cell = zoo.get(name)
    params, x, full = setup(cell, rng)
    steps = [0, 3, 6]
    J = step_jacobians(compile(cell, "reference"), params, x, full, steps, seq=1)
    kernel = compile(cell, "reference")
    eps = 1e-6
    for n, t in enumerate(steps):
        base = {s: full[s][t][1:2].copy() for s in cell.states}  # sequence 1, before step t

        def run(state, t=t):
            out = kernel.forward(params, x[t : t + 1, 1:2], state).states
            return np.concatenate([out[s][0] for s in cell.states])

        cols = []
        for i, s in enumerate(cell.states):
            for u in range(H):
                plus = {q: v.copy() for q, v in base.items()}
                minus = {q: v.copy() for q, v in base.items()}
                plus[s][0, u] += eps
                minus[s][0, u] -= eps
                cols.append((run(plus) - run(minus)) / (2 * eps))
        fd = np.stack(cols, axis=1)  # fd[j, m] = d s_t[j] / d s_{t-1}[m]
        assert np.allclose(J[n], fd, rtol=1e-6, atol=1e-8)
    if name == "rnn":  # h_t = tanh(x W_x + h W_h + b): J = diag(1 - h_t^2) W_h^T
        t = steps[1]
        h_t = full["h"][t + 1][1]
        assert np.allclose(J[1], (1 - h_t**2)[:, None] * params["h.W_h"].T)


@pytest.mark.parametrize(("name", "hidden"), [("rnn", 16), ("lstm", 16), ("gru", 32), ("lstm_peephole", 32), ("lstm", 64)])
def test_matrix_free_spectrum_agrees_with_the_dense_one(name, hidden, rng):
    """Arnoldi on J^T and Lanczos on J^T J (J v by a central difference) against LAPACK on the dense
    Jacobian, at S*H = 16 to 128 state numbers."""
    cell = zoo.get(name)
    params = init_params(cell, I, hidden, rng, scale=1.5)
    x = rng.normal(size=(9, 2, I))
    fwd = compile(cell, "reference").forward(params, x)
    values = fwd.tape.values
    states = {s: np.stack([values[t][u] for t in range(9)]) for s, u in zip(cell.states, cell.updates, strict=True)}
    full = with_initial(states, fwd.tape.state0)
    kernel = compile(cell, "reference")
    steps = [0, 4, 8]
    radius, sigma = spectrum_dense(kernel, params, x, full, steps, seq=1)
    mf_radius, mf_sigma, unconverged = spectrum_matrix_free(kernel, params, x, full, steps, seq=1)
    assert unconverged == 0
    assert np.allclose(mf_radius, radius, rtol=1e-6) and np.allclose(mf_sigma, sigma, rtol=1e-7)
    # the products themselves: J^T u exactly, J v to about 1e-8
    J = step_jacobians(kernel, params, x, full, [4], seq=1)[0]
    m = StepMap(kernel, params, x, full, 4, seq=1)
    u, v = rng.normal(size=m.n), rng.normal(size=m.n)
    assert np.allclose(m.vjp(u), J.T @ u, rtol=1e-12, atol=1e-12)
    assert np.allclose(m.jvp(v), J @ v, rtol=1e-7, atol=1e-8)


def test_diagnose_goes_matrix_free_above_the_threshold():
    hp = make_hp(hidden=16, batch=2, backend="reference")
    dense = diagnose(zoo.get("gru"), "adding", {"length": 12}, hp, trajectory=False)
    free = diagnose(zoo.get("gru"), "adding", {"length": 12}, hp, trajectory=False, dense_max=8)
    assert dense["jacobian_method"] == "dense" and free["jacobian_method"] == "matrix-free"
    assert len(dense["jacobian_steps"]) == 12 and len(free["jacobian_steps"]) == 8  # fewer steps without the matrix
    by_step = dict(zip(dense["jacobian_steps"], dense["spectral_radius_by_step"], strict=True))
    assert free["spectral_radius_by_step"] == pytest.approx([by_step[t] for t in free["jacobian_steps"]], rel=1e-5)
    assert free["jacobian_unconverged"] == 0 and free["grad_norm_by_lag"] == dense["grad_norm_by_lag"]


def test_fit_decay_and_reach():
    k = np.arange(50)
    curve = 0.8**k
    assert fit_decay(curve) == pytest.approx(-np.log(0.8))
    assert reach(curve) == int(np.ceil(np.log(1e-3) / np.log(0.8)))
    assert reach(np.ones(10)) == 10  # never: one past the last lag
    assert reach(np.array([1.0, 0.0, 0.0])) == 1  # underflow counts as below


def test_gate_names_follow_the_cell():
    assert sorted(gate_names(zoo.get("lstm")).values()) == ["f", "i", "o"]
    assert sorted(gate_names(zoo.get("gru")).values()) == ["r", "u"]
    assert gate_names(zoo.get("rnn")) == {}
    assert sorted(gate_names(zoo.get("janet")).values()) == ["sigmoid(s - 1)", "sigmoid(s)"]
    inline = parse("state(h)\nh = tanh(linear(x, h)) * sigmoid(linear(x, h))\nreturn h\n")
    assert list(gate_names(inline).values()) == ["h.1"]  # the parameter-name prefix of its linear


def test_diagnose_contract_and_gate_statistics():
    hp = make_hp(hidden=8, batch=4, backend="reference", forget_bias=5)
    d = diagnose(zoo.get("lstm"), "delayed_recall", {"lag": 12}, hp, max_lag=10)
    json.dumps(d)  # JSON-able
    assert d["max_lag"] == 10 and len(d["grad_norm_by_lag"]) == 11
    assert d["grad_norm_by_lag"][0] == pytest.approx(1.0)
    assert set(d["grad_norm_by_lag_per_state"]) == {"c", "h"}
    assert isinstance(d["reach"], int) and isinstance(d["spectral_radius"], float)
    assert set(d["gates"]) == {"f", "i", "o"}
    assert all(set(g) == {"mean", "low", "high"} for g in d["gates"].values())
    assert d["gates"]["f"]["mean"] > 0.95 and d["gates"]["f"]["high"] > 0.5  # forget bias 5: saturated open
    assert d["gates"]["i"]["high"] < 0.2
    assert np.asarray(d["trajectory"]["c"]).shape == (13, 8)
    assert d["states"]["h"]["min"] >= -1 and d["states"]["h"]["max"] <= 1
    assert not d["trained"]


def test_the_rnn_forgets_faster_than_a_kept_lstm():
    rnn = diagnose(zoo.get("rnn"), "delayed_recall", {"lag": 40}, TINY, trajectory=False)
    lstm = diagnose(
        zoo.get("lstm"),
        "delayed_recall",
        {"lag": 40},
        make_hp(hidden=8, batch=4, backend="reference", forget_bias=5),
        trajectory=False,
    )
    assert rnn["reached"] and rnn["reach"] < 20
    assert not lstm["reached"] and lstm["reach"] == 41
    assert rnn["decay_rate"] > 10 * lstm["decay_rate"]
    assert rnn["spectral_radius"] < lstm["spectral_radius"]


def test_diagnose_backends_agree_and_trained_params():
    cell = zoo.get("gru")
    ref = diagnose(cell, "adding", {"length": 12}, TINY, trajectory=False)
    cpu = diagnose(cell, "adding", {"length": 12}, make_hp(hidden=8, batch=4, backend="cpu"), trajectory=False)
    assert np.allclose(ref["grad_norm_by_lag"], cpu["grad_norm_by_lag"], rtol=1e-9)
    hp = make_hp(hidden=8, batch=4, steps=3, eval_every=1, eval_size=8, backend="reference")
    plain = evaluate(cell, "adding", {"length": 12}, hp)
    result = evaluate(cell, "adding", {"length": 12}, hp, return_params=True)
    assert "params" not in plain and {k for k in result if k != "params"} == set(plain)
    trained = diagnose(cell, "adding", {"length": 12}, hp, params=result["params"], trajectory=False)
    initial = diagnose(cell, "adding", {"length": 12}, hp, trajectory=False)
    assert trained["trained"] and trained["grad_norm_by_lag"] != initial["grad_norm_by_lag"]


def test_figures_render(tmp_path):
    """Every figure, in its trained form (dashed initial curves, before/after gate rows, both heatmaps);
    the CLI tests render the plain form."""
    hp = make_hp(hidden=6, batch=3, backend="reference")
    diags = [diagnose(zoo.get(n), "delayed_recall", {"lag": 8}, hp) for n in ("lstm", "rnn")]
    trained = [dict(d, trained=True, initial=d) for d in diags]  # the shape of a trained diagnosis
    paths = render_all(trained, tmp_path)
    assert [p.split("/")[-1] for p in paths["shared"]] == ["grad_flow.png", "gates.png"]
    assert [[p.split("/")[-1] for p in c] for c in paths["cells"]] == [
        ["states_lstm.png", "states_lstm_init.png"],
        ["states_rnn.png", "states_rnn_init.png"],
    ]
    for p in [*paths["shared"], *(q for c in paths["cells"] for q in c)]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_json_contract(tmp_path):
    result = CliRunner().invoke(
        cli,
        ["inspect", "lstm", "rnn", "--task", "delayed_recall", "--task-opt", "lag=10", "--hp", "hidden=6", "--hp", "batch=3",
         "--hp", "backend=reference", "--out", str(tmp_path), "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["cell"] for r in rows] == ["lstm", "rnn"]
    for r in rows:
        assert isinstance(r["grad_norm_by_lag"], list) and all(isinstance(v, float) for v in r["grad_norm_by_lag"])
        assert len(r["grad_norm_by_lag"]) == 11
        assert isinstance(r["reach"], int) and isinstance(r["spectral_radius"], float)
        assert all(set(g) >= {"mean", "low", "high"} for g in r["gates"].values())
    assert set(rows[0]["gates"]) == {"f", "i", "o"} and rows[1]["gates"] == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gates.png", "grad_flow.png", "states_lstm.png", "states_rnn.png"]


def test_cli_trained_table(tmp_path):
    result = CliRunner().invoke(
        cli,
        ["inspect", "gru", "--task", "adding", "--task-opt", "length=10", "--hp", "hidden=6", "--hp", "batch=3", "--hp", "steps=3",
         "--hp", "eval_every=1", "--hp", "eval_size=6", "--hp", "backend=reference", "--trained", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert re.search(r"^gru +init ", result.output, re.M) and re.search(r"^gru +trained ", result.output, re.M)
    assert "gru training: ok" in result.output
    assert (tmp_path / "states_gru_init.png").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["inspect", "nosuchcell"], "unknown cell 'nosuchcell'"),
        (["inspect", "lstm", "--task", "nosuchtask"], "unknown task 'nosuchtask'"),
        (["inspect", "lstm", "--task-opt", "nosuchopt=1"], "nosuchopt"),
        (["inspect", "lstm", "--hp", "nosuchhp=1"], "unknown hyperparameter 'nosuchhp'"),
        (["inspect", "lstm", "--hp", "layers=2"], "one unidirectional layer"),
        (["inspect"], "Missing argument"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, fragment, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main([*args, "--out", str(tmp_path)] if len(args) > 1 else args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err
