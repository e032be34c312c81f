"""`cellsearch reproduce`: the LSTM-optimality studies of Greff et al. 2016 and Jozefowicz et al. 2015."""

from .run import open_study_run, run_study, study_config, summary_rows, trial_specs
from .studies import GREFF, JOZEFOWICZ, SCALES, STUDIES, Study, get, sample

__all__ = [
    "GREFF",
    "JOZEFOWICZ",
    "SCALES",
    "STUDIES",
    "Study",
    "get",
    "open_study_run",
    "run_study",
    "sample",
    "study_config",
    "summary_rows",
    "trial_specs",
]
