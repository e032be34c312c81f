"""``python -m cellsearch``: the command line."""

from .cli import main

main()
