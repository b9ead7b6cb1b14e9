"""The delivery log: reading the ledger (counts, pages of rows, what is due, why).

Nothing here writes. Listings are pages of typed rows in newest-first order,
continued by a cursor (the last id seen) rather than an offset, so a page deep in
a million-row log costs the same as the first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from newsletter.db import Page, cursor_int
from newsletter.models import ACCEPTED, Delivery, DeliveryFailure, DeliveryStatus

#: Rows a runner may still claim.
CLAIMABLE = (DeliveryStatus.QUEUED, DeliveryStatus.RETRY)
#: Rows whose send is not over: claimable, or in a provider's hands.
OPEN = (DeliveryStatus.QUEUED, DeliveryStatus.RETRY, DeliveryStatus.SENDING)


@dataclass(frozen=True)
class DeliveryRow:
    """One delivery as the log shows it."""

    id: int
    edition_id: int
    email: str
    status: DeliveryStatus
    attempts: int
    provider: str | None
    message_id: str | None
    sent_at: datetime | None
    error: str | None
    failure: DeliveryFailure | None
    not_before: datetime | None
    updated_at: datetime


def stats(session: Session, *, edition_id: int | None = None) -> dict[DeliveryStatus, int]:
    """Counts per status (every status present, zero when none)."""
    query = select(Delivery.status, func.count()).group_by(Delivery.status)
    if edition_id is not None:
        query = query.where(Delivery.edition_id == edition_id)
    counts = dict.fromkeys(DeliveryStatus, 0)
    for status, n in session.execute(query):
        counts[status] = int(n)
    return counts


def funnel(session: Session, *, edition_id: int | None = None) -> dict[str, int]:
    """What the provider's events say: accepted, then delivered, opened, clicked,
    bounced and complained (each counts the readers who got at least that far)."""
    counts = stats(session, edition_id=edition_id)
    s = DeliveryStatus
    return {
        "accepted": sum(counts[x] for x in ACCEPTED),
        "delivered": sum(counts[x] for x in (s.DELIVERED, s.OPENED, s.CLICKED, s.COMPLAINED)),
        "opened": counts[s.OPENED] + counts[s.CLICKED],
        "clicked": counts[s.CLICKED],
        "bounced": counts[s.BOUNCED] + counts[s.DROPPED],
        "complained": counts[s.COMPLAINED],
    }


def list_deliveries(
    session: Session,
    *,
    edition_id: int | None = None,
    status: DeliveryStatus | None = None,
    email: str | None = None,
    provider: str | None = None,
    since: date | None = None,
    until: date | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Page[DeliveryRow]:
    """Delivery rows, newest first, filtered; ``cursor`` from the previous page.

    ``since`` and ``until`` are UTC days, both included, of the send (of the queueing
    for a row never sent: a failure, a wave still waiting)."""
    query = select(Delivery).order_by(Delivery.id.desc()).limit(limit + 1)
    if edition_id is not None:
        query = query.where(Delivery.edition_id == edition_id)
    if status is not None:
        query = query.where(Delivery.status == status)
    if email is not None:
        query = query.where(Delivery.email == email)
    if provider is not None:
        query = query.where(Delivery.provider == provider)
    when = func.coalesce(Delivery.sent_at, Delivery.created_at)
    if since is not None:
        query = query.where(when >= _midnight(since))
    if until is not None:
        query = query.where(when < _midnight(until + timedelta(days=1)))
    if cursor is not None:
        query = query.where(Delivery.id < cursor_int(cursor))
    found = list(session.scalars(query))
    rows = [
        DeliveryRow(
            id=d.id,
            edition_id=d.edition_id,
            email=d.email,
            status=d.status,
            attempts=d.attempts,
            provider=d.provider,
            message_id=d.provider_message_id,
            sent_at=d.sent_at,
            error=d.error,
            failure=d.failure,
            not_before=d.not_before,
            updated_at=d.updated_at,
        )
        for d in found[:limit]
    ]
    return Page(rows, str(rows[-1].id) if len(found) > limit else None)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def next_due(session: Session, *, edition_id: int) -> datetime | None:
    """When the earliest waiting row (retry, or a later local-time wave) becomes due."""
    return session.scalar(
        select(func.min(Delivery.not_before)).where(
            Delivery.edition_id == edition_id, Delivery.status.in_(CLAIMABLE)
        )
    )


def next_lease_expiry(session: Session, *, edition_id: int) -> datetime | None:
    """When the earliest claimed batch's lease runs out (None when nothing is claimed)."""
    return session.scalar(
        select(func.min(Delivery.lease_expires_at)).where(
            Delivery.edition_id == edition_id, Delivery.status == DeliveryStatus.SENDING
        )
    )


