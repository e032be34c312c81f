"""The executor's first use on a machine (``cpu/ahead.py``): with an empty Numba cache, the backward
compiles in a child process while the forward compiles here, and the first backward loads it from
the cache; its results are those of an in-process compile."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cellsearch.backends import compile
from cellsearch.backends.cpu import ahead, interp
from cellsearch.ir.params import init_params
from cellsearch.zoo import load

SCRIPT = """
import json, sys, numpy as np
from cellsearch.backends import compile
from cellsearch.backends.cpu import ahead, interp
from cellsearch.ir.params import init_params
from cellsearch.zoo import load
cell = load("gru")
rng = np.random.default_rng(0)
params = init_params(cell, 3, 5, rng, dtype=np.float32)
x = rng.normal(size=(4, 2, 3)).astype(np.float32)
kernel = compile(cell, "cpu")
started = ahead._children.get(("float32", False)) is not None
f = kernel.forward(params, x)
g = kernel.backward(params, f.tape, np.ones((4, 2, 5), np.float32))
stats = interp.backward_rows.stats
print(json.dumps({"started": started, "hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "signatures": [len(interp.forward_rows.signatures), len(interp.backward_rows.signatures)],
                  "forward_misses": sum(interp.forward_rows.stats.cache_misses.values()),
                  "grads": {k: v.tolist() for k, v in g.params.items()}}))
"""


def _run(tmp_path, **env):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cold_cache_compiles_backward_in_a_child(tmp_path):
    got = _run(tmp_path)
    assert got["started"], "an empty cache must start the child"
    assert (got["hits"], got["misses"]) == (1, 0), "the first backward must load what the child compiled"
    assert got["signatures"] == [1, 1], "one signature each: the child's made-up call has the real call's types"
    again = _run(tmp_path)  # now cached: no child, everything loads
    assert not again["started"] and (again["hits"], again["misses"]) == (1, 0)
    assert again["grads"] == got["grads"]
    cell = load("gru")  # and what the child compiled computes the gradients
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float64) for k, v in init_params(cell, 3, 5, rng, dtype=np.float32).items()}
    x = rng.normal(size=(4, 2, 3)).astype(np.float32).astype(np.float64)
    ref = compile(cell, "reference")
    want = ref.backward(params, ref.forward(params, x).tape, np.ones((4, 2, 5))).params
    for k, v in want.items():
        np.testing.assert_allclose(got["grads"][k], v, rtol=1e-4, atol=1e-5, err_msg=k)


def test_nothing_started_when_cached_or_switched_off(monkeypatch):
    compile(load("lstm"), "cpu")  # in this process: compiled or loaded by now
    kernel = compile(load("lstm"), "cpu")
    rng = np.random.default_rng(0)
    params = init_params(kernel.cell, 2, 3, rng, dtype=np.float32)
    f = kernel.forward(params, rng.normal(size=(2, 1, 2)).astype(np.float32))
    kernel.backward(params, f.tape, None)
    assert ahead._cached(interp.backward_rows, np.dtype(np.float32))
    monkeypatch.setattr(ahead, "_children", {})
    ahead.start(np.dtype(np.float32), split=False)
    assert ahead._children == {("float32", False): None}
    monkeypatch.setattr(ahead, "_children", {})
    monkeypatch.setenv("CELLSEARCH_COMPILE_AHEAD", "0")
    monkeypatch.setattr(ahead, "_cached", lambda *a: False)
    ahead.start(np.dtype(np.float64), split=True)
    assert ahead._children == {("float64", True): None}


def _cache_paths(code: str, tmp_path, **env: str) -> list[str]:
    """The lines ``code`` prints in a fresh process with $CELLSEARCH_CACHE_DIR = tmp_path/cs and no
    NUMBA_CACHE_DIR unless ``env`` sets it."""
    full = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    full.update(CELLSEARCH_CACHE_DIR=str(tmp_path / "cs"), **env)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def test_kernels_are_cached_under_cellsearchs_cache_dir(tmp_path):
    """Without NUMBA_CACHE_DIR the executor's Numba cache goes under $CELLSEARCH_CACHE_DIR/kernels
    (else the user cache dir), not beside the package's sources; NUMBA_CACHE_DIR still wins."""
    code = "from cellsearch.backends.cpu import interp; print(interp.backward_rows._cache._cache_path)"
    assert _cache_paths(code, tmp_path)[0].startswith(str(tmp_path / "cs" / "kernels"))
    assert _cache_paths(code, tmp_path, NUMBA_CACHE_DIR=str(tmp_path / "numba"))[0].startswith(str(tmp_path / "numba"))


def test_every_cached_kernel_goes_under_cellsearchs_cache_dir_whatever_is_imported_first(tmp_path):
    """The optimisers' and the losses' njit functions cache there too, in a process that imports
    their module before (or without) the cpu backend: no cache files beside the package's sources."""
    code = (
        "from cellsearch.train import optim\n"
        "from cellsearch.tasks import losses\n"
        "print(optim._adam._cache._cache_path)\n"
        "print(losses._kernels()[0]._cache._cache_path)"
    )
    paths = _cache_paths(code, tmp_path)
    assert len(paths) == 2 and all(p.startswith(str(tmp_path / "cs" / "kernels")) for p in paths), paths


