"""Training: it learns, it is deterministic, and failures come back as data, never as exceptions."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cellsearch import ConfigError, zoo
from cellsearch.cli import cli
from cellsearch.model import Model
from cellsearch.train import Adam, NesterovSGD, clip_by_global_norm, evaluate, make_hp

QUICK = {"steps": 300, "hidden": 16, "lr": 0.02, "eval_every": 100, "eval_size": 64}


def test_lstm_learns_delayed_recall():
    r = evaluate(zoo.get("lstm"), "delayed_recall", {"lag": 5}, make_hp(**QUICK), seed=0)
    assert r["status"] == "ok", r["reason"]
    assert r["baseline"] == pytest.approx(1 / 8)
    assert r["valid"] > 0.5 and r["test"] > 0.5  # chance is 0.125


def test_same_seed_same_numbers():
    hp = make_hp(**{**QUICK, "steps": 60, "eval_every": 20})
    a = evaluate(zoo.get("gru"), "parity", {"length": 8}, hp, seed=3)
    b = evaluate(zoo.get("gru"), "parity", {"length": 8}, hp, seed=3)
    c = evaluate(zoo.get("gru"), "parity", {"length": 8}, hp, seed=4)
    assert a["history"] == b["history"] and a["test"] == b["test"]
    assert a["history"] != c["history"]


def test_an_evaluation_runs_blas_at_one_thread_wherever_it_runs():
    """``evaluate`` holds BLAS at one thread while it trains, whatever the caller's setting, and
    restores it: the same bits as a search's workers (which pin one thread) — BLAS's thread count
    moved the last bits of ``cellsearch eval`` — and no BLAS threads spinning on a busy machine (~10x
    slower). In a fresh process, where SciPy's BLAS (the one the kernels' np.dot calls) is loaded
    only by the evaluation itself."""
    import os
    import subprocess
    import sys

    code = """
import json
from threadpoolctl import threadpool_info, threadpool_limits
from cellsearch import zoo
from cellsearch.train import evaluate, make_hp
seen = []
tick = lambda step, steps, loss: seen.append(max(i["num_threads"] for i in threadpool_info()))
hp = make_hp(steps=20, eval_every=10, eval_size=32)
first = evaluate(zoo.get("lstm"), "copy", {"length": 5, "n": 3}, hp, progress=tick)
mine = max(i["num_threads"] for i in threadpool_info())
with threadpool_limits(1):
    pinned = evaluate(zoo.get("lstm"), "copy", {"length": 5, "n": 3}, hp, progress=tick)
