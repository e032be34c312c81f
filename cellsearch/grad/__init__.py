"""Per-op forward semantics and gradient rules (the single source for every backend)."""

from .rules import FORWARD, VJP, LocalGrad, NodeParams

__all__ = ["FORWARD", "VJP", "LocalGrad", "NodeParams"]
