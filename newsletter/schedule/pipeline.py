"""The main job, one orchestration for every face: fetch → build → check → review → send.

`newsletter run` and the scheduler's regular job both go through these steps:
fetch the newsletter's feeds, build (or find) the issue, run the pre-send checks
(a failure holds the edition, with the reason), keep the review window
(``review_minutes``: the send is scheduled that much later, and staff may hold
it meanwhile), then send. The scheduler adds what only it has (its fire time,
local-time waves, staleness deadlines) in :mod:`newsletter.schedule.jobs`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions, stories
from newsletter.content.stories import FetchReport
from newsletter.db import transaction
from newsletter.delivery import queue, runner, sender
from newsletter.delivery.providers import Provider
from newsletter.errors import CheckFailed
from newsletter.models import EditionStatus, ScheduledSend, SendSource, utcnow
from newsletter.schedule import records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Built:
    """The issue after fetching and building."""

    feeds: list[FetchReport]
    edition_id: int
    created: bool
    stories: int
    status: EditionStatus


def fetch_and_build(
    sessions: sessionmaker[Session],
    *,
    settings: Settings,
    slug: str,
    issue_date: date | None,
    now: datetime,
) -> Built:
    """Fetch ``slug``'s feeds (a broken feed is reported, not fatal), then build
    (or find) its edition for ``issue_date`` (default: today in its timezone)."""
    with transaction(sessions) as session:
        feeds = stories.fetch_newsletter(session, newsletter=slug, settings=settings, now=now)
    for report in feeds:
        if report.error:
            log.warning("feed %s skipped: %s", report.feed, report.error)
    with transaction(sessions) as session:
        edition, created = editions.build_edition(
            session, settings=settings, slug=slug, issue_date=issue_date, now=now
        )
        return Built(feeds, edition.id, created, len(edition.items), edition.status)


def build_issue(
    sessions: sessionmaker[Session], *, settings: Settings, slug: str, issue_date: date | None
) -> tuple[int, bool]:
    """Build (or find) ``slug``'s edition for ``issue_date`` without fetching; (id, created)."""
    with transaction(sessions) as session:
        edition, created = editions.build_edition(
            session, settings=settings, slug=slug, issue_date=issue_date
        )
        return edition.id, created


def check_or_hold(
    sessions: sessionmaker[Session], *, settings: Settings, edition_id: int
) -> str | None:
    """Freeze the content and run the pre-send checks; a failure holds the edition.

    Returns the reason it was held (None when the checks passed).
    """
    try:
        with transaction(sessions) as session:
            edition = editions.get_edition(session, edition_id, for_update=True)
            editions.freeze_content(session, edition=edition, settings=settings)
    except CheckFailed as exc:
        with transaction(sessions) as session:
            editions.hold_edition(session, edition_id=edition_id, reason=str(exc))
        log.warning("edition %s held automatically: %s", edition_id, exc)
        return str(exc)
    return None


def send_time(settings: Settings, *, slug: str, fire_time: datetime) -> datetime:
    """When an issue prepared at ``fire_time`` goes out: after its review window."""
    return fire_time + timedelta(minutes=settings.newsletter(slug).review_minutes)


@dataclass
class RunReport:
    """What one `newsletter run` did."""

    newsletter: str
    feeds: list[FetchReport]
    edition_id: int
    edition_created: bool
    held: str | None = None  # why the edition is held (nothing was sent)
    send_at: datetime | None = None  # scheduled for after the review window
    send_id: int | None = None
    send: runner.SendReport | None = None


def run_newsletter(
    sessions: sessionmaker[Session],
    *,
    settings: Settings,
    slug: str,
    provider: Provider,
    secondary: Provider | None = None,
    progress: runner.Progress | None = None,
    now: datetime | None = None,
) -> RunReport:
    """Fetch → build → check → review window → send, for one newsletter, now.

    The providers are checked first, so a provider that cannot work stops the run
    before anything is built or frozen. A failed check holds the edition; with a
    review window the send is scheduled for the scheduler instead of sent now.
    """
    settings.newsletter(slug)
    sender.preflight(provider, secondary)
    now = now or utcnow()
    built = fetch_and_build(sessions, settings=settings, slug=slug, issue_date=None, now=now)
    report = RunReport(slug, built.feeds, built.edition_id, built.created)
    if built.status is EditionStatus.HELD:
        with transaction(sessions) as session:
            reason = editions.get_edition(session, built.edition_id).status_reason
        report.held = reason or "held for review"
        return report
    if built.status is EditionStatus.BUILT:
        report.held = check_or_hold(sessions, settings=settings, edition_id=built.edition_id)
        if report.held:
            return report
        send_at = send_time(settings, slug=slug, fire_time=now)
        if send_at > now:
            report.send_at = send_at
            report.send_id = _schedule_review(
                sessions, slug=slug, edition_id=built.edition_id, send_at=send_at
            )
            return report
    report.send = queue.send(
        sessions,
        settings=settings,
        edition_id=built.edition_id,
        provider=provider,
        secondary=secondary,
        progress=progress,
    )
    return report


def _schedule_review(
    sessions: sessionmaker[Session], *, slug: str, edition_id: int, send_at: datetime
) -> int:
    """The send after a review window, for the scheduler (once per edition)."""
    with transaction(sessions) as session:
        existing = session.scalar(
            select(ScheduledSend.id).where(ScheduledSend.edition_id == edition_id).limit(1)
        )
        if existing is not None:
            return int(existing)
        send = records.schedule_send(
            session,
            newsletter=slug,
            send_at=send_at,
            source=SendSource.REVIEW,
            edition_id=edition_id,
        )
        return send.id
