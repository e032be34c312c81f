"""Looking inside a cell: gradient flow across time lags, the step Jacobian's spectrum, gate
statistics and state trajectories (``diagnostics``), and their figures (``figures``)."""

from .diagnostics import diagnose, gate_names, lag_gradients, step_jacobians

__all__ = ["diagnose", "gate_names", "lag_gradients", "step_jacobians"]
