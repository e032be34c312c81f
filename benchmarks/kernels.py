"""Kernel benchmark: `python benchmarks/kernels.py` (same as `cellsearch bench kernels`).

Times one training step of lstm and gru on the cpu backend beside torch.nn.LSTM/GRU; see
benchmarks/README.md for recorded results.
"""

from cellsearch.cli import main

if __name__ == "__main__":
    import sys

    main(["bench", "kernels", *sys.argv[1:]])
