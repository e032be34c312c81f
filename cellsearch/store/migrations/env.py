"""Alembic environment: migrations run on the connection that ``cellsearch.store`` hands over.

Make a new migration after changing ``schema.py``::

    python -m cellsearch.store.revision "what changed"
"""

from alembic import context

from cellsearch.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
