"""Alembic environment: runs migrations on the engine handed in by newsletter.db."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from newsletter.models import Base

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):  # pragma: no cover - only via newsletter.db.upgrade
    raise RuntimeError("run migrations through `newsletter init`")

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
