"""What the scheduler's jobs do, and the records they keep.

* **Run history** (``job_runs``): every run is recorded with its start, end, outcome
  (ok, skipped, held, failed, interrupted), counts and, when it raised, the traceback.
* **The single-runner lease** (``scheduler_leases``): one row per lock name with a
  holder and an expiry renewed by a heartbeat. Taking it is one conditional UPDATE
  (free, expired or already ours), so it works the same on SQLite and PostgreSQL.
* **Scheduled sends** (``scheduled_sends``): a regular issue built by its newsletter
  job, or a staff one-off (`send --at`), started by :func:`dispatch` when due.
* **Job bodies**: :func:`run_build` (fetch → build → check, auto-hold on a failed
  check, then schedule the send) and :func:`dispatch` (start due sends, send due
  waves, skip what missed its staleness deadline). They never raise: a failure is
  recorded with its traceback and the scheduler keeps running.

Data functions take ``session`` first and leave the transaction to the caller; the
job bodies take a :class:`Runtime` and open their own short transactions.
"""

from __future__ import annotations

import logging
import os
import socket
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import and_, delete, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from newsletter import editions, outbox, sender, stories, waves
from newsletter.config import Settings
from newsletter.db import transaction
from newsletter.errors import CheckFailed, NewsletterError, NotFoundError
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    EditionStatus,
    JobOutcome,
    JobRun,
    ScheduledSend,
    ScheduledSendStatus,
    SchedulerLease,
    transition_scheduled_send,
    utcnow,
)
from newsletter.providers import Provider, open_providers

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
DISPATCH_JOB = "dispatch"
Providers = Callable[[Settings], AbstractContextManager[tuple[Provider, Provider | None]]]


def newsletter_job_id(slug: str) -> str:
    """The scheduler job id of a newsletter's regular issue."""
    return f"newsletter:{slug}"


def send_job_id(send_id: int) -> str:
    """The job id under which a scheduled send's runs are recorded and managed."""
    return f"send:{send_id}"


