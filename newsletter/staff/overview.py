"""The dashboard's figures: what runs next, what is sending now, how the last editions did.

One service for the console's dashboard and the API, composed from the wings'
own reads (the scheduler's job list, the delivery log, the editions listing).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.content import editions
from newsletter.delivery import log
from newsletter.models import ACCEPTED, DeliveryStatus, Edition, EditionStatus
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
