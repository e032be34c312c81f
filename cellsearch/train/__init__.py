"""Training a cell on a task: optimisers, clipping, the evaluation loop."""

from .loop import HP, evaluate, make_hp
from .optim import Adam, NesterovSGD, clip_by_global_norm, global_norm

__all__ = ["HP", "Adam", "NesterovSGD", "clip_by_global_norm", "evaluate", "global_norm", "make_hp"]
