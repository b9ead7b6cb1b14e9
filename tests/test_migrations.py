"""The migrations and the models agree (``alembic check``), from an empty database
and from the previous revision with data in it, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.script import ScriptDirectory
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


def test_upgrade_from_the_previous_revision_keeps_a_send_in_progress(db_url: str) -> None:
    """The revision before head, with a send half done: after the upgrade the same
    rows are there and the claim still picks the queued ones, in id order."""
    engine = db.make_engine(db_url)
    try:
        scripts = ScriptDirectory.from_config(_config(engine))
        head = scripts.get_current_head()
        assert head is not None
        previous = scripts.get_revision(head)
        assert previous is not None and isinstance(previous.down_revision, str)
        command.upgrade(_config(engine), previous.down_revision)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO editions (id, newsletter, issue_date, kind, status, subject,"
                    " created_at, updated_at) VALUES (1, 'daily-briefing', '2026-12-01',"
                    " 'regular', 'sending', 'S', '2026-12-01 06:00:00', '2026-12-01 06:00:00')"
                )
            )
            for i, status in enumerate(["sent", "queued", "sent", "queued", "retry"], start=1):
                conn.execute(
                    text(
                        "INSERT INTO deliveries (id, edition_id, email, name, subscriber_key,"
                        " status, attempts, created_at, updated_at) VALUES (:id, 1, :email,"
                        " '', 'k', :status, 0, '2026-12-01 06:00:00', '2026-12-01 06:00:00')"
                    ),
                    {"id": i, "email": f"r{i}@example.org", "status": status},
                )
        db.upgrade(engine)
        command.check(_config(engine))
        with engine.connect() as conn:
            queued = conn.execute(
                text(
                    "SELECT id FROM deliveries WHERE edition_id = 1 AND status = 'queued'"
                    " ORDER BY id LIMIT 10"
                )
            ).scalars()
            assert list(queued) == [2, 4]
            assert conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one() == 5
    finally:
        engine.dispose()
