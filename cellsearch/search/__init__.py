"""The evolutionary search over cells: variation operators, the loop, the results."""
