"""What the scheduler's jobs do: build a newsletter's issue, start and advance sends.

:func:`run_build` fetches, builds and checks an issue (auto-hold on a failed check),
then schedules its send; :func:`dispatch` starts due sends, sends due waves and skips
what missed its staleness deadline. They never raise: each run is recorded with
:func:`newsletter.records.recorded`, a failure with its traceback, and the scheduler
keeps running. The records themselves (run history, lease, scheduled sends) live in
:mod:`newsletter.records`.

The job bodies take a :class:`~newsletter.records.Runtime` and open their own short
transactions.
"""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.content import editions
from newsletter.db import transaction
from newsletter.delivery import ledger, queue, sender
from newsletter.delivery import log as delivery_log
from newsletter.delivery.pacing import OUTAGE
from newsletter.errors import CheckFailed, NewsletterError, ProviderError
from newsletter.models import (
    Edition,
    EditionStatus,
    JobKind,
    JobOutcome,
    ScheduledSend,
    ScheduledSendStatus,
    SendSource,
    transition_scheduled_send,
)
from newsletter.schedule import pipeline, waves
from newsletter.schedule.records import (
    DISPATCH_JOB,
    Run,
    Runtime,
    get_send,
    has_run,
    newsletter_job_id,
    recorded,
    schedule_send,
    send_job_id,
    set_send_status,
)

log = logging.getLogger(__name__)


def _send_ids(session: Session, *, status: ScheduledSendStatus, due: datetime | None) -> list[int]:
    query = select(ScheduledSend.id).where(ScheduledSend.status == status)
    if due is not None:
        query = query.where(ScheduledSend.send_at <= due)
    return list(session.scalars(query.order_by(ScheduledSend.send_at, ScheduledSend.id)))


# ----- the job bodies ---------------------------------------------------------------


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
    with recorded(
        rt, job_id=job_id, kind=JobKind.BUILD, newsletter=slug, scheduled_for=fire_time
    ) as run:
        send_id = _build(rt, run, slug=slug, fire_time=fire_time)
    if send_id is not None:
        execute_send(rt, send_id=send_id)


def _build(rt: Runtime, run: Run, *, slug: str, fire_time: datetime) -> int | None:
    """The body of :func:`run_build`; returns a send to start now, if any."""
    settings = rt.settings
    nl = settings.newsletter(slug)
    tz = ZoneInfo(nl.timezone)
    send_at = pipeline.send_time(settings, slug=slug, fire_time=fire_time)
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
    built = pipeline.fetch_and_build(
        rt.sessions, settings=settings, slug=slug, issue_date=day, now=now
    )
    feeds = built.feeds
    run.add(
        feeds=len(feeds),
        feed_errors=sum(1 for f in feeds if f.error),
        stories_added=sum(f.added for f in feeds),
    )
    run.edition_id = built.edition_id
    run.add(stories=built.stories)
    with transaction(rt.sessions) as session:
        edition = editions.get_edition(session, built.edition_id)
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
            source=SendSource.SCHEDULE,
            edition_id=edition.id,
            issue_date=day,
            deadline=limit,
            local_time=nl.local_time,
        )
        send_id, edition_id, held = send.id, edition.id, edition.status is EditionStatus.HELD
    if held:
        run.end(JobOutcome.HELD, f"edition {edition_id} is held; send {send_id} waits for release")
        return None
    reason = pipeline.check_or_hold(rt.sessions, settings=settings, edition_id=edition_id)
    if reason is not None:
        run.end(JobOutcome.HELD, f"edition {edition_id} held automatically: {reason}")
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
        rt, job_id=send_job_id(send_id), kind=JobKind.SEND, newsletter=slug, scheduled_for=send_at
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
            started = sender.start_send(session, settings=settings, edition_id=edition_id, now=now)
            edition, queued = started.edition, started.queued
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
        due = delivery_log.has_due(session, edition_id=edition_id, now=now)
        if not due and not delivery_log.has_open(session, edition_id=edition_id):
            due = True  # nothing left: let the sender mark the edition sent
    if due:
        with rt.providers(settings) as (provider, secondary):
            report = queue.send(
                rt.sessions,
                settings=settings,
                edition_id=edition_id,
                provider=provider,
                secondary=secondary,
                clock=rt.clock,
                wait=False,
            )
        run.add(sent=report.sent, failed=report.failed, retried=report.retried)
        if rt.after_send is not None:
            rt.after_send(edition_id)
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
        with recorded(rt, job_id=send_job_id(send_id), kind=JobKind.WAVE, only_if_busy=True) as run:
            _advance(rt, run, send_id=send_id)
    with transaction(rt.sessions) as session:
        outages = list(
            session.scalars(
                select(Edition.id).where(
                    Edition.status == EditionStatus.PAUSED,
                    Edition.status_reason.like(f"{OUTAGE}%"),
                )
            )
        )
    for edition_id in outages:
        with recorded(rt, job_id=DISPATCH_JOB, kind=JobKind.RESUME) as run:
            _resume_after_outage(rt, run, edition_id=edition_id)


def _resume_after_outage(rt: Runtime, run: Run, *, edition_id: int) -> None:
    """Resume a send its provider's outage paused, once the provider answers again,
    while its retry window is open (afterwards the waiting rows fail as expired)."""
    settings, now = rt.settings, rt.clock()
    run.edition_id = edition_id
    with transaction(rt.sessions) as session:
        if not delivery_log.retry_window_open(session, edition_id=edition_id, now=now):
            expired = ledger.expire_waiting(session, edition_id=edition_id, now=now)
            run.end(
                JobOutcome.SKIPPED,
                f"edition {edition_id}: retry window closed during the outage; "
                f"{expired} deliveries failed, the rest wait for staff",
            )
            return
    with rt.providers(settings) as (provider, secondary):
        try:
            sender.preflight(provider, secondary)
        except ProviderError as exc:
            run.end(JobOutcome.SKIPPED, f"edition {edition_id}: provider still down: {exc}")
            return
        with transaction(rt.sessions) as session:
            sender.resume(session, edition_id=edition_id)
        report = queue.send(
            rt.sessions,
            settings=settings,
            edition_id=edition_id,
            provider=provider,
            secondary=secondary,
            clock=rt.clock,
            wait=False,
        )
    run.add(sent=report.sent, failed=report.failed, retried=report.retried)
    if rt.after_send is not None:
        rt.after_send(edition_id)
    run.end(JobOutcome.OK, f"edition {edition_id} resumed after the outage")
