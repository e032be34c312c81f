"""Lowering a Cell to a Plan that fast backends render."""

from .lower import lower
from .plan import Code, Instr, Plan, Stage, XBlock

__all__ = ["Code", "Instr", "Plan", "Stage", "XBlock", "lower"]
