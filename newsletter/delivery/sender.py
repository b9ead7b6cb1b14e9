"""Sending an edition: freeze content and audience, then claim → send → record.

Each batch is claimed and committed before the provider sees it, and its outcome
is committed right after, so the ledger always says who was sent what; see
ledger.py for the states. The CLI, the scheduler and tests all call
:func:`send_edition`.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType

from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions, render, types
from newsletter.db import transaction
from newsletter.delivery import ledger
from newsletter.delivery.links import recipient
from newsletter.delivery.pacing import Failover, FailureGuard, RateLimiter
from newsletter.delivery.providers.base import Provider
from newsletter.delivery.types import Outcome, PreparedEdition
from newsletter.errors import ProviderConfigError, StateError
from newsletter.models import DeliveryStatus, Edition, EditionStatus, transition_edition, utcnow

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (handled in this batch, total audience)
POLL_SECONDS = 0.25


@dataclass
class SendReport:
    """What one `send` run did, and where the edition stands afterwards."""

    edition_id: int
    newsletter: str
    newly_queued: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    recovered_uncertain: int = 0
    stopped: str | None = None
    elapsed: float = 0.0
    counts: dict[DeliveryStatus, int] = field(default_factory=dict)

    @property
    def audience(self) -> int:
        return sum(self.counts.values())

    @property
    def complete(self) -> bool:
        return not any(self.counts.get(s, 0) for s in ledger.OPEN)


def prepare(
    settings: Settings, edition: Edition, content: types.RenderedEdition
) -> PreparedEdition:
    """The per-send constants every provider needs (content rendered once)."""
    newsletter = settings.newsletter(edition.newsletter)
    sender = settings.sender
    list_domain = sender.list_id or sender.domain
    return PreparedEdition(
        edition_id=edition.id,
        newsletter=edition.newsletter,
        content=content,
        from_name=sender.from_name,
        from_address=sender.from_address,
        reply_to=sender.reply_to,
        list_id=f'"{newsletter.name}" <{edition.newsletter}.{list_domain}>',
        domain=sender.domain,
    )


@contextmanager
def _graceful_stop() -> Iterator[threading.Event]:
    """Ctrl-C / SIGTERM finish the batch in flight, then stop (no uncertain rows)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("stopping after the batch in flight (signal %d again to abort)", signum)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _resend_uncertain(settings: Settings, provider: Provider | None = None) -> bool:
    """Whether rows left uncertain by a crash go out again (see providers/base.py)."""
    return settings.delivery.uncertain == "resend" or bool(provider and provider.idempotent)


def start_send(
    session: Session,
    *,
    settings: Settings,
    edition_id: int,
    now: datetime,
    resend_uncertain: bool | None = None,
) -> tuple[Edition, types.RenderedEdition, int, int]:
    """Freeze content and audience (first run only) and mark the edition sending.

    ``resend_uncertain`` (default: from settings) decides what happens to a batch a
    dead sender left behind. Returns ``(edition, content, newly queued, recovered
    uncertain)``. Refuses paused
    or cancelled editions; a finished edition with nothing open is left as it is.
    """
    edition = editions.get_edition(session, edition_id, for_update=True)
    if edition.status is EditionStatus.CANCELLED:
        raise StateError(
            f"edition {edition.id} was cancelled; nothing will be sent",
            code="edition.cancelled",
            edition_id=edition.id,
        )
    if edition.status is EditionStatus.HELD:
        raise StateError(
            f"edition {edition.id} is held for review",
            code="edition.held",
            edition_id=edition.id,
        )
    if edition.status is EditionStatus.PAUSED:
        raise StateError(
            f"edition {edition.id} is paused", code="edition.paused", edition_id=edition.id
        )
    content = editions.freeze_content(session, edition=edition, settings=settings)
    queued = 0
    if edition.send_started_at is None:
        queued = ledger.freeze_audience(
            session, edition_id=edition.id, slug=edition.newsletter, now=now
        )
        edition.send_started_at = now
        log.info("edition %s: audience frozen, %d deliveries queued", edition.id, queued)
    recovered = ledger.recover_expired(
        session,
        edition_id=edition.id,
        now=now,
        resend=_resend_uncertain(settings) if resend_uncertain is None else resend_uncertain,
    )
    counts = ledger.stats(session, edition_id=edition.id)
    has_open = any(counts[s] for s in ledger.OPEN)
    if edition.status is EditionStatus.BUILT or (edition.status is EditionStatus.SENT and has_open):
        transition_edition(edition, EditionStatus.SENDING)
    return edition, content, queued, recovered


