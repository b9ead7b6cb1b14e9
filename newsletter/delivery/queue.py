"""Where a send runs: in the process that starts it (``inline``) or on Celery workers.

:func:`send` is what the CLI, the scheduler's jobs and the web call. Inline, it is
:func:`newsletter.delivery.runner.send_edition`. With ``queue.backend = "celery"``
the caller does everything that can be refused at once (the providers answer, the
edition may be sent, its checks pass) and freezes the audience, exactly as inline;
then it queues ``queue.tasks_per_send`` copies of one task, and the workers
(``newsletter worker``) each run the send unit until nothing is left to claim.

Nothing here decides who sends what: the ledger's claims (SKIP LOCKED on
PostgreSQL) do, so a duplicated or redelivered task is harmless, and pacing,
failover and the failure guard are shared database state, the same for one worker
or twenty. The caller may wait, reading the ledger until the send is over; its
report then has the same figures as an inline send's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.db import transaction
from newsletter.delivery import log, pacing, registry, runner, sender
from newsletter.delivery.providers.base import Provider
from newsletter.errors import QueueError
from newsletter.models import ACCEPTED, DeliveryStatus, Edition, EditionStatus, utcnow

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

#: The task the workers register (newsletter.workers) and senders queue by name.
SEND_TASK = "newsletter.send_edition"
#: How often a waiting caller asks whether the workers are done, and counts for progress.
WAIT_POLL_SECONDS = 0.5
PROGRESS_SECONDS = 5.0
_OVER = (EditionStatus.SENT, EditionStatus.PAUSED, EditionStatus.CANCELLED)


def safe_url(url: str) -> str:
    """The broker URL with its password masked, for messages and logs."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def celery_app(settings: Settings) -> Celery:
    """A Celery app configured from ``settings.queue``: late acknowledgement (a task
    lost with its worker runs again), one task prefetched at a time, no results."""
    from celery import Celery

    q = settings.queue
    app = Celery("newsletter", set_as_current=False)
    app.conf.update(
        broker_url=q.broker_url.get_secret_value(),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        broker_transport_options={"visibility_timeout": 3600, "max_retries": 3},
        task_default_queue=q.queue_name,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        timezone="UTC",
    )
    return app


