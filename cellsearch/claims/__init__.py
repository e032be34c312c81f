"""The review's claims about LSTM, each an experiment with a verdict: ``cellsearch claims``."""

from .experiments import SCALES, Arm, Claim, claims
from .run import run_claims, run_name, verdicts

__all__ = ["SCALES", "Arm", "Claim", "claims", "run_claims", "run_name", "verdicts"]
