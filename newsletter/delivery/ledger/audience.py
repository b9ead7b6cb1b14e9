"""Freezing the audience: one queued row per recipient, in one INSERT … SELECT."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, func, literal, select, true
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from newsletter.delivery.ledger.states import DELIVERIES
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
)


def audience_query(slug: str) -> Select[int, str, str, str, str | None]:
    """Confirmed, non-suppressed subscribers of ``slug`` (id, email, name, key, tz)."""
    suppressed = select(Suppression.id).where(Suppression.email == Subscriber.email).exists()
    return (
        select(
            Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.key, Subscriber.timezone
        )
        .join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .where(
            Subscription.newsletter == slug,
            Subscription.status == SubscriptionStatus.CONFIRMED,
            ~suppressed,
        )
    )


def audience_count(session: Session, *, slug: str) -> int:
    """How many subscribers a send of ``slug`` would reach now."""
    return int(
        session.scalar(select(func.count()).select_from(audience_query(slug).subquery())) or 0
    )


def freeze_audience(
    session: Session,
    *,
    edition_id: int,
    slug: str,
    now: datetime,
    retry_until: datetime | None = None,
) -> int:
    """Create a queued delivery row for every current recipient, in one INSERT … SELECT.

    Subscribers who already have a row for this edition are left alone, so calling it
    twice adds nobody twice. ``retry_until`` closes their retry window. Returns the
    number of rows created.
    """
    src = audience_query(slug).subquery()
    rows = select(
        literal(edition_id),
        src.c.id,
        src.c.email,
        src.c.name,
        src.c.key,
        src.c.timezone,
        literal(DeliveryStatus.QUEUED.value),
        literal(0),
        literal(retry_until, Delivery.retry_until.type),
        literal(now, Delivery.created_at.type),
        literal(now, Delivery.updated_at.type),
    ).where(true())  # SQLite needs a WHERE before ON CONFLICT to parse INSERT … SELECT
    dialect = session.get_bind().dialect.name
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = make(DELIVERIES).from_select(
        [
            "edition_id",
            "subscriber_id",
            "email",
            "name",
            "subscriber_key",
            "timezone",
            "status",
            "attempts",
            "retry_until",
            "created_at",
            "updated_at",
        ],
        rows,
    )
    # Subscribers who already have a row are skipped by the unique (edition,
    # subscriber) index, not by a NOT EXISTS: PostgreSQL plans that as a scan of
    # deliveries per subscriber when its statistics say the table is empty.
    stmt = stmt.on_conflict_do_nothing(index_elements=["edition_id", "subscriber_id"])
    # Counted, not taken from rowcount: psycopg reports -1 for INSERT … SELECT.
    before = _count(session, edition_id)
    session.connection().execute(stmt)
    return _count(session, edition_id) - before


def _count(session: Session, edition_id: int) -> int:
    query = select(func.count()).select_from(Delivery).where(Delivery.edition_id == edition_id)
    return int(session.scalar(query) or 0)
