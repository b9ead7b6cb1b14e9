"""The scheduler's records: run history, the single-runner lease, scheduled sends.

* **Job ids** (:class:`JobId`): ``newsletter:SLUG``, ``dispatch``, ``send:N``, the
  names runs are recorded and jobs managed under; parsed only by ``JobId.parse``.
* **Run history** (``job_runs``): every run is recorded with its start, end, outcome
  (ok, skipped, held, failed, interrupted), counts and, when it raised, the traceback;
  :func:`recorded` wraps a job body so that a failure is recorded, never raised.
* **The single-runner lease** (``scheduler_leases``): one row per lock name with a
  holder and an expiry renewed by a heartbeat. Taking it is one conditional UPDATE
  (free, expired or already ours), so it works the same on SQLite and PostgreSQL.
* **Scheduled sends** (``scheduled_sends``): a regular issue built by its newsletter
  job, or a staff one-off (`send --at`), started by :func:`newsletter.jobs.dispatch`
  when due.

Data functions take ``session`` first and leave the transaction to the caller. The
job bodies themselves live in :mod:`newsletter.jobs`.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.db import transaction
from newsletter.delivery.providers import Provider, open_providers
from newsletter.errors import InputError, NotFoundError
from newsletter.models import (
    JobKind,
    JobOutcome,
    JobRun,
    ScheduledSend,
    ScheduledSendStatus,
    SchedulerLease,
    SendSource,
    transition_scheduled_send,
    utcnow,
)

# Job outcomes keep logging under the job bodies' name, as before the split.
log = logging.getLogger("newsletter.jobs")

LEASE_NAME = "scheduler"
MAX_ID = 2**31 - 1  # the largest id an INTEGER column holds on SQLite and PostgreSQL
Providers = Callable[[Settings], AbstractContextManager[tuple[Provider, Provider | None]]]


class JobTarget(enum.StrEnum):
    """What a job id names: a newsletter's regular issue, the dispatcher, a scheduled send."""

    NEWSLETTER = "newsletter"
    DISPATCH = "dispatch"
    SEND = "send"


@dataclass(frozen=True)
class JobId:
    """A scheduler job id, ``newsletter:SLUG``, ``dispatch`` or ``send:N``: the names
    under which jobs are stored, managed and their runs recorded. Read one only with
    :meth:`parse`; ``str()`` gives it back."""

    target: JobTarget
    slug: str | None = None
    send_id: int | None = None

    @classmethod
    def newsletter(cls, slug: str) -> JobId:
        return cls(JobTarget.NEWSLETTER, slug=slug)

    @classmethod
    def send(cls, send_id: int) -> JobId:
        return cls(JobTarget.SEND, send_id=send_id)

    @classmethod
    def parse(cls, text: str) -> JobId:
        """``newsletter:SLUG``, ``dispatch`` or ``send:N``; InputError otherwise."""
        target, _, rest = text.strip().partition(":")
        if target == JobTarget.DISPATCH and not rest:
            return DISPATCH
        if target == JobTarget.NEWSLETTER and rest:
            return cls.newsletter(rest)
        if target == JobTarget.SEND and rest.isascii() and rest.isdigit():
            if 0 < int(rest) <= MAX_ID:
                return cls.send(int(rest))
        raise InputError(
            f"{text!r} is not a job id (newsletter:SLUG, dispatch or send:N)",
            code="job.bad_id",
            job_id=text,
        )

    def __str__(self) -> str:
        if self.target is JobTarget.NEWSLETTER:
            return f"newsletter:{self.slug}"
        if self.target is JobTarget.SEND:
            return f"send:{self.send_id}"
        return self.target.value


DISPATCH = JobId(JobTarget.DISPATCH)
DISPATCH_JOB = str(DISPATCH)


def newsletter_job_id(slug: str) -> str:
    """The scheduler job id of a newsletter's regular issue."""
    return str(JobId.newsletter(slug))


def send_job_id(send_id: int) -> str:
    """The job id under which a scheduled send's runs are recorded and managed."""
    return str(JobId.send(send_id))


