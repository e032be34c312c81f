"""What compilation costs on the cpu backend (`cellsearch bench compile`), each in a fresh process:

- ``cold``: the first use on a machine, with an empty Numba cache (a new temporary folder):
  ``compile(cell)`` and its first forward and backward, after the imports;
- ``cache_hit``: the same in a new process once that cache holds the executor;
- ``rare_ops``: in that process, then, ``lstm_peephole``: the first cell to use one of the rarely
  used ops (``cpu/rare.py``: a peephole, relu, x elementwise, ...) compiles their functions, once
  per machine and dtype like the rest (a later process loads them from the cache);
- ``new_cell``: in that process, a cell it has never seen (a random one) compiled and run once:
  what each new candidate of a search costs. The executor is compiled once per machine and dtype,
  not per cell, so this is the Plan's tables only.

Rows: ``{"what", "cell", "threads", "seconds", "import_seconds", "numba_start_seconds"}``
(``import_seconds``: importing Numba and the cpu backend in that process, after Python and the
``cellsearch`` package itself; not counted in ``seconds``. ``numba_start_seconds``: of ``seconds``,
what Numba's CPU target takes to start in the process, whatever it then compiles or loads: its
registries, and its import of SciPy's linalg to find a BLAS. It is started on its own where a process
first meets it, after ``compile`` and before the first forward, to be timed apart; counted in
``seconds``; 0 for the rows that follow in the same process.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from ..errors import ConfigError


def _first_step(cell: Any, threads: int, start: bool = False) -> tuple[float, float]:
    """Seconds for compile(cell) and one forward and backward on a small problem, and of them, with
    ``start``, Numba's start (``_numba_start``). Numba starts at the first compile or cache load, as
    in any process: after ``compile`` (which starts ahead.py's child when the cache is cold), before
    the forward; here it is started on its own at that point, to be timed apart."""
    import numpy as np

    from ..backends import compile
    from ..ir.params import init_params

    rng = np.random.default_rng(0)
    I_, H, T, B = 8, 16, 5, max(4, threads)
    I_ = H if cell.x_elementwise else I_
    params = init_params(cell, I_, H, rng, dtype=np.float32)
    x = rng.normal(size=(T, B, I_)).astype(np.float32)
    t0 = time.perf_counter()
    kernel = compile(cell, "cpu", np.float32, threads=threads)
    numba_start = _numba_start() if start else 0.0
    f = kernel.forward(params, x)
    kernel.backward(params, f.tape, np.ones((T, B, H), np.float32))
    return time.perf_counter() - t0, numba_start


def _numba_start() -> float:
    """Seconds for Numba's CPU target to start (what the first compile or cache load in a process
    pays first); 0 if that cannot be done apart (Numba's internals moved: then it stays in the step)."""
    t0 = time.perf_counter()
    try:
        from numba.core.registry import cpu_target

        cpu_target.target_context.refresh()
        cpu_target.typing_context.refresh()
    except Exception:  # pragma: no cover - depends on Numba's internals
        return 0.0
    return time.perf_counter() - t0


def _child(cell_name: str, threads: int, new_cell: int) -> dict[str, Any]:
    """In the child process: the timings of ``_first_step`` for the zoo cell, then (``new_cell`` >= 0)
    for a random cell drawn with that seed."""
    t0 = time.perf_counter()
    import numba  # noqa: F401
    import numpy as np

    from ..backends import cpu  # noqa: F401
    from ..ir.random import random_cell
    from ..zoo import get

    out: dict[str, Any] = {"import_seconds": time.perf_counter() - t0}
    cell = get(cell_name)
    out["seconds"], out["numba_start_seconds"] = _first_step(cell, threads, start=True)
    if new_cell >= 0:
        out["rare_ops_seconds"] = _first_step(get("lstm_peephole"), threads)[0]
        out["new_cell_seconds"] = _first_step(random_cell(np.random.default_rng(new_cell)), threads)[0]
    return out


def _run_child(cell_name: str, threads: int, cache: str, new_cell: int) -> dict[str, Any]:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    cmd = [sys.executable, "-m", "cellsearch.bench.compile", cell_name, str(threads), str(new_cell)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise ConfigError(f"the compile benchmark's child process failed: {done.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_compile(cell_name: str = "lstm", threads: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    """The four rows above for ``cell_name`` (a zoo cell) with ``threads`` threads; the new cell is
    ``random_cell`` drawn from ``seed``."""
    with tempfile.TemporaryDirectory(prefix="cellsearch-numba-") as cache:
        cold = _run_child(cell_name, threads, cache, new_cell=-1)
        hit = _run_child(cell_name, threads, cache, new_cell=seed)
    base = {"cell": cell_name, "threads": threads}
    paid = {"import_seconds": 0.0, "numba_start_seconds": 0.0}  # already paid by the row before, in the same process
    return [
        {"what": "cold", **base, **{k: cold[k] for k in ("seconds", "import_seconds", "numba_start_seconds")}},
        {"what": "cache_hit", **base, **{k: hit[k] for k in ("seconds", "import_seconds", "numba_start_seconds")}},
        {"what": "rare_ops", **base, "cell": "lstm_peephole", "seconds": hit["rare_ops_seconds"], **paid},
        {"what": "new_cell", **base, "cell": "random", "seconds": hit["new_cell_seconds"], **paid},
    ]


if __name__ == "__main__":  # pragma: no cover - the child process of bench_compile
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
