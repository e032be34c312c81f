"""Where a training step's time goes on the GPU, per schedule: ``python3 gpu/breakdown.py`` writes
``breakdown.json`` (under $OUT if set, else gpu/results/) with ``cellsearch.bench.gpu.step_breakdown``
rows for lstm and gru at the configs given (default: the issue's (64,100,256,256) and the T=1000 one),
``barriers.json``: microseconds per grid barrier of the units schedule, both kinds, alone; and with
``--attribution``, ``attribution.json``: the time loops on the cell's op table and on it without its
elementwise ops, without its GEMM stages, and with none (``cellsearch.bench.gpu.loop_attribution``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu" / "results"))
    ap.add_argument("--configs", default="64,100,256,256;16,1000,4,32")
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--schedules", default="rows,units")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--probes", default="32,64,128", help="block counts to time the grid barriers alone at ('' for none)")
    ap.add_argument("--attribution", action="store_true", help="also time the loops on partial op tables")
    ap.add_argument("--variants", default="[]", help="JSON list of CudaKernel options per breakdown row (default: each schedule)")
    args = ap.parse_args()
    from cellsearch.bench.gpu import barrier_cost, loop_attribution, step_breakdown
    from cellsearch.bench.kernels import parse_config

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    probes = []
    for blocks in [int(b) for b in args.probes.split(",") if b]:
        for cooperative in (True, False):
            try:
                row = barrier_cost(blocks, cooperative, rounds=args.rounds)
            except Exception as e:  # no libcudadevrt for the grid sync: a row that says so
                row = {"blocks": blocks, "barrier": "grid" if cooperative else "atomic", "error": f"{type(e).__name__}: {e}"}
            print(json.dumps(row), flush=True)
            probes.append(row)
            (out / "barriers.json").write_text(json.dumps(probes, indent=2))
    variants = json.loads(args.variants) or [{"schedule": sch} for sch in args.schedules.split(",")]
    attributed = []
    for cfg in [parse_config(c) for c in args.configs.split(";")]:
        for cell in args.cells.split(","):
            for options in variants:
                row = step_breakdown(cell, cfg, rounds=args.rounds, **options)
                print(json.dumps(row), flush=True)
                rows.append(row)
                (out / "breakdown.json").write_text(json.dumps(rows, indent=2))
                if args.attribution and not options.get("fuse_ops"):  # (the cell's own code ignores partial tables)
                    row = loop_attribution(cell, cfg, rounds=args.rounds, **options)
                    print(json.dumps(row), flush=True)
                    attributed.append(row)
                    (out / "attribution.json").write_text(json.dumps(attributed, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
