"""The results store: SQLAlchemy tables, Alembic migrations, and queries that return DataFrames."""

from .queries import (
    attempts_frame,
    cell_detail,
    diagnostics_frame,
    evaluations_frame,
    lineage_frame,
    runs_frame,
    top_frame,
)
from .store import Store

__all__ = [
    "Store",
    "attempts_frame",
    "cell_detail",
    "diagnostics_frame",
    "evaluations_frame",
    "lineage_frame",
    "runs_frame",
    "top_frame",
]
