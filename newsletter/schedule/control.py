"""Operators' control of the scheduled jobs: list them, pause, resume, remove.

Two kinds of job, one set of verbs:

- ``newsletter:SLUG`` and ``dispatch`` come from the configuration and live in
  APScheduler's job store. They can be paused and resumed; removing one is refused,
  because the next scheduler start would add it again (pause it, or change the
  configuration).
- ``send:N`` is a scheduled send (a one-off, or a regular issue waiting for its
  time): pause, resume and remove move its status (paused, pending, cancelled).

Every function takes the session (for scheduled sends; the caller owns the
transaction) and the engine the job store lives on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.errors import NotFoundError, StateError
from newsletter.models import ScheduledSendStatus
from newsletter.schedule import records, scheduler
from newsletter.schedule.records import JobId, JobTarget

#: Scheduled sends still to come or under way: the ones a job listing shows.
WAITING = (ScheduledSendStatus.PENDING, ScheduledSendStatus.PAUSED, ScheduledSendStatus.STARTED)

#: What each verb makes of a scheduled send.
SEND_STATUS = {
    "pause": ScheduledSendStatus.PAUSED,
    "resume": ScheduledSendStatus.PENDING,
    "remove": ScheduledSendStatus.CANCELLED,
}


@dataclass(frozen=True)
class JobEntry:
    """One row of :func:`list_jobs`."""

    id: JobId
    what: str  # a one-line description: the cron and timezone, or what a send sends
    next_run: datetime | None  # None: paused
    status: str  # "scheduled" or "paused" for stored jobs; a send's ScheduledSendStatus


def _describe(settings: Settings, job: JobId, trigger: Any) -> str:
    nl = settings.newsletters.get(job.slug or "") if job.target is JobTarget.NEWSLETTER else None
    if nl is None:
        return str(trigger)
    what = f"{job.slug}: cron '{nl.schedule}' {nl.timezone}"
    if nl.review_minutes:
        what += f", built {nl.review_minutes} min early"
    return what + (f", waves at {nl.local_time} local" if nl.local_time else "")


def list_jobs(session: Session, *, settings: Settings, engine: Engine) -> list[JobEntry]:
    """The configured jobs (newsletters, dispatcher), then the sends still to come."""
    rows: list[JobEntry] = []
    with scheduler.open_scheduler(settings, engine, paused=True) as sched:
        for job in sched.get_jobs():
            job_id = JobId.parse(job.id)
            rows.append(
                JobEntry(
                    id=job_id,
                    what=_describe(settings, job_id, job.trigger),
                    next_run=job.next_run_time,
                    status="paused" if job.next_run_time is None else "scheduled",
                )
            )
    for send in records.list_sends(session, statuses=list(WAITING)):
        target = f"edition {send.edition_id}" if send.edition_id else "today's edition"
        rows.append(
            JobEntry(
                id=JobId.send(send.id),
                what=f"send {target} of {send.newsletter}"
                + (f" at {send.local_time} local" if send.local_time else ""),
                next_run=send.send_at,
                status=send.status.value,
            )
        )
    return rows


def _change(
    session: Session, *, settings: Settings, engine: Engine, job_id: JobId, verb: str
) -> None:
    if job_id.target is JobTarget.SEND:
        assert job_id.send_id is not None
        records.set_send_status(session, send_id=job_id.send_id, status=SEND_STATUS[verb])
        return
    with scheduler.open_scheduler(settings, engine, paused=True) as sched:
        name = str(job_id)
        if sched.get_job(name) is None:
            known = ", ".join(j.id for j in sched.get_jobs())
            raise NotFoundError(
                f"no job {name!r} (jobs: {known})", code="job.not_found", job_id=name
            )
        if verb == "remove":
            raise StateError(
                f"{name} comes from the configuration and would come back",
                code="job.configured",
                job_id=name,
            )
        action: Callable[[str], Any] = sched.pause_job if verb == "pause" else sched.resume_job
        action(name)


def pause_job(session: Session, *, settings: Settings, engine: Engine, job_id: JobId) -> None:
    """Pause a job: it does not run until resumed. A send must not have started.

    Raises NotFoundError (no such job or send), StateError (a send past pending)."""
    _change(session, settings=settings, engine=engine, job_id=job_id, verb="pause")


def resume_job(session: Session, *, settings: Settings, engine: Engine, job_id: JobId) -> None:
    """Resume a paused job, from its next scheduled time (a send: when due).

    Raises NotFoundError, StateError (a send that is not paused or pending)."""
    _change(session, settings=settings, engine=engine, job_id=job_id, verb="resume")


def remove_job(session: Session, *, settings: Settings, engine: Engine, job_id: JobId) -> None:
    """Cancel a scheduled send. A configured job cannot be removed (StateError
    ``job.configured``: it would come back; pause it instead). Raises NotFoundError."""
    _change(session, settings=settings, engine=engine, job_id=job_id, verb="remove")
