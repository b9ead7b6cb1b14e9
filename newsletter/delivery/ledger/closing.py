"""Ending rows without a send: expiry, cancellation, waves, the send's own faults."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from newsletter.db import driver_time, executemany
from newsletter.delivery.ledger.states import DELIVERIES, changed, may_become
from newsletter.models import EVENT_RANK, DeliveryFailure, DeliveryStatus, Edition


def expire_waiting(session: Session, *, edition_id: int, now: datetime) -> int:
    """Fail the retries whose window closed while they waited (a paused send)."""
    return changed(
        session,
        update(DELIVERIES)
        .where(
            DELIVERIES.c.edition_id == edition_id,
            may_become(DeliveryStatus.FAILED, only=[DeliveryStatus.RETRY]),
            DELIVERIES.c.retry_until < now,
        )
        .values(
            status=DeliveryStatus.FAILED.value,
            failure=DeliveryFailure.EXPIRED.value,
            error="retry window closed: " + func.coalesce(DELIVERIES.c.error, "waiting"),
            updated_at=now,
        ),
    )


def mark_stopped(session: Session, *, edition_id: int, reason: str, now: datetime) -> int:
    """Re-label failures with ``reason`` as the send's fault, not their recipients'.

    Called when every recipient of several batches failed alike: the cause is in the
    message or the account, so the rows must not count as the readers' own failures.
    """
    return changed(
        session,
        update(DELIVERIES)
        .where(
            DELIVERIES.c.edition_id == edition_id,
            DELIVERIES.c.status == DeliveryStatus.FAILED.value,
            DELIVERIES.c.error == reason,
        )
        .values(failure=DeliveryFailure.STOPPED.value, updated_at=now),
    )


def cancel_open(session: Session, *, edition_id: int, now: datetime) -> int:
    """Cancel every row not yet handed to a provider (queued, retry, uncertain)."""
    return changed(
        session,
        update(DELIVERIES)
        .where(DELIVERIES.c.edition_id == edition_id, may_become(DeliveryStatus.CANCELLED))
        .values(status=DeliveryStatus.CANCELLED.value, updated_at=now),
    )


def cancel_for_recipient(
    session: Session, *, email: str, newsletter: str | None, now: datetime
) -> int:
    """Cancel someone's deliveries not yet handed to a provider (they left, or bounced).

    ``newsletter`` limits it to that newsletter's editions; None cancels them all.
    """
    query = update(DELIVERIES).where(
        DELIVERIES.c.email == email, may_become(DeliveryStatus.CANCELLED)
    )
    if newsletter is not None:
        query = query.where(
            DELIVERIES.c.edition_id.in_(select(Edition.id).where(Edition.newsletter == newsletter))
        )
    return changed(session, query.values(status=DeliveryStatus.CANCELLED.value, updated_at=now))


def schedule_rows(
    session: Session, *, edition_id: int, where: ColumnElement[bool], not_before: datetime
) -> int:
    """Hold the queued rows matching ``where`` until ``not_before`` (a local-time wave)."""
    return changed(
        session,
        update(DELIVERIES)
        .where(
            DELIVERIES.c.edition_id == edition_id,
            DELIVERIES.c.status == DeliveryStatus.QUEUED.value,
            where,
        )
        .values(not_before=not_before),
    )


def cancel_rows(
    session: Session, *, edition_id: int, where: ColumnElement[bool], now: datetime, error: str
) -> int:
    """Cancel the unsent rows matching ``where`` (a wave past its deadline), with why."""
    return changed(
        session,
        update(DELIVERIES)
        .where(DELIVERIES.c.edition_id == edition_id, may_become(DeliveryStatus.CANCELLED), where)
        .values(status=DeliveryStatus.CANCELLED.value, error=error, updated_at=now),
    )


def advance(session: Session, *, moves: Sequence[tuple[int, DeliveryStatus]], now: datetime) -> int:
    """Move accepted deliveries up the event ladder (``EVENT_RANK``), never back.

    ``moves`` are (delivery id, status) from provider events in any order; each row
    ends at the highest status it was given. One executemany through the driver
    (a webhook batch moves thousands of rows).
    """
    if not moves:
        return 0
    stamp = driver_time(session)(now)
    rows = [(s.value, stamp, delivery_id, EVENT_RANK[s]) for delivery_id, s in moves]
    return max(executemany(session, _ADVANCE, rows), 0)


# Statuses off the ladder rank 99: never below a move, so never moved.
_RANK = " ".join(f"WHEN '{s.value}' THEN {r}" for s, r in EVENT_RANK.items())
_ADVANCE = (
    "UPDATE deliveries SET status = ?, updated_at = ?"
    f" WHERE id = ? AND (CASE status {_RANK} ELSE 99 END) < ?"
)