def new_holder_id() -> str:
    """A lease holder id naming this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


# ----- run history -----------------------------------------------------------


def start_run(
    session: Session,
    *,
    job_id: str,
    kind: JobKind | str,
    holder: str,
    now: datetime,
    newsletter: str | None = None,
    scheduled_for: datetime | None = None,
) -> JobRun:
    """Record that a run started (outcome ``running`` until :func:`finish_run`)."""
    run = JobRun(
        job_id=job_id,
        kind=JobKind(kind),
        newsletter=newsletter,
        scheduled_for=scheduled_for,
        holder=holder,
        started_at=now,
        outcome=JobOutcome.RUNNING,
        counts={},
    )
    session.add(run)
    session.flush()
    return run


def finish_run(
    session: Session,
    *,
    run_id: int,
    outcome: JobOutcome,
    now: datetime,
    counts: dict[str, int] | None = None,
    detail: str = "",
    error: str | None = None,
    edition_id: int | None = None,
) -> None:
    """Record how a run ended."""
    session.connection().execute(
        update(JobRun)
        .where(JobRun.id == run_id)
        .values(
            outcome=outcome,
            ended_at=now,
            counts=counts or {},
            detail=detail,
            error=error,
            edition_id=edition_id,
        )
    )


def has_run(session: Session, *, job_id: str, scheduled_for: datetime) -> bool:
    """Whether ``job_id`` already ran (or is running) for ``scheduled_for``.

    An interrupted run does not count, so a restarted scheduler runs it again."""
    query = select(JobRun.id).where(
        JobRun.job_id == job_id,
        JobRun.scheduled_for == scheduled_for,
        JobRun.outcome != JobOutcome.INTERRUPTED,
    )
    return session.scalar(query.limit(1)) is not None


def interrupt_orphans(session: Session, *, holder: str, now: datetime) -> int:
    """Mark runs left ``running`` by another (dead) scheduler ``interrupted``."""
    result = session.connection().execute(
        update(JobRun)
        .where(JobRun.outcome == JobOutcome.RUNNING, JobRun.holder != holder)
        .values(
            outcome=JobOutcome.INTERRUPTED,
            ended_at=now,
            detail="the scheduler running it stopped",
        )
    )
    return int(result.rowcount or 0)


def list_runs(
    session: Session,
    *,
    job_id: str | None = None,
    newsletter: str | None = None,
    outcome: JobOutcome | None = None,
    limit: int = 50,
) -> list[JobRun]:
    """Recorded runs, newest first, filtered."""
    query = select(JobRun).order_by(JobRun.started_at.desc(), JobRun.id.desc()).limit(limit)
    if job_id:
        query = query.where(JobRun.job_id == job_id)
    if newsletter:
        query = query.where(JobRun.newsletter == newsletter)
    if outcome:
        query = query.where(JobRun.outcome == outcome)
    return list(session.scalars(query))


# ----- the single-runner lease ---------------------------------------------------


def acquire_lease(
    session: Session, *, holder: str, ttl: float, now: datetime, name: str = LEASE_NAME
) -> bool:
    """Take (or renew) the lease if it is free, expired or ours; True when we hold it."""
    expires = now + timedelta(seconds=ttl)
    if session.get(SchedulerLease, name) is None:
        try:
            with session.begin_nested():
                session.add(
                    SchedulerLease(
                        name=name,
                        holder=holder,
                        acquired_at=now,
                        renewed_at=now,
                        expires_at=expires,
                    )
                )
            return True
        except IntegrityError:
            pass  # another scheduler created it first: compete below
    if renew_lease(session, holder=holder, ttl=ttl, now=now, name=name):
        return True
    taken = session.connection().execute(
        update(SchedulerLease)
        .where(SchedulerLease.name == name, SchedulerLease.expires_at < now)
        .values(holder=holder, acquired_at=now, renewed_at=now, expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    return bool(taken.rowcount)


def renew_lease(
    session: Session, *, holder: str, ttl: float, now: datetime, name: str = LEASE_NAME
) -> bool:
    """Extend our lease; False when another scheduler holds it now (we lost it)."""
    result = session.connection().execute(
        update(SchedulerLease)
        .where(SchedulerLease.name == name, SchedulerLease.holder == holder)
        .values(renewed_at=now, expires_at=now + timedelta(seconds=ttl))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


def release_lease(session: Session, *, holder: str, name: str = LEASE_NAME) -> bool:
    """Give the lease up (a standby scheduler takes over at once); True if it was ours."""
    result = session.connection().execute(
        delete(SchedulerLease).where(SchedulerLease.name == name, SchedulerLease.holder == holder)
    )
    return bool(result.rowcount)


def holds_lease(session: Session, *, holder: str, now: datetime, name: str = LEASE_NAME) -> bool:
    """Whether ``holder`` holds an unexpired lease."""
    lease = session.get(SchedulerLease, name, populate_existing=True)
    return lease is not None and lease.holder == holder and lease.expires_at >= now


def get_lease(session: Session, *, name: str = LEASE_NAME) -> SchedulerLease | None:
    """The lease row, if any scheduler has held it."""
    return session.get(SchedulerLease, name, populate_existing=True)


# ----- scheduled sends -----------------------------------------------------------


def schedule_send(
    session: Session,
    *,
    newsletter: str,
    send_at: datetime,
    source: SendSource | str,
    edition_id: int | None = None,
    issue_date: date | None = None,
    deadline: datetime | None = None,
    local_time: str | None = None,
) -> ScheduledSend:
    """Record a send for the dispatcher to start at ``send_at`` (before ``deadline``)."""
    send = ScheduledSend(
        newsletter=newsletter,
        edition_id=edition_id,
        issue_date=issue_date,
        source=SendSource(source),
        send_at=send_at,
        deadline=deadline,
        local_time=local_time,
        status=ScheduledSendStatus.PENDING,
        detail="",
    )
    session.add(send)
    session.flush()
    return send


def get_send(session: Session, send_id: int) -> ScheduledSend:
    """One scheduled send; NotFoundError if there is none."""
    send = session.get(ScheduledSend, send_id, populate_existing=True)
    if send is None:
        raise NotFoundError(
            f"no scheduled send {send_id}", code="scheduled_send.not_found", send_id=send_id
        )
    return send


def set_send_status(
    session: Session, *, send_id: int, status: ScheduledSendStatus, detail: str | None = None
) -> ScheduledSend:
    """Move a scheduled send to ``status`` (StateError if not allowed)."""
    send = get_send(session, send_id)
    if send.status is not status:
        transition_scheduled_send(send, status)
    if detail is not None:
        send.detail = detail
    session.flush()
    return send


def list_sends(
    session: Session, *, statuses: list[ScheduledSendStatus] | None = None, limit: int = 100
) -> list[ScheduledSend]:
    """Scheduled sends by send time, filtered by status."""
    query = select(ScheduledSend).order_by(ScheduledSend.send_at, ScheduledSend.id).limit(limit)
    if statuses:
        query = query.where(ScheduledSend.status.in_(statuses))
    return list(session.scalars(query))


# ----- recording a run ---------------------------------------------------------


@dataclass
class Runtime:
    """What the job bodies need: settings, a session factory, who we are, the clock."""

    settings: Settings
    sessions: sessionmaker[Session]
    holder: str = field(default_factory=new_holder_id)
    clock: Callable[[], datetime] = utcnow
    providers: Providers = open_providers
    # Called after each send with the edition's id: the faces hand in what the wings
    # above the scheduler do with a send's outcome (rejected addresses → suppressed).
    after_send: Callable[[int], None] | None = None


@dataclass
class Run:
    """The outcome a job body reports while it runs (see :func:`recorded`)."""

    outcome: JobOutcome = JobOutcome.OK
    counts: dict[str, int] = field(default_factory=dict)
    detail: str = ""
    edition_id: int | None = None

    def add(self, **counts: int) -> None:
        for key, n in counts.items():
            self.counts[key] = self.counts.get(key, 0) + n

    def end(self, outcome: JobOutcome, detail: str) -> None:
        self.outcome, self.detail = outcome, detail
        level = logging.INFO if outcome is JobOutcome.OK else logging.WARNING
        log.log(level, "%s: %s", outcome.value, detail)


@contextmanager
def recorded(
    rt: Runtime,
    *,
    job_id: str,
    kind: JobKind | str,
    newsletter: str | None = None,
    scheduled_for: datetime | None = None,
    only_if_busy: bool = False,
) -> Iterator[Run]:
    """Record one run in ``job_runs``; an exception is recorded (with its traceback)
    and logged, never raised, so the scheduler keeps running.

    With ``only_if_busy`` the run is written at the end, and only if it counted
    something, was not ok, or failed (the per-minute dispatcher is mostly idle).
    """
    started = rt.clock()

    def start(session: Session) -> int:
        return start_run(
            session,
            job_id=job_id,
            kind=kind,
            holder=rt.holder,
            now=started,
            newsletter=newsletter,
            scheduled_for=scheduled_for,
        ).id

    run_id = None
    if not only_if_busy:
        with transaction(rt.sessions) as session:
            run_id = start(session)
    run = Run()
    error = None
    try:
        yield run
    except Exception as exc:
        log.exception("job %s failed", job_id)
        error = traceback.format_exc()
        run.outcome, run.detail = JobOutcome.FAILED, f"{type(exc).__name__}: {exc}"
    if run_id is None and run.outcome is JobOutcome.OK and not any(run.counts.values()):
        return
    with transaction(rt.sessions) as session:
        finish_run(
            session,
            run_id=run_id if run_id is not None else start(session),
            outcome=run.outcome,
            now=rt.clock(),
            counts=run.counts,
            detail=run.detail,
            error=error,
            edition_id=run.edition_id,
        )


def record_missed(
    rt: Runtime, *, job_id: str, newsletter: str | None, scheduled_for: datetime
) -> None:
    """Record a run the scheduler skipped because it was later than its misfire grace."""
    with transaction(rt.sessions) as session:
        if has_run(session, job_id=job_id, scheduled_for=scheduled_for):
            return
    with recorded(
        rt, job_id=job_id, kind=JobKind.BUILD, newsletter=newsletter, scheduled_for=scheduled_for
    ) as run:
        run.end(JobOutcome.SKIPPED, f"missed its run time {scheduled_for:%Y-%m-%d %H:%M} UTC")
