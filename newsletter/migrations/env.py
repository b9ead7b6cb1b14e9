"""Alembic environment: runs migrations on the engine handed in by newsletter.db."""

from __future__ import annotations

from alembic import context
from alembic.runtime.environment import NameFilterParentNames, NameFilterType
from sqlalchemy import Engine

from newsletter.models import Base

#: APScheduler's job store table (``newsletter.scheduler.JOB_TABLE``), not in our models.
APSCHEDULER_TABLE = "apscheduler_jobs"


def include_name(
    name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames
) -> bool:
    """Whether autogenerate compares this database object (all but APScheduler's table)."""
    # APScheduler creates and owns its table: autogenerate must not propose dropping it.
    return not (type_ == "table" and name == APSCHEDULER_TABLE)


engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):  # pragma: no cover - only via newsletter.db.upgrade
    raise RuntimeError("run migrations through `newsletter init`")

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=include_name,
    )
    context.run_migrations()