def _finish_if_done(session: Session, edition_id: int, now: datetime) -> bool:
    edition = editions.get_edition(session, edition_id, for_update=True)
    counts = ledger.stats(session, edition_id=edition_id)
    if any(counts[s] for s in ledger.OPEN):
        return False
    if edition.status is EditionStatus.SENDING:
        transition_edition(edition, EditionStatus.SENT)
        edition.send_finished_at = now
    return True


@dataclass
class _Run:
    """The shared state of one send: what every sender thread works from."""

    sessions: sessionmaker[Session]
    settings: Settings
    edition_id: int
    prepared: PreparedEdition
    providers: Failover
    limiter: RateLimiter | None
    clock: Callable[[], datetime]
    sleep: Callable[[float], None] | None
    progress: Progress | None
    total: int
    report: SendReport
    stop: threading.Event
    guard: FailureGuard
    resend: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    error: BaseException | None = None

    def worker(self) -> None:
        """Claim → send → record until the edition is done, paused or stopped."""
        try:
            while not self.stop.is_set() and self.one_batch():
                pass
        except BaseException as exc:  # re-raised by the caller's thread
            with self.lock:
                self.error = self.error or exc
            self.stop.set()

    def one_batch(self) -> bool:
        """Handle one batch; False when this worker should end."""
        delivery = self.settings.delivery
        provider = self.providers.current
        with transaction(self.sessions) as session:
            status = editions.edition_status(session, self.edition_id)
            if status in (EditionStatus.PAUSED, EditionStatus.CANCELLED):
                self.report.stopped = status.value
                return False
            batch_id, claimed = ledger.claim_batch(
                session,
                edition_id=self.edition_id,
                limit=min(delivery.batch_size, provider.max_batch),
                lease_seconds=delivery.lease_seconds,
                now=self.clock(),
            )
        if not claimed:
            return not _wait_or_finish(
                self.sessions, self.edition_id, self.clock, self.sleep, self.settings, self.resend
            )
        slug = self.prepared.newsletter
        recipients = [
            recipient(
                self.settings,
                delivery_id=c.id,
                email=c.email,
                name=c.name,
                key=c.subscriber_key,
                newsletter=slug,
            )
            for c in claimed
        ]
        if self.limiter and (delay := self.limiter.delay_for(len(recipients))) > 0:
            time.sleep(delay)
        try:
            outcomes = provider.send_batch(self.prepared, recipients)
        except ProviderConfigError:
            with transaction(self.sessions) as session:
                # Nothing in this batch was accepted: hand it back untouched.
                ledger.release(session, batch_id=batch_id, claimed=claimed, now=self.clock())
            raise
        self.providers.record(provider, outcomes)
        with transaction(self.sessions) as session:
            counts = ledger.record_outcomes(
                session,
                batch_id=batch_id,
                outcomes=outcomes,
                claimed=claimed,
                provider=provider.name,
                now=self.clock(),
                max_attempts=delivery.max_attempts,
                retry_base=delivery.retry_base_seconds,
            )
        with self.lock:
            self.report.sent += counts["sent"]
            self.report.failed += counts["failed"]
            self.report.retried += counts["retry"]
            if self.progress:
                self.progress(counts["sent"] + counts["failed"], self.total)
        self.guard.check(outcomes)  # after recording: what failed stays on the log
        return True


