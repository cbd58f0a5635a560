"""Alembic environment: Syncline runs migrations programmatically at startup
(store/migrate.py passes an open connection in ``config.attributes``)."""
from alembic import context

from syncline.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - offline SQL generation is not supported
    raise RuntimeError("run migrations through store.migrate.upgrade()")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
