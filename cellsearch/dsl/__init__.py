"""The cell language: text -> canonical Cell."""

from .parse import parse, parse_file

__all__ = ["parse", "parse_file"]