def send_edition(
    sessions: sessionmaker[Session],
    *,
    settings: Settings,
    edition_id: int,
    provider: Provider,
    secondary: Provider | None = None,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = utcnow,
    sleep: Callable[[float], None] = time.sleep,
    wait: bool = True,
) -> SendReport:
    """Send edition ``edition_id`` to its frozen audience; safe to run again.

    Recipients already sent (or failed) are never sent again. With ``wait`` the call
    returns when every recipient is handled, sleeping for retries and later waves;
    without, it sends what is due now and returns. ``delivery.concurrency`` sender
    threads share the work; ``delivery.rate_per_second`` throttles them; after
    ``delivery.failover_after`` wholly-transient failed batches in a row the rest
    goes through ``secondary``; ``delivery.stop_after_failed_batches`` batches in a row
    failed outright for one reason stop the send (ProviderError). Raises StateError
    for a paused/cancelled edition,
    RenderError/CheckFailed when the content fails its checks, ProviderConfigError
    when a provider cannot send.
    """
    started = time.monotonic()
    delivery = settings.delivery
    for p in (provider, secondary):
        if p is not None:
            p.check()
    with transaction(sessions) as session:
        edition, content, queued, recovered = start_send(
            session,
            settings=settings,
            edition_id=edition_id,
            now=clock(),
            resend_uncertain=_resend_uncertain(settings, provider),
        )
        prepared = prepare(settings, edition, content)
        before = ledger.stats(session, edition_id=edition_id)
        total = sum(before.values())
        sent_before, failed_before = before[DeliveryStatus.SENT], before[DeliveryStatus.FAILED]
    report = SendReport(
        edition_id, edition.newsletter, newly_queued=queued, recovered_uncertain=recovered
    )
    with _graceful_stop() as stop:
        run = _Run(
            sessions=sessions,
            settings=settings,
            edition_id=edition_id,
            prepared=prepared,
            providers=Failover(provider, secondary, delivery.failover_after),
            limiter=RateLimiter(delivery.rate_per_second) if delivery.rate_per_second else None,
            clock=clock,
            sleep=sleep if wait else None,
            progress=progress,
            total=total,
            report=report,
            stop=stop,
            guard=FailureGuard(delivery.stop_after_failed_batches),
            resend=_resend_uncertain(settings, provider),
        )
        helpers = _start_helper_processes(settings, edition_id, wait=wait)
        if delivery.concurrency == 1:
            run.worker()
        else:
            threads = [
                threading.Thread(target=run.worker, name=f"sender-{i}", daemon=True)
                for i in range(delivery.concurrency)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for helper in helpers:
            helper.join()
            if helper.exitcode:
                log.warning("sender process %s exited with code %s", helper.name, helper.exitcode)
        if run.error is not None:
            raise run.error
        if stop.is_set() and not report.stopped:
            report.stopped = "interrupted"
    with transaction(sessions) as session:
        report.counts = ledger.stats(session, edition_id=edition_id)
    if helpers:
        # The helper processes' share is only visible in the ledger.
        report.sent = report.counts[DeliveryStatus.SENT] - sent_before
        report.failed = report.counts[DeliveryStatus.FAILED] - failed_before
    report.elapsed = time.monotonic() - started
    log.info(
        "edition %s: sent %d, failed %d, retrying %d in %.1f s",
        edition_id,
        report.sent,
        report.failed,
        report.retried,
        report.elapsed,
    )
    return report


def _start_helper_processes(
    settings: Settings, edition_id: int, *, wait: bool
) -> Sequence[multiprocessing.process.BaseProcess]:
    """Start ``delivery.processes - 1`` more sender processes on the same edition.

    Python runs one thread at a time, so a big send uses more cores through
    processes; the ledger's claims keep them from ever sharing a recipient.
    """
    extra = settings.delivery.processes - 1
    if extra <= 0:
        return []
    spawn = multiprocessing.get_context("spawn")
    helpers = [
        spawn.Process(
            target=_helper_process, args=(settings, edition_id, wait), name=f"sender-p{i + 1}"
        )
        for i in range(extra)
    ]
    for helper in helpers:
        helper.start()
    return helpers


def _helper_process(settings: Settings, edition_id: int, wait: bool) -> None:
    """Entry point of a helper sender process: its own engine, provider and threads."""
    from newsletter.db import make_engine, session_factory
    from newsletter.delivery.providers import open_providers

    logging.basicConfig(
        level=settings.service.log_level,
        format="%(asctime)s %(levelname)s %(processName)s: %(message)s",
    )
    single = settings.model_copy(
        update={"delivery": settings.delivery.model_copy(update={"processes": 1})}
    )
    engine = make_engine(single.database_url)
    try:
        with open_providers(single) as (provider, secondary):
            send_edition(
                session_factory(engine),
                settings=single,
                edition_id=edition_id,
                provider=provider,
                secondary=secondary,
                wait=wait,
            )
    finally:
        engine.dispose()


def _wait_or_finish(
    sessions: sessionmaker[Session],
    edition_id: int,
    clock: Callable[[], datetime],
    sleep: Callable[[float], None] | None,
    settings: Settings,
    resend: bool,
) -> bool:
    """Nothing claimable now: finish the edition, or wait for retries/leases.

    Returns True when the loop should end: the edition is done, or ``sleep`` is None
    (the caller sends only what is due now)."""
    with transaction(sessions) as session:
        if _finish_if_done(session, edition_id, clock()):
            return True
        now = clock()
        due = ledger.next_due(session, edition_id=edition_id)
        lease = ledger.next_lease_expiry(session, edition_id=edition_id)
    if sleep is None:
        return True
    delay = (due - now).total_seconds() if due else 1.0
    if lease is not None:
        # Rows are claimed: by a sibling thread or another sender (finishing soon), or by
        # one that died (its lease runs out). Look again shortly either way.
        delay = min(delay, POLL_SECONDS, (lease - now).total_seconds())
    sleep(min(max(delay, 0.05), float(settings.delivery.lease_seconds)))
    with transaction(sessions) as session:
        ledger.recover_expired(
            session,
            edition_id=edition_id,
            now=clock(),
            resend=resend,
        )
    return False


def send_test(
    session: Session, *, settings: Settings, edition_id: int, email: str, provider: Provider
) -> Outcome:
    """Send one copy of an edition to ``email`` only; no ledger row, no audience."""
    provider.check()
    edition = editions.get_edition(session, edition_id)
    content = editions.frozen_content(edition) or editions.render_edition(edition, settings)
    render.check_or_raise(content, edition_id=edition.id)
    prepared = prepare(settings, edition, content)
    who = recipient(
        settings, delivery_id=None, email=email, name="", key="test", newsletter=edition.newsletter
    )
    [outcome] = provider.send_batch(prepared, [who])
    return outcome


def pause(session: Session, *, edition_id: int) -> Edition:
    """Pause a send: running senders stop after their batch; queued rows wait."""
    edition = editions.get_edition(session, edition_id, for_update=True)
    transition_edition(edition, EditionStatus.PAUSED)
    return edition


def resume(session: Session, *, edition_id: int) -> Edition:
    """Allow a paused edition to send again (the caller then runs send_edition)."""
    edition = editions.get_edition(session, edition_id, for_update=True)
    if edition.status is not EditionStatus.PAUSED:
        raise StateError(
            f"edition {edition_id} is {edition.status.value}, not paused",
            code="edition.not_paused",
            edition_id=edition_id,
        )
    transition_edition(edition, EditionStatus.SENDING)
    return edition


def cancel(session: Session, *, edition_id: int, now: datetime | None = None) -> int:
    """Cancel an edition: nothing more is sent; returns how many deliveries were cancelled."""
    edition = editions.get_edition(session, edition_id, for_update=True)
    transition_edition(edition, EditionStatus.CANCELLED)
    return ledger.cancel_open(session, edition_id=edition_id, now=now or utcnow())
