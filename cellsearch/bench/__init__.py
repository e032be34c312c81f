"""Benchmarks: timings as ratios against PyTorch in the same process (never timed tests)."""
