"""The cuda backend's checks on a machine with an NVIDIA GPU, in one run (from the repository root):

    python3 gpu/run_checks.py            # everything, results under $OUT (else gpu/results/)
    python3 gpu/run_checks.py --quick    # a few minutes less: small configs, 3 rounds

1. the conformance suite on the real GPU (``pytest -m cuda tests/backends/test_cuda.py``, no simulator);
2. one training step of lstm and gru at the kernels benchmark's configs plus (64,100,256,256) and
   (256,100,512,1024), beside torch.nn.LSTM/GRU (cuDNN) on the same GPU: JSON rows, as the CPU
   benchmark writes them (``kernels.json``; a row per ``--variants`` entry: CudaKernel options), and
   the largest lstm config at each rows-per-block;
3. the population check: 32 different random cells trained one step each, all on their own
   streams at once against one by one (``population.json``).

Each part writes its file as soon as it ends, so a run cut short keeps what it finished; gpu/README.md
records the results. The GPU image needs no extra packages (numba-cuda, torch, pytest, hypothesis);
cellsearch is used from this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine() -> dict:
    info: dict = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["nvidia_smi"] = None
    import numba
    import numpy

    info["numba"] = numba.__version__
    info["numpy"] = numpy.__version__
    try:
        from importlib.metadata import version

        info["numba_cuda"] = version("numba-cuda")
    except Exception:
        info["numba_cuda"] = None
    try:
        import torch

        info["torch"] = torch.__version__
        info["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    from cellsearch.bench.gpu import device_name

    info["device"] = device_name()
    return info


def conformance(out: Path, timeout: float = 360, select: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    t0 = time.perf_counter()
    try:  # a kernel that never ends (a grid barrier some block never reaches) must not eat the machine's time
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/backends/test_cuda.py"]
            + (["-k", select] if select else []),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        (out / "conformance.log").write_text(text)
        return {"returncode": None, "summary": f"timed out after {timeout} s", "seconds": round(time.perf_counter() - t0, 1)}
    (out / "conformance.log").write_text(proc.stdout + proc.stderr)
    tail = [line for line in proc.stdout.strip().splitlines() if line.strip()][-1:] or [""]
    return {"returncode": proc.returncode, "summary": tail[0], "seconds": round(time.perf_counter() - t0, 1)}


def resources() -> dict:
    """Registers a thread and static shared memory a block of each float32 time-loop kernel compiled
    so far (the default unroll), a sorted list over its compiled signatures."""
    from cellsearch.backends.cuda.kernels import ROWS, kernels, unit_kernels
    from cellsearch.backends.cuda.ptx import fused_program

    f32 = np.dtype(np.float32)
    families = [(f"rows{r}", kernels(f32, r)) for r in ROWS]
    for c in (False, True):  # thread dots, then the sweep's warp dots
        for warp, wr, wl in ((False, 4, 4), (True, 4, 4), (True, 2, 8), (True, 1, 16)):
            label = f"units-{'grid' if c else 'atomic'}" + (f"-warp{wr}x{wl}" if warp else "")
            families.append((label, unit_kernels(f32, c, 4, warp, wr, wl)))
        for name in ("lstm", "gru"):  # fuse_ops builds (the same program at every shape where the projection is mirrored)
            label = f"units-{'grid' if c else 'atomic'}-warp4x4-fused-{name}"
            families.append((label, unit_kernels(f32, c, 4, True, 4, 4, fused_program(name))))
    found: dict = {}
    for label, ks in families:
        for kname, k in vars(ks).items():
            if not hasattr(k, "get_regs_per_thread"):  # a constant, or the simulator's kernels
                continue
            try:
                regs, smem = k.get_regs_per_thread(), k.get_shared_mem_per_block()
            except Exception as e:
                found[f"{kname}[{label}]"] = {"error": f"{type(e).__name__}: {e}"}
                continue
            if regs:  # {signature: value} when compiled
                found[f"{kname}[{label}]"] = {"regs": _values(regs), "shared_bytes": _values(smem)}
    log(f"resources: {json.dumps(found)}")
    return found


def _values(v: dict | int) -> list:
    return sorted(v.values()) if isinstance(v, dict) else [v]


#: the time loop's variants the schedules sweep times (lstm, float32)
SCHEDULE_VARIANTS = [
    {"schedule": "rows"},
    {"schedule": "units", "barrier": "grid"},  # warp dot products, 4 rows x 4 loads (the default)
    {"schedule": "units", "barrier": "atomic"},
    {"schedule": "units", "barrier": "grid", "warp_dots": False},  # a thread per output (session 7's default)
    {"schedule": "units", "barrier": "grid", "warp_rows": 2, "warp_loads": 8},
    {"schedule": "units", "barrier": "grid", "warp_rows": 1, "warp_loads": 16},
    {"schedule": "units", "barrier": "grid", "units_per_block": 4},
    {"schedule": "units", "barrier": "grid", "value_cache": False},
    {"schedule": "rows", "dot_unroll": 8},
    {"schedule": "units", "barrier": "grid", "warp_dots": False, "dot_unroll": 8},
    {"schedule": "units", "barrier": "grid", "warp_dots": False, "split_dot": True},
    {"schedule": "units", "barrier": "grid", "fuse_ops": True},  # the default, the cell's elementwise ops as its own code
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu" / "results"))
    ap.add_argument("--quick", action="store_true", help="3 rounds instead of 7; the sweeps at the issue's lstm config only")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds of every part (default 7, the population's 5)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: tests,kernels,population,schedules,sweep")
    ap.add_argument("--configs", default=None, help="B,T,I,H;... instead of the benchmark's configs (the sweep uses the last)")
    ap.add_argument("--tests-timeout", type=float, default=360, help="seconds the conformance suite may take")
    ap.add_argument("--tests-k", default="", help="only the conformance tests this pytest -k expression selects")
    ap.add_argument("--population", type=int, default=32, help="cells in the population check")
    ap.add_argument("--population-config", default="32,100,8,64", help="B,T,I,H of the population check")
    ap.add_argument("--variants", default="[{}]",
                    help="JSON list of CudaKernel options: a kernels row for each (default: the defaults only)")  # fmt: skip
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    rounds = args.rounds or (3 if args.quick else 7)
    from cellsearch.bench.gpu import GPU_CONFIGS, bench_gpu, population_throughput
    from cellsearch.bench.kernels import parse_config

    configs = [parse_config(c) for c in args.configs.split(";")] if args.configs else list(GPU_CONFIGS)
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):  # (the tests run this script in the simulator)
        from cellsearch.backends.cuda.simgrid import fast_simulator

        fast_simulator()  # its Python threads take their turns sooner: ~3x faster there

    info = machine()
    log(f"machine: {json.dumps(info)}")
    (out / "machine.json").write_text(json.dumps(info, indent=2))
    failed = False
    if "tests" not in skip:
        log("conformance: pytest -m cuda on the GPU")
        res = conformance(out, args.tests_timeout, args.tests_k)
        log(f"conformance: {res}")
        (out / "conformance.json").write_text(json.dumps(res, indent=2))
        failed |= res["returncode"] != 0
        if res["returncode"] is None:
            log("conformance timed out: the timings would hang the same way")
            return 1
    # the must-show rows first (lstm at the config, then the population), so a run cut short keeps them
    key = (64, 100, 256, 256)
    order = [("lstm", key)] if key in configs else []
    order += [(cell, cfg) for cell in ("lstm", "gru") for cfg in configs if (cell, cfg) not in order]
    rows: list[dict] = []

    variants = json.loads(args.variants)

    def kernel_rows(todo: list) -> None:
        for cell, cfg in todo:
            for variant in variants:
                got = bench_gpu([cell], [cfg], rounds=rounds, progress=log, **variant)
                log(json.dumps(asdict(got[0])))
                rows.extend(asdict(r) for r in got)
                (out / "kernels.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))

    if "kernels" not in skip:
        kernel_rows(order[:1])
    if "population" not in skip:
        log(f"population: {args.population} random cells, one step each, concurrent vs one by one")
        pop_rounds = args.rounds or (3 if args.quick else 5)
        res = population_throughput(args.population, parse_config(args.population_config), rounds=pop_rounds)
        log(json.dumps(res))
        (out / "population.json").write_text(json.dumps({"machine": info, **res}, indent=2))
    if "kernels" not in skip:
        kernel_rows(order[1:])

    def sweep(name: str, variants: list[dict], todo: list) -> None:
        got_rows: list[dict] = []
        for cfg in todo:
            for variant in variants:
                try:
                    got = [
                        asdict(r) for r in bench_gpu(["lstm"], [cfg], rounds=rounds, with_torch=False, progress=log, **variant)
                    ]
                except Exception as e:  # e.g. no libcudadevrt for the grid barrier: a row that says so
                    got = [{"config": list(cfg), **variant, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}]
                log(json.dumps(got[0]))
                got_rows.extend(got)
                (out / f"{name}.json").write_text(json.dumps({"machine": info, "rows": got_rows}, indent=2))

    small = [key] if args.quick and key in configs else configs
    if "schedules" not in skip:  # lstm in each schedule (and barrier, weight cache) at every config
        sweep("schedules", SCHEDULE_VARIANTS, small)
    if "sweep" not in skip:
        sweep(
            "rows_per_block",
            [{"schedule": "rows", "rows_per_block": r} for r in (1, 2, 4, 8)],
            [configs[-1]] if not args.quick else small,
        )
    if "kernels" not in skip:
        (out / "resources.json").write_text(json.dumps(resources(), indent=2))
    log(f"results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