print(json.dumps({"seen": sorted(set(seen)), "mine": mine, "same": first["history"] == pinned["history"]}))
"""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "3", "OMP_NUM_THREADS": "3"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["seen"] == [1] and got["same"]
    if (os.cpu_count() or 1) > 1:
        assert got["mine"] > 1  # the caller's own setting, restored once the evaluation ended


def test_divergence_is_data(monkeypatch):
    calls = {"n": 0}
    real = Model.loss_and_grads

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss, grads = real(self, *args, **kwargs)
        return (float("nan") if calls["n"] == 7 else loss), grads

    monkeypatch.setattr(Model, "loss_and_grads", poisoned)
    r = evaluate(zoo.get("rnn"), "adding", {"length": 10}, make_hp(**QUICK), seed=0)
    assert r["status"] == "diverged"
    assert "step 7" in r["reason"]


def test_exploding_training_diverges():
    hp = make_hp(steps=200, hidden=16, lr=10.0, optimizer="sgd", momentum=0.9, clip=0, init_scale=5.0, eval_every=50)
    r = evaluate(zoo.get("noaf"), "adding", {"length": 20}, hp, seed=0)
    assert r["status"] == "diverged", r


def test_a_crash_is_data(monkeypatch):
    def boom(self, *args, **kwargs):
        raise RuntimeError("worker fell over")

    monkeypatch.setattr(Model, "loss_and_grads", boom)
    r = evaluate(zoo.get("lstm"), "copy", {"length": 5}, make_hp(**QUICK), seed=0)
    assert r["status"] == "failed" and "worker fell over" in r["reason"]


def test_time_budget():
    r = evaluate(zoo.get("lstm"), "copy", {"length": 20}, make_hp(**{**QUICK, "steps": 100000, "time_budget": 0.5}), seed=0)
    assert r["status"] == "timeout"
    assert 0 < r["steps"] < 100000 and r["valid"] is not None


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"lr": -1}, "'lr' must be in"),
        ({"optimizer": "rmsprop"}, "'optimizer' must be one of"),
        ({"lrr": 1}, "unknown hyperparameter 'lrr'"),
        ({"hidden": 2.5}, "'hidden' must be an integer"),
    ],
)
def test_bad_hyperparameters(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_hp(**values)


def test_optimisers_and_clipping():
    p = {"w": np.array([1.0, -2.0])}
    for opt in (Adam(0.1), NesterovSGD(0.1, 0.9)):
        q = {"w": p["w"].copy()}
        for _ in range(200):
            opt.step(q, {"w": 2 * q["w"]})  # minimise |w|^2
        assert np.abs(q["w"]).max() < 0.05
    g = {"a": np.array([3.0, 4.0])}
    assert clip_by_global_norm(g, 1.0) == pytest.approx(5.0)
    assert np.linalg.norm(g["a"]) == pytest.approx(1.0)


def _numpy_adam(params, grads, m, v, t, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    """Adam as NumPy expressions (what the njit loop must match bit for bit)."""
    c1, c2 = 1.0 - b1**t, 1.0 - b2**t
    for k, g in grads.items():
        m[k] *= b1
        m[k] += (1.0 - b1) * g
        v[k] *= b2
        v[k] += (1.0 - b2) * g * g
        params[k] -= (lr / c1) * m[k] / (np.sqrt(v[k] / c2) + eps)


def _numpy_nesterov(params, grads, vel, lr=0.01, mu=0.9):
    for k, g in grads.items():
        vel[k] *= mu
        vel[k] -= lr * g
        params[k] += mu * vel[k] - lr * g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["adam", "nesterov"])
def test_optimisers_give_numpys_bits(name, dtype):
    """The njit optimisers do NumPy's operations in NumPy's order: the same bits, float32 and
    float64, for contiguous arrays (the loop) and a strided one (NumPy itself)."""
    rng = np.random.default_rng(3)
    shapes = {"W": (7, 5), "b": (5,), "E": (4, 6)}
    params = {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}
    big = rng.normal(size=(4, 12)).astype(dtype)
    params["E"] = big[:, ::2]  # not contiguous: the NumPy path
    want = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in want.items()}
    v = {k: np.zeros_like(x) for k, x in want.items()}
    opt = Adam(0.01) if name == "adam" else NesterovSGD(0.01, 0.9)
    for t in range(1, 30):
        grads = {k: (rng.normal(size=s) * 10.0 ** rng.integers(-6, 3)).astype(dtype) for k, s in shapes.items()}
        opt.step(params, {k: g.copy() for k, g in grads.items()})
        if name == "adam":
            _numpy_adam(want, grads, m, v, t)
        else:
            _numpy_nesterov(want, grads, v)
        for k in shapes:
            assert params[k].tobytes() == want[k].tobytes(), f"{k} differs at step {t}"
    assert np.shares_memory(params["E"], big)  # updated in place


def test_global_norm_matches_numpy():
    from cellsearch.train import global_norm

    rng = np.random.default_rng(4)
    grads = {"a": rng.normal(size=(33, 7)).astype(np.float32), "b": rng.normal(size=300), "c": rng.normal(size=(5, 8))[:, ::3]}
    want = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads.values()))
    assert global_norm(grads) == pytest.approx(want, rel=1e-12)
    grads["a"][3, 2] = np.inf
    assert global_norm(grads) == np.inf
    grads["b"][0] = np.nan
    assert np.isnan(global_norm(grads))


def test_eval_cli_json_contract():
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "gru",
            "--task",
            "parity",
            "--task-opt",
            "length=6",
            "--hp",
            "steps=20",
            "--hp",
            "eval_every=10",
            "--seed",
            "1",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output[result.output.index("{") :])
    for key in ("status", "metric", "valid", "test", "baseline", "steps", "seconds"):
        assert key in info
    assert info["status"] == "ok" and info["metric"] == "accuracy" and info["steps"] == 20


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--task", "copy", "--task-opt", "length=0"], "option 'length'"),
        (["--task", "copy", "--task-opt", "oops"], "key=value"),
        (["--task", "copy", "--hp", "batch=0"], "'batch'"),
    ],
)
def test_eval_bad_input_exits_2(args, fragment, capsys):
    from cellsearch.cli import main

    with pytest.raises(SystemExit) as info:
        main(["eval", "lstm", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_an_impossible_x_use_is_a_config_error():
    from cellsearch.train.loop import check_config

    with pytest.raises(ConfigError, match="embed must equal hidden"):
        check_config(zoo.get("mut1"), "copy", {}, make_hp(hidden=16, embed=8))
    check_config(zoo.get("mut1"), "copy", {}, make_hp(hidden=16))  # the embedding is then H wide
    check_config(zoo.get("mut1"), "adding", {}, make_hp(hidden=16))  # vectors are projected to H


def test_bidirectional_stacked_training_runs():
    r = evaluate(
        zoo.get("gru"),
        "parity",
        {"length": 8, "running": True},
        make_hp(**{**QUICK, "steps": 40, "eval_every": 20, "layers": 2, "bidirectional": "true"}),
        seed=0,
    )
    assert r["status"] == "ok" and r["hp"]["layers"] == 2 and r["hp"]["bidirectional"] is True


def test_an_elementwise_x_cell_cannot_stack_bidirectionally():
    from cellsearch.train.loop import check_config

    with pytest.raises(ConfigError, match="2H"):
        check_config(zoo.get("mut1"), "copy", {}, make_hp(layers=2, bidirectional=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_flat_steps_give_the_per_array_steps_bits(name, dtype):
    """The training loop's path (parameters as views into one buffer, gradients gathered, one call
    to clip and one to step) gives the bits of clip_by_global_norm and step over the dicts, with the
    gradients' dict in another order than the parameters' and the clipping active at most steps."""
    from cellsearch.train.optim import Flat, clip_flat

    rng = np.random.default_rng(7)
    shapes = {"W": (7, 5), "b": (5,), "E": (4, 6), "s": (1,)}
    params = {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}
    flat = Flat(params)
    assert all(np.shares_memory(v, flat.buffer) and v.flags.c_contiguous for v in flat.params.values())
    want = {k: v.copy() for k, v in params.items()}
    new = (lambda: Adam(0.01)) if name == "adam" else (lambda: NesterovSGD(0.01, 0.9))
    opt, ref = new(), new()
    gbuf = np.empty_like(flat.buffer)
    clipped = 0
    for t in range(25):
        grads = {k: (rng.normal(size=shapes[k]) * 10.0 ** rng.integers(-3, 2)).astype(dtype) for k in ("E", "s", "W", "b")}
        ref_g = {k: g.copy() for k, g in grads.items()}
        g = flat.gather(grads, gbuf)
        norm = clip_flat(g, flat.parts(grads), 1.0)
        want_norm = clip_by_global_norm(ref_g, 1.0)
        assert norm == want_norm, f"norm differs at step {t}"
        clipped += norm > 1.0
        opt.step_flat(flat.buffer, g)
        ref.step(want, ref_g)
        for k in shapes:
            assert flat.params[k].tobytes() == want[k].tobytes(), f"{k} differs at step {t}"
    assert 5 <= clipped <= 24
    with pytest.raises(ValueError, match="shape"):
        flat.gather({**grads, "W": np.zeros((5, 7), dtype)})
    with pytest.raises(ValueError, match="one float dtype"):
        Flat({"a": np.zeros(3, np.float32), "b": np.zeros(3, np.float64)})
