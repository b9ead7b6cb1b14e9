"""The dashboard's figures: what runs next, what is sending now, how the last editions did.

One service for the console's dashboard and the API, composed from the wings'
own reads (the scheduler's job list, the delivery log, the editions listing).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.content import editions
from newsletter.delivery import log
from newsletter.models import ACCEPTED, Delivery, DeliveryStatus, Edition, EditionStatus
from newsletter.schedule.control import JobEntry, list_jobs


@dataclass(frozen=True)
class EditionFigures:
    """An edition and its audience as far as the events say."""

    id: int
    newsletter: str
    issue_date: str
    subject: str
    status: EditionStatus
    status_reason: str | None
    audience: int  # deliveries frozen for it
    waiting: int  # not yet handed over (queued, retrying, in a provider's hands)
    sent: int  # accepted by the provider
    failed: int  # not delivered (refused, or cancelled before it went)
    uncertain: int  # the provider's answer was lost
    funnel: dict[str, int]  # accepted → delivered → opened → clicked; bounced, complained


@dataclass(frozen=True)
class Day:
    """One day of sending: what the providers accepted, and what bounced of it."""

    day: date
    sent: int
    bounced: int


@dataclass(frozen=True)
class Overview:
    jobs: tuple[JobEntry, ...]  # soonest first; paused ones last
    sending: tuple[EditionFigures, ...]  # sends under way or paused
    recent: tuple[EditionFigures, ...]  # the newest editions, any status


def figures(session: Session, edition: Edition) -> EditionFigures:
    """The counts of one edition (one grouped query)."""
    counts = log.stats(session, edition_id=edition.id)
    s = DeliveryStatus
    return EditionFigures(
        id=edition.id,
        newsletter=edition.newsletter,
        issue_date=edition.issue_date.isoformat(),
        subject=edition.subject,
        status=edition.status,
        status_reason=edition.status_reason,
        audience=sum(counts.values()),
        waiting=sum(counts[x] for x in log.OPEN),
        sent=sum(counts[x] for x in ACCEPTED),
        failed=counts[s.FAILED] + counts[s.CANCELLED],
        uncertain=counts[s.UNCERTAIN],
        funnel=log.funnel(session, edition_id=edition.id),
    )


def overview(session: Session, *, settings: Settings, engine: Engine, recent: int = 8) -> Overview:
    """What the dashboard shows."""
    jobs = sorted(
        list_jobs(session, settings=settings, engine=engine),
        key=lambda j: (j.next_run is None, j.next_run.timestamp() if j.next_run else 0.0),
    )
    live = session.scalars(
        select(Edition)
        .where(Edition.status.in_((EditionStatus.SENDING, EditionStatus.PAUSED)))
        .order_by(Edition.id.desc())
    ).all()
    rows = editions.list_editions(session, limit=recent).items
    latest = [editions.get_edition(session, r.id) for r in rows]
    return Overview(
        jobs=tuple(jobs[:10]),
        sending=tuple(figures(session, e) for e in live),
        recent=tuple(figures(session, e) for e in latest),
    )


def activity(session: Session, *, days: int, now: datetime) -> list[Day]:
    """Sends and bounces per day over the last ``days`` days (by the day each edition's
    send started), oldest first, every day present.

    Counted per edition through the (edition, status) index, so a million-row ledger
    costs what its editions' counts do, not a scan of it.
    """
    first = (now - timedelta(days=days - 1)).date()
    started = {
        edition_id: when.date()
        for edition_id, when in session.execute(
            select(Edition.id, Edition.send_started_at).where(
                Edition.send_started_at >= datetime(first.year, first.month, first.day, tzinfo=UTC)
            )
        )
        if when is not None
    }
    sent: dict[date, int] = {}
    bounced: dict[date, int] = {}
    bounces = (DeliveryStatus.BOUNCED, DeliveryStatus.DROPPED)
    if started:
        query = (
            select(Delivery.edition_id, Delivery.status, func.count())
            .where(Delivery.edition_id.in_(sorted(started)))
            .group_by(Delivery.edition_id, Delivery.status)
        )
        for edition_id, status, n in session.execute(query):
            day = started[edition_id]
            if status in ACCEPTED:
                sent[day] = sent.get(day, 0) + int(n)
            if status in bounces:
                bounced[day] = bounced.get(day, 0) + int(n)
    return [
        Day(d, sent.get(d, 0), bounced.get(d, 0))
        for d in (first + timedelta(days=i) for i in range(days))
    ]
