"""The time-loop kernels' PTX instruction mix, without a GPU (NVVM compiles): ``python3
gpu/ptx_counts.py [--dtype float32] [--all]`` prints one JSON row per kernel with
``cellsearch.backends.cuda.ptx.counts`` (instructions in the code by class — a proxy for the
instructions a step executes, which bound the loops; gpu/README.md). Default: the units schedule's
loops; ``--all``: every kernel."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--all", action="store_true", help="every kernel, not only the units schedule's loops")
    args = ap.parse_args()
    from cellsearch.backends.cuda.ptx import compile_ptx, counts, signatures

    rows = []
    for label, kernel, sig in signatures(args.dtype, units_only=not args.all):
        if label.startswith("barriers"):
            continue
        rows.append({"kernel": label, "dtype": args.dtype, **counts(compile_ptx(kernel, sig))})
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