def check_broker(app: Celery, settings: Settings) -> None:
    """Raise QueueError unless the broker answers (before anything is frozen)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=5)
    except Exception as exc:
        where = safe_url(settings.queue.broker_url.get_secret_value())
        raise QueueError(
            f"the queue's broker at {where} does not answer: {type(exc).__name__}",
            code="queue.unavailable",
        ) from None


def enqueue(
    app: Celery,
    settings: Settings,
    edition_id: int,
    *,
    copies: int | None = None,
    eta: datetime | None = None,
) -> int:
    """Queue ``copies`` (default ``queue.tasks_per_send``) send tasks for an edition,
    to start at ``eta`` (now if None); returns how many were queued."""
    n = settings.queue.tasks_per_send if copies is None else copies
    options: dict[str, Any] = {"queue": settings.queue.queue_name}
    if eta is not None:
        options["eta"] = eta
    try:
        for _ in range(n):
            app.send_task(SEND_TASK, args=[edition_id], **options)
    except Exception as exc:
        where = safe_url(settings.queue.broker_url.get_secret_value())
        raise QueueError(
            f"could not queue edition {edition_id} at {where}: {type(exc).__name__}",
            code="queue.unavailable",
            edition_id=edition_id,
        ) from None
    return n


def _hand_off(
    app: Celery,
    sessions: sessionmaker[Session],
    *,
    settings: Settings,
    edition_id: int,
    provider: Provider,
    secondary: Provider | None,
    clock: Callable[[], datetime],
) -> tuple[runner.SendReport, log.Summary]:
    """Open the send as the inline runner does (checks, freeze), leave the registry
    at once, and queue the tasks; the report so far and the summary before."""
    check_broker(app, settings)
    with transaction(sessions) as session:
        before = log.summary(session, edition_id=edition_id)
    send, started = sender.open_send(
        sessions,
        settings=settings,
        edition_id=edition_id,
        primary=provider,
        secondary=secondary,
        clock=clock,
    )
    with transaction(sessions) as session:
        registry.unregister(session, identity=send.runner)
        left = log.has_open(session, edition_id=edition_id)
    if left:
        enqueue(app, settings, edition_id)
        logger.info(
            "edition %s: queued for the workers (%d tasks)",
            edition_id,
            settings.queue.tasks_per_send,
        )
    report = runner.SendReport(
        edition_id,
        send.prepared.newsletter,
        newly_queued=started.queued,
        recovered_uncertain=started.recovered,
    )
    return report, before


def _warn_without_workers(app: Celery) -> None:
    """Say so when no worker answers: the send would wait for one in silence."""
    try:
        answered = app.control.ping(timeout=1.0, limit=1)
    except Exception:  # the broker was there a moment ago; the wait will tell
        return
    if not answered:
        logger.warning(
            "no worker answered: the send is queued and starts when one runs (newsletter worker)"
        )


def _over(session: Session, edition_id: int) -> tuple[bool, str | None]:
    """Whether the workers are done with the edition, and why they stopped early."""
    edition = session.get_one(Edition, edition_id, populate_existing=True)
    _, stopped = pacing.current(session, edition_id=edition_id)
    if edition.status in (EditionStatus.PAUSED, EditionStatus.CANCELLED):
        return True, stopped or edition.status.value
    if stopped:
        return True, stopped
    return edition.status in _OVER or not log.has_open(session, edition_id=edition_id), None


def wait_for(
    sessions: sessionmaker[Session],
    report: runner.SendReport,
    before: log.Summary,
    *,
    progress: runner.Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> runner.SendReport:
    """Read the ledger until the workers are done with the edition; fill ``report``
    with what happened since ``before`` (the figures an inline run reports).

    Whether they are done is two indexed lookups, asked often; the counts (a scan
    of the edition's rows: ~150 ms on a million on PostgreSQL) only every few
    seconds for ``progress``, and once at the end."""
    eid = report.edition_id
    handled = before.accepted + before.counts[DeliveryStatus.FAILED]
    counted = time.monotonic()
    while True:
        with transaction(sessions) as session:
            over, stopped = _over(session, eid)
        if over:
            break
        if progress is not None and time.monotonic() - counted >= PROGRESS_SECONDS:
            counted = time.monotonic()
            with transaction(sessions) as session:
                counts = log.stats(session, edition_id=eid)
            now_handled = sum(counts[s] for s in ACCEPTED) + counts[DeliveryStatus.FAILED]
            if now_handled > handled:
                progress(now_handled - handled, sum(counts.values()))
                handled = now_handled
        sleep(WAIT_POLL_SECONDS)
    with transaction(sessions) as session:
        summary = log.summary(session, edition_id=eid)
    if progress is not None:
        progress(
            max(summary.accepted + summary.counts[DeliveryStatus.FAILED] - handled, 0),
            summary.audience,
        )
    report.summary = summary
    report.sent = max(summary.accepted - before.accepted, 0)
    failed_before = before.counts[DeliveryStatus.FAILED]
    report.failed = max(summary.counts[DeliveryStatus.FAILED] - failed_before, 0)
    report.uncertain = summary.counts[DeliveryStatus.UNCERTAIN]
    report.retried = summary.counts[DeliveryStatus.RETRY]
    if stopped and stopped.startswith(pacing.OUTAGE):
        report.outage, report.stopped = True, stopped.removeprefix(pacing.OUTAGE)
    else:
        report.stopped = stopped
    return report


def send(
    sessions: sessionmaker[Session],
    *,
    settings: Settings,
    edition_id: int,
    provider: Provider,
    secondary: Provider | None = None,
    progress: runner.Progress | None = None,
    clock: Callable[[], datetime] = utcnow,
    wait: bool = True,
    stop: threading.Event | None = None,
) -> runner.SendReport:
    """Send an edition on the configured backend; raises as runner.send_edition does,
    and QueueError when the workers' broker does not answer.

    Inline, ``wait`` is send_edition's (wait for retries and later waves). On Celery,
    with ``wait`` this returns when the workers are done with the edition; without,
    as soon as the tasks are queued (the report then holds the ledger as it stands),
    and at once, queueing nothing, while workers hold batches of the edition.
    ``stop`` ends an inline run after its batch in flight (workers stop on their own).
    """
    if settings.queue.backend == "inline":
        return runner.send_edition(
            sessions,
            settings=settings,
            edition_id=edition_id,
            provider=provider,
            secondary=secondary,
            progress=progress,
            clock=clock,
            wait=wait,
            stop=stop,
        )
    if not wait:
        with transaction(sessions) as session:
            lease = log.next_lease_expiry(session, edition_id=edition_id)
            if lease is not None and lease > clock():
                # Workers hold batches of it now: the scheduler's every-minute tick
                # would only pile more tasks behind them.
                edition = session.get_one(Edition, edition_id)
                report = runner.SendReport(edition_id, edition.newsletter)
                report.summary = log.summary(session, edition_id=edition_id)
                return report
    started = time.monotonic()
    app = celery_app(settings)
    report, before = _hand_off(
        app,
        sessions,
        settings=settings,
        edition_id=edition_id,
        provider=provider,
        secondary=secondary,
        clock=clock,
    )
    if wait:
        _warn_without_workers(app)
        wait_for(sessions, report, before, progress=progress)
    else:
        with transaction(sessions) as session:
            report.summary = log.summary(session, edition_id=edition_id)
    report.elapsed = time.monotonic() - started  # from the freeze, as inline
    return report
