"""The results store: SQLAlchemy tables, Alembic migrations, and queries that return DataFrames."""

from .queries import cell_detail, evaluations_frame, lineage_frame, runs_frame, top_frame
from .store import Store

__all__ = ["Store", "cell_detail", "evaluations_frame", "lineage_frame", "runs_frame", "top_frame"]
