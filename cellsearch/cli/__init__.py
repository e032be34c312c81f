"""The ``cellsearch`` command."""

from . import claims as _claims  # noqa: F401  (registers `claims`)
from . import inspect as _inspect  # noqa: F401  (registers `inspect`)
from . import report as _report  # noqa: F401  (registers `report`)
from . import reproduce as _reproduce  # noqa: F401  (registers `reproduce`)
from . import search as _search  # noqa: F401  (registers `run` and `query`)
from .main import cli, main

__all__ = ["cli", "main"]
