import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.register_profile("dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("stress", max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile("ci" if CI else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
    # Numba's CUDA simulator ~3x faster (a shorter time slice for its Python threads) and its shared
    # arrays allocated under a lock (the simulator's own race, which the shorter slice exposes)
    from cellsearch.backends.cuda.simgrid import fast_simulator

    fast_simulator()


@pytest.fixture
def torch():
    """The PyTorch oracle. It may be missing on a user's machine (the test skips), never in CI."""
    if CI:
        import torch as t  # a missing oracle is a failure in CI
    else:
        t = pytest.importorskip("torch")
    t.set_default_dtype(t.float64)
    return t


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
