"""One-off sends at a chosen time (staff's ``send --at``, a console's "send at" form).

The policy, in one place for every face:

- ``HH:MM`` is the next such time in the newsletter's own timezone: today if it is
  still ahead, else tomorrow (and the answer says so). A local time that does not
  exist (DST gap) moves forward by the gap; one that happens twice means the first.
- An ISO date-time is taken as is, or in the newsletter's timezone when it has no
  offset; one in the past is refused.
- The send must start within ``scheduler.one_off_grace_minutes`` of its time (the
  deadline): a scheduler that was down longer skips it instead of sending it late.

The dispatcher (:func:`newsletter.schedule.jobs.dispatch`) starts it when due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.content import editions
from newsletter.errors import InputError, StateError
from newsletter.models import EditionStatus, SendSource
from newsletter.schedule import records, waves
from newsletter.schedule.records import JobId


@dataclass(frozen=True)
class SendTime:
    """When a typed send time falls: ``at`` in UTC, and whether ``HH:MM`` had already
    passed today (so it means tomorrow)."""

    at: datetime
    tomorrow: bool = False


@dataclass(frozen=True)
class OneOff:
    """A one-off send just scheduled."""

    job_id: JobId
    newsletter: str
    edition_id: int | None  # None: the newsletter's edition of the day, built when it fires
    issue_date: date | None
    send_at: datetime  # UTC
    timezone: str  # the newsletter's IANA timezone
    deadline: datetime  # UTC: not started by then, it is skipped
    tomorrow: bool  # HH:MM had passed today in ``timezone``

    @property
    def local_send_at(self) -> datetime:
        """``send_at`` in the newsletter's timezone."""
        return self.send_at.astimezone(ZoneInfo(self.timezone))


def parse_send_time(value: str, *, timezone: str, now: datetime) -> SendTime:
    """Read ``HH:MM`` or an ISO date-time (see the module doc) against ``now``.

    Raises InputError: ``send_time.invalid`` (unreadable), ``send_time.past``."""
    tz = ZoneInfo(timezone)
    text = value.strip()
    try:
        if len(text) == 5 and text[2] == ":":
            at = time.fromisoformat(text)
            today = now.astimezone(tz).date()
            when = waves.local_instant(today, at, tz)
            if when > now:
                return SendTime(when)
            return SendTime(waves.local_instant(today + timedelta(days=1), at, tz), tomorrow=True)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(
            f"send time {value!r} is not a time: use HH:MM or an ISO date-time like "
            "2026-03-08T06:30",
            code="send_time.invalid",
            value=value,
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    when = parsed.astimezone(UTC)
    if when <= now:
        raise InputError(f"send time {value!r} is in the past", code="send_time.past", value=value)
    return SendTime(when)


def schedule_one_off(
    session: Session,
    *,
    settings: Settings,
    at: str,
    slug: str | None,
    edition_id: int | None,
    issue_date: date | None,
    now: datetime,
) -> OneOff:
    """Record a one-off send of ``edition_id``, or of ``slug``'s edition of
    ``issue_date`` (default: the day it fires), at the time ``at`` reads as.

    Raises InputError (no newsletter or edition given: ``oneoff.no_target``; an
    edition of another newsletter than ``slug``: ``edition.other_newsletter``; a bad
    time), NotFoundError (unknown newsletter or edition), StateError (a cancelled
    edition). Does not commit.
    """
    if edition_id is not None:
        edition = editions.get_edition(session, edition_id)
        if slug is not None and slug != edition.newsletter:
            raise InputError(
                f"edition {edition_id} belongs to {edition.newsletter}, not {slug}",
                code="edition.other_newsletter",
                edition_id=edition_id,
                slug=slug,
                newsletter=edition.newsletter,
            )
        if edition.status is EditionStatus.CANCELLED:
            raise StateError(
                f"edition {edition_id} is cancelled: it cannot be sent",
                code="edition.cancelled",
                edition_id=edition_id,
            )
        slug = edition.newsletter
    elif slug is None:
        raise InputError("a one-off send needs a newsletter or an edition", code="oneoff.no_target")
    newsletter = settings.newsletter(slug)
    when = parse_send_time(at, timezone=newsletter.timezone, now=now)
    deadline = when.at + timedelta(minutes=settings.scheduler.one_off_grace_minutes)
    send = records.schedule_send(
        session,
        newsletter=slug,
        send_at=when.at,
        source=SendSource.AT,
        edition_id=edition_id,
        issue_date=issue_date,
        deadline=deadline,
    )
    return OneOff(
        job_id=JobId.send(send.id),
        newsletter=slug,
        edition_id=edition_id,
        issue_date=issue_date,
        send_at=when.at,
        timezone=newsletter.timezone,
        deadline=deadline,
        tomorrow=when.tomorrow,
    )
