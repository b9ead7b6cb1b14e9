"""The migrations and the models agree (``alembic check``), from an empty database
and from the previous revision with data in it, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic import command
from sqlalchemy import Engine, create_engine, text

from newsletter import db


def _config(engine: Engine) -> Any:
    return db._alembic_config(engine)


def test_models_and_migrations_agree(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        db.upgrade(engine)
        command.check(_config(engine))  # raises when autogenerate would write anything
    finally:
        engine.dispose()


def test_upgrade_from_the_first_revision_keeps_the_data(db_url: str) -> None:
    engine = db.make_engine(db_url)
    try:
        command.upgrade(_config(engine), "0001")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO editions (id, newsletter, issue_date, kind, status, subject,"
                    " created_at, updated_at) VALUES (1, 'daily-briefing', '2026-11-24',"
                    " 'regular', 'sent', 'S', '2026-11-24 06:00:00', '2026-11-24 06:00:00')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO deliveries (id, edition_id, email, name, subscriber_key,"
                    " status, attempts, created_at, updated_at) VALUES (7, 1, 'a@example.org',"
                    " 'A', 'k', 'sent', 1, '2026-11-24 06:00:00', '2026-11-24 06:00:00')"
                )
            )
        db.upgrade(engine)
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT status, attempts, failure, runner_id FROM deliveries WHERE id = 7")
            ).one()
        assert tuple(row) == ("sent", 1, None, None)
        command.check(_config(engine))
    finally:
        engine.dispose()
