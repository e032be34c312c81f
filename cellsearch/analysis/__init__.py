"""Analysis of a results database: the statistics and seaborn figures of the Greff and Jozefowicz
studies and of evolutionary searches, and ``write_report`` (``cellsearch report``) that puts them
into PNG files, one self-contained HTML page and a Markdown summary."""

from .data import Study, load_study, trials_frame
from .report import Report, write_report
from .stats import (
    best_of_trials,
    fanova_importance,
    greff_conclusions,
    jozefowicz_conclusions,
    mark_top,
    pareto_mask,
    search_progress,
    welch,
    welch_table,
)

__all__ = [
    "Report",
    "Study",
    "best_of_trials",
    "fanova_importance",
    "greff_conclusions",
    "jozefowicz_conclusions",
    "load_study",
    "mark_top",
    "pareto_mask",
    "search_progress",
    "trials_frame",
    "welch",
    "welch_table",
    "write_report",
]