def test_cuda_kernels_are_cached_under_cellsearchs_cache_dir_too(tmp_path):
    """numba-cuda keeps a locator list of its own: the cuda backend's ``load`` installs the locator there,
    so a cuda kernel's cache goes under $CELLSEARCH_CACHE_DIR/kernels too (asked of the locator itself:
    the simulator, here, compiles nothing to cache)."""
    pytest.importorskip("numba.cuda")
    code = (
        "from cellsearch.backends.cuda import load, kernels\n"
        "from numba.cuda.core import caching\n"
        "load()\n"
        "loc = next(c for c in caching.CacheImpl._locator_classes if c.__name__ == 'CellsearchCacheLocator')\n"
        "print(loc.from_function(kernels.element_ops.__wrapped__, kernels.__file__).get_cache_path())"
    )
    paths = _cache_paths(code, tmp_path, NUMBA_ENABLE_CUDASIM="1")
    assert paths and paths[0].startswith(str(tmp_path / "cs" / "kernels")), paths


def test_without_platformdirs_numba_keeps_its_places():
    """An environment without platformdirs (a dependency; some GPU images lack it) still runs: with
    no CELLSEARCH_CACHE_DIR the locator is not installed and Numba caches where it always does."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "CELLSEARCH_CACHE_DIR")}
    code = (
        "import sys; sys.modules['platformdirs'] = None\n"
        "from cellsearch.backends.cpu import interp; print(interp.backward_rows._cache._cache_path)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "__pycache__" in out.stdout.strip(), out.stdout


def test_processes_compiling_at_once_share_one_cache(tmp_path):
    """Two processes on an empty cache at once (each with its compile child: four compiles of the
    executor into one folder) both succeed; a third then loads everything from the cache, with
    nothing compiled again, and gets the same gradients: the cache's files are written atomically."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    procs = [
        subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    last = _run(tmp_path)
    assert not last["started"] and (last["hits"], last["misses"], last["forward_misses"]) == (1, 0, 0)
    assert outs[0]["grads"] == outs[1]["grads"] == last["grads"]


def test_interpreters_compile_at_their_own_optimisation_level(monkeypatch):
    """``interp.compiling``: LLVM's level is ``interp.OPT`` (1) during an interpreter's first call for a
    dtype (its compile, or its load from the cache), Numba's own (3) around it and at its later calls;
    and a lower NUMBA_OPT is kept."""
    from numba.core import config

    monkeypatch.setattr(interp, "_compiled", set())
    before = int(config.OPT)
    assert before == 3  # (Numba's default: the tests run without NUMBA_OPT)
    with interp.compiling("forward", np.dtype(np.float32)):
        assert int(config.OPT) == interp.OPT == 1
    assert int(config.OPT) == before
    with interp.compiling("forward", np.dtype(np.float32)):  # compiled already: nothing changes
        assert int(config.OPT) == before
    with interp.compiling("forward", np.dtype(np.float64)):
        assert int(config.OPT) == 1
    monkeypatch.setattr(config, "OPT", type(config.OPT)(0))
    with interp.compiling("backward", np.dtype(np.float32)):
        assert int(config.OPT) == 0
    assert int(config.OPT) == 0


def test_sources_digest_follows_every_backend_file(tmp_path):
    from cellsearch.numba_cache import sources_digest

    (tmp_path / "cpu").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "cpu" / "b.py").write_text("y = 2\n")
    first = sources_digest.__wrapped__(tmp_path)
    assert sources_digest.__wrapped__(tmp_path) == first
    (tmp_path / "cpu" / "b.py").write_text("y = 3\n")
    second = sources_digest.__wrapped__(tmp_path)
    assert second != first
    (tmp_path / "cpu" / "c.py").write_text("")
    assert sources_digest.__wrapped__(tmp_path) != second


DIGEST_SCRIPT = """
import sys, numpy as np
import cellsearch.numba_cache as nc
if sys.argv[1] != "same":
    nc.sources_digest = lambda root=None: b"another tree"  # as after an edit to, say, ir_loops.py
from cellsearch.backends import compile
from cellsearch.backends.cpu import interp
from cellsearch.ir.params import init_params
from cellsearch.zoo import load
cell = load("gru")
params = init_params(cell, 3, 5, np.random.default_rng(0), dtype=np.float32)
compile(cell, "cpu").forward(params, np.zeros((2, 2, 3), np.float32))
s = interp.forward_rows.stats
print(sum(s.cache_hits.values()), sum(s.cache_misses.values()))
"""


def test_an_edit_to_any_backend_file_invalidates_the_cached_kernels(tmp_path):
    """A kernel cached under $CELLSEARCH_CACHE_DIR is loaded while the backends' sources are the same,
    and compiled again when any of them differs (not only its own file: Numba's stamp alone)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(CELLSEARCH_CACHE_DIR=str(tmp_path / "cs"), CELLSEARCH_COMPILE_AHEAD="0")

    def run(which):
        out = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT, which], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return tuple(int(v) for v in out.stdout.split())

    assert run("same") == (0, 1)  # cold: compiled and cached
    assert run("same") == (1, 0)  # loaded
    assert run("other") == (0, 1)  # another tree: compiled again