def new_holder_id() -> str:
    """A lease holder id naming this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


# ----- run history -----------------------------------------------------------


def start_run(
    session: Session,
    *,
    job_id: str,
    kind: str,
    holder: str,
    now: datetime,
    newsletter: str | None = None,
    scheduled_for: datetime | None = None,
) -> JobRun:
    """Record that a run started (outcome ``running`` until :func:`finish_run`)."""
    run = JobRun(
        job_id=job_id,
        kind=kind,
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
    source: str,
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
        source=source,
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
        raise NotFoundError(f"no scheduled send {send_id}")
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


def _send_ids(session: Session, *, status: ScheduledSendStatus, due: datetime | None) -> list[int]:
    query = select(ScheduledSend.id).where(ScheduledSend.status == status)
    if due is not None:
        query = query.where(ScheduledSend.send_at <= due)
    return list(session.scalars(query.order_by(ScheduledSend.send_at, ScheduledSend.id)))


def _has_due_rows(session: Session, *, edition_id: int, now: datetime) -> bool:
    due = or_(
        and_(
            Delivery.status.in_(outbox.CLAIMABLE),
            or_(Delivery.not_before.is_(None), Delivery.not_before <= now),
        ),
        and_(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_expires_at < now),
    )
    return bool(session.scalar(select(exists().where(Delivery.edition_id == edition_id, due))))


def _open_rows(session: Session, *, edition_id: int) -> bool:
    open_ = Delivery.status.in_(outbox.OPEN)
    return bool(session.scalar(select(exists().where(Delivery.edition_id == edition_id, open_))))


# ----- the job bodies ---------------------------------------------------------------


@dataclass
class Runtime:
    """What the job bodies need: settings, a session factory, who we are, the clock."""

    settings: Settings
    sessions: sessionmaker[Session]
    holder: str = field(default_factory=new_holder_id)
    clock: Callable[[], datetime] = utcnow
    providers: Providers = open_providers


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
    kind: str,
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
        rt, job_id=job_id, kind="build", newsletter=newsletter, scheduled_for=scheduled_for
    ) as run:
        run.end(JobOutcome.SKIPPED, f"missed its run time {scheduled_for:%Y-%m-%d %H:%M} UTC")


def run_build(rt: Runtime, *, slug: str, fire_time: datetime) -> None:
    """A newsletter's regular job for ``fire_time``: fetch → build → check → schedule.

    The send goes out ``review_minutes`` after ``fire_time`` (at once without a
    review window), in per-timezone waves with ``local_time``. A run past the
    staleness deadline is skipped; a failed pre-send check holds the edition. Runs
    once per fire time (an interrupted run runs again).
    """
    job_id = newsletter_job_id(slug)
    with transaction(rt.sessions) as session:
        if has_run(session, job_id=job_id, scheduled_for=fire_time):
            log.debug("%s already ran for %s", job_id, fire_time)
            return
    send_id = None
    with recorded(rt, job_id=job_id, kind="build", newsletter=slug, scheduled_for=fire_time) as run:
        send_id = _build(rt, run, slug=slug, fire_time=fire_time)
    if send_id is not None:
        execute_send(rt, send_id=send_id)


def _build(rt: Runtime, run: Run, *, slug: str, fire_time: datetime) -> int | None:
    """The body of :func:`run_build`; returns a send to start now, if any."""
    settings = rt.settings
    nl = settings.newsletter(slug)
    tz = ZoneInfo(nl.timezone)
    send_at = fire_time + timedelta(minutes=nl.review_minutes)
    at = nl.local_clock
    day = waves.issue_date_for(send_at, at) if at else send_at.astimezone(tz).date()
    # With waves each zone has its own deadline (applied by the dispatcher).
    limit = None if at else waves.deadline(nl.staleness, day=day, tz=tz, scheduled=send_at)
    now = rt.clock()
    if limit is not None and now > limit:
        run.end(
            JobOutcome.SKIPPED,
            f"{slug} for {day}: not started by its deadline "
            f"{limit.astimezone(tz):%Y-%m-%d %H:%M %Z}; not sent late",
        )
        return None
    with transaction(rt.sessions) as session:
        feeds = stories.fetch_newsletter(session, newsletter=slug, settings=settings, now=now)
    run.add(
        feeds=len(feeds),
        feed_errors=sum(1 for f in feeds if f.error),
        stories_added=sum(f.added for f in feeds),
    )
    with transaction(rt.sessions) as session:
        edition, _ = editions.build_edition(
            session, settings=settings, slug=slug, issue_date=day, now=now
        )
        run.edition_id = edition.id
        run.add(stories=len(edition.items))
        existing = session.scalar(
            select(ScheduledSend.id).where(ScheduledSend.edition_id == edition.id).limit(1)
        )
        if existing is not None or edition.status not in (EditionStatus.BUILT, EditionStatus.HELD):
            run.end(
                JobOutcome.SKIPPED,
                f"edition {edition.id} of {slug} for {day} is already {edition.status.value}"
                + (f" (scheduled send {existing})" if existing else ""),
            )
            return None
        send = schedule_send(
            session,
            newsletter=slug,
            send_at=send_at,
            source="schedule",
            edition_id=edition.id,
            issue_date=day,
            deadline=limit,
            local_time=nl.local_time,
        )
        send_id, edition_id, held = send.id, edition.id, edition.status is EditionStatus.HELD
    if held:
        run.end(JobOutcome.HELD, f"edition {edition_id} is held; send {send_id} waits for release")
        return None
    try:
        with transaction(rt.sessions) as session:
            edition = editions.get_edition(session, edition_id, for_update=True)
            editions.freeze_content(session, edition=edition, settings=settings)
    except CheckFailed as exc:
        with transaction(rt.sessions) as session:
            editions.hold_edition(session, edition_id=edition_id, reason=str(exc))
        run.end(JobOutcome.HELD, f"edition {edition_id} held automatically: {exc}")
        return None
    when = "now" if send_at <= now else f"at {send_at.astimezone(tz):%H:%M %Z}"
    run.end(JobOutcome.OK, f"edition {edition_id} of {slug} for {day} built; sending {when}")
    return send_id if send_at <= now else None


def execute_send(rt: Runtime, *, send_id: int) -> None:
    """Start a due scheduled send: freeze the audience (set the waves), then send what
    is due. A held edition waits silently; a send past its deadline is skipped."""
    with transaction(rt.sessions) as session:
        send = get_send(session, send_id)
        if send.status is not ScheduledSendStatus.PENDING:
            return
        late = send.deadline is not None and rt.clock() > send.deadline
        if send.edition_id is not None and not late:
            status = editions.get_edition(session, send.edition_id).status
            if status is EditionStatus.HELD:
                return  # waits for release (until its deadline)
        slug, send_at = send.newsletter, send.send_at
    with recorded(
        rt, job_id=send_job_id(send_id), kind="send", newsletter=slug, scheduled_for=send_at
    ) as run:
        if _start(rt, run, send_id=send_id):
            _advance(rt, run, send_id=send_id)


def _start(rt: Runtime, run: Run, *, send_id: int) -> bool:
    settings, now = rt.settings, rt.clock()
    with transaction(rt.sessions) as session:
        send = get_send(session, send_id)
        if send.deadline is not None and now > send.deadline:
            transition_scheduled_send(send, ScheduledSendStatus.SKIPPED)
            send.detail = f"not started by its deadline {send.deadline:%Y-%m-%d %H:%M} UTC"
            run.end(JobOutcome.SKIPPED, f"send {send_id}: {send.detail}; not sent late")
            return False
    edition_id = None
    try:
        with transaction(rt.sessions) as session:
            send = get_send(session, send_id)
            if send.edition_id is None:
                built, _ = editions.build_edition(
                    session,
                    settings=settings,
                    slug=send.newsletter,
                    issue_date=send.issue_date,
                    now=now,
                )
                send.edition_id = built.id
            run.edition_id = edition_id = send.edition_id
            edition, _, queued, _ = sender.start_send(
                session, settings=settings, edition_id=edition_id, now=now
            )
            run.add(queued=queued)
            if send.local_time and queued:
                instants = waves.set_wave_times(
                    session,
                    edition_id=edition_id,
                    day=edition.issue_date,
                    at=time.fromisoformat(send.local_time),
                    default_zone=settings.newsletter(send.newsletter).timezone,
                )
                run.add(waves=len(instants))
            transition_scheduled_send(send, ScheduledSendStatus.STARTED)
    except CheckFailed as exc:
        assert edition_id is not None  # only the edition's checks raise CheckFailed
        with transaction(rt.sessions) as session:
            editions.hold_edition(session, edition_id=edition_id, reason=str(exc))
        run.end(JobOutcome.HELD, f"edition {edition_id} held automatically: {exc}")
        return False
    except NewsletterError as exc:
        # Cancelled edition, template error, provider refused…: give up on this send
        # (recorded as failed) instead of failing again every minute.
        with transaction(rt.sessions) as session:
            set_send_status(
                session, send_id=send_id, status=ScheduledSendStatus.FAILED, detail=str(exc)
            )
        raise
    return True


def _advance(rt: Runtime, run: Run, *, send_id: int) -> None:
    """Skip what missed its deadline, send what is due, and close a finished send."""
    settings, now = rt.settings, rt.clock()
    with transaction(rt.sessions) as session:
        send = get_send(session, send_id)
        assert send.edition_id is not None
        edition_id = send.edition_id
        edition = editions.get_edition(session, edition_id)
        run.edition_id = edition_id
        if edition.status is EditionStatus.CANCELLED:
            transition_scheduled_send(send, ScheduledSendStatus.CANCELLED)
            run.end(JobOutcome.SKIPPED, f"edition {edition_id} was cancelled")
            return
        if edition.status in (EditionStatus.PAUSED, EditionStatus.HELD):
            return
        nl = settings.newsletter(send.newsletter)
        if send.local_time:
            stale = waves.cancel_stale(
                session,
                edition_id=edition_id,
                day=edition.issue_date,
                spec=nl.staleness,
                now=now,
                default_zone=nl.timezone,
                at=time.fromisoformat(send.local_time),
            )
        elif send.deadline is not None and now > send.deadline:
            stale = waves.cancel_stale(
                session,
                edition_id=edition_id,
                day=edition.issue_date,
                spec=timedelta(0),
                now=now,
                default_zone=nl.timezone,
                scheduled=send.deadline,
            )
        else:
            stale = 0
        run.add(stale=stale)
        due = _has_due_rows(session, edition_id=edition_id, now=now)
        if not due and not _open_rows(session, edition_id=edition_id):
            due = True  # nothing left: let the sender mark the edition sent
    if due:
        with rt.providers(settings) as (provider, secondary):
            report = sender.send_edition(
                rt.sessions,
                settings=settings,
                edition_id=edition_id,
                provider=provider,
                secondary=secondary,
                clock=rt.clock,
                wait=False,
            )
        run.add(sent=report.sent, failed=report.failed, retried=report.retried)
        complete = report.complete
    else:
        complete = False
    if complete:
        with transaction(rt.sessions) as session:
            set_send_status(session, send_id=send_id, status=ScheduledSendStatus.DONE)
        run.end(JobOutcome.OK, f"edition {edition_id}: every recipient handled")
    elif run.counts.get("sent") or stale:
        run.end(JobOutcome.OK, f"edition {edition_id}: sent {run.counts.get('sent', 0)}")


def dispatch(rt: Runtime) -> None:
    """The every-minute tick: start due sends, then advance every started send."""
    now = rt.clock()
    with transaction(rt.sessions) as session:
        due = _send_ids(session, status=ScheduledSendStatus.PENDING, due=now)
    for send_id in due:
        execute_send(rt, send_id=send_id)
    with transaction(rt.sessions) as session:
        started = _send_ids(session, status=ScheduledSendStatus.STARTED, due=None)
    for send_id in started:
        with recorded(rt, job_id=send_job_id(send_id), kind="wave", only_if_busy=True) as run:
            _advance(rt, run, send_id=send_id)