def has_open(session: Session, *, edition_id: int) -> bool:
    """Whether any row of the edition is still to be sent or in a provider's hands."""
    open_ = Delivery.status.in_(OPEN)
    return bool(session.scalar(select(exists().where(Delivery.edition_id == edition_id, open_))))


def has_due(session: Session, *, edition_id: int, now: datetime) -> bool:
    """Whether a runner would find work now: due rows, or claims whose lease ran out."""
    due = or_(
        and_(
            Delivery.status.in_(CLAIMABLE),
            or_(Delivery.not_before.is_(None), Delivery.not_before <= now),
        ),
        and_(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_expires_at < now),
    )
    return bool(session.scalar(select(exists().where(Delivery.edition_id == edition_id, due))))


def retry_window_open(session: Session, *, edition_id: int, now: datetime) -> bool:
    """Whether any waiting row may still be retried (its window has not closed)."""
    waiting = and_(
        Delivery.edition_id == edition_id,
        Delivery.status.in_(CLAIMABLE),
        or_(Delivery.retry_until.is_(None), Delivery.retry_until > now),
    )
    return bool(session.scalar(select(exists().where(waiting))))


@dataclass
class Summary:
    """Where an edition's send stands: counts, and why the failures failed."""

    counts: dict[DeliveryStatus, int]
    failures: dict[DeliveryFailure, int] = field(default_factory=dict)
    reasons: list[tuple[str, int]] = field(default_factory=list)  # top failure reasons

    @property
    def audience(self) -> int:
        return sum(self.counts.values())

    @property
    def accepted(self) -> int:
        return sum(self.counts[s] for s in ACCEPTED)

    @property
    def waiting(self) -> int:
        return self.counts[DeliveryStatus.QUEUED] + self.counts[DeliveryStatus.RETRY]

    @property
    def settled(self) -> bool:
        """Nothing left to send or to decide: no open and no uncertain rows."""
        return not any(self.counts[s] for s in (*OPEN, DeliveryStatus.UNCERTAIN))

    @property
    def everyone(self) -> bool:
        """Every recipient got it, or failed for a reason of their own alone."""
        others = sum(n for f, n in self.failures.items() if f is not DeliveryFailure.RECIPIENT)
        return self.settled and not others


def summary(session: Session, *, edition_id: int, reasons: int = 5) -> Summary:
    """Counts, failures by kind and the ``reasons`` most common failure reasons."""
    found = Summary(stats(session, edition_id=edition_id))
    failed = and_(Delivery.edition_id == edition_id, Delivery.status == DeliveryStatus.FAILED)
    kinds: Counter[DeliveryFailure] = Counter()
    for kind, n in session.execute(
        select(Delivery.failure, func.count()).where(failed).group_by(Delivery.failure)
    ):
        kinds[kind or DeliveryFailure.RECIPIENT] += int(n)
    found.failures = dict(kinds)
    top = (
        select(Delivery.error, func.count().label("n"))
        .where(failed)
        .group_by(Delivery.error)
        .order_by(func.count().desc(), Delivery.error)
        .limit(reasons)
    )
    found.reasons = [(error or "unknown", int(n)) for error, n in session.execute(top)]
    return found
