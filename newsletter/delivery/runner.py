"""Running a send in this process: threads, helper processes, signals, heartbeats.

:func:`send_edition` is what the CLI and the scheduler call. It opens the send as
this process's runner, then ``delivery.concurrency`` threads call the send unit
(:func:`newsletter.delivery.sender.send_batch`) until the edition is done, paused
or stopped, waiting when it says there is nothing to do yet; ``delivery.processes
- 1`` helper processes do the same on other cores. Meanwhile a heartbeat tells
other runners this one is alive, and a waiting runner recovers the claims of
runners that died. Ctrl-C or SIGTERM finish the batch in flight, then stop.
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
from newsletter.db import transaction
from newsletter.delivery import log, registry, sender
from newsletter.delivery.pacing import OUTAGE
from newsletter.delivery.providers.base import Provider
from newsletter.delivery.sender import StepKind
from newsletter.models import DeliveryStatus, Edition, EditionStatus, utcnow

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (handled in this batch, total audience)
#: The longest a waiting runner sleeps before it looks at the ledger again.
POLL_SECONDS = 1.0


@dataclass
class SendReport:
    """What one run of a send did, and where the edition stands afterwards."""

    edition_id: int
    newsletter: str
    newly_queued: int = 0
    recovered_uncertain: int = 0
    sent: int = 0  # accepted by the provider during this run
    failed: int = 0
    retried: int = 0
    uncertain: int = 0
    stopped: str | None = None  # why the run ended early, if it did
    later: datetime | None = None  # the run ended before rows due then (see ``horizon``)
    outage: bool = False  # it ended because the provider went away (the send is paused)
    elapsed: float = 0.0
    summary: log.Summary = field(
        default_factory=lambda: log.Summary(dict.fromkeys(DeliveryStatus, 0))
    )

    @property
    def counts(self) -> dict[DeliveryStatus, int]:
        return self.summary.counts

    @property
    def audience(self) -> int:
        return self.summary.audience

    @property
    def complete(self) -> bool:
        """Nothing is left to send or to decide (no open, no uncertain rows)."""
        return self.summary.settled

    @property
    def ok(self) -> bool:
        """Everyone got it, or failed for a reason of their own; the send is over."""
        return self.summary.everyone and not self.stopped


@contextmanager
def graceful_stop(stop: threading.Event | None = None) -> Iterator[threading.Event]:
    """Ctrl-C / SIGTERM finish the batch in flight, then stop (no uncertain rows).

    ``stop``, when given, is an outside event that means the same (a web server
    shutting down while a send it started runs in one of its threads)."""
    stop = threading.Event() if stop is None else stop
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        logger.warning("stopping after the batch in flight (signal %d again to abort)", signum)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _heartbeat(
    sessions: sessionmaker[Session], runner: str, every: float, clock: Callable[[], datetime]
) -> Iterator[None]:
    """Beat every ``every`` seconds while the block runs; leave the registry after."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every):
            try:
                with transaction(sessions) as session:
                    registry.heartbeat(session, identity=runner, now=clock())
            except Exception:  # a missed beat is retried; the send goes on
                logger.warning("runner heartbeat failed", exc_info=True)

    thread = threading.Thread(target=beat, name="runner-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        with transaction(sessions) as session:
            registry.unregister(session, identity=runner)


@dataclass
class _Run:
    """The shared state of this process's threads on one send."""

    sessions: sessionmaker[Session]
    send: sender.Send
    report: SendReport
    stop: threading.Event
    clock: Callable[[], datetime]
    sleep: Callable[[float], None] | None
    progress: Progress | None
    total: int
    horizon: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    error: BaseException | None = None

    def worker(self) -> None:
        """Call the send unit until the edition is done, stopped or interrupted."""
        try:
            while not self.stop.is_set() and self._one():
                pass
        except BaseException as exc:  # re-raised by the caller's thread
            with self.lock:
                self.error = self.error or exc
            self.stop.set()

    def _one(self) -> bool:
        step = sender.send_batch(self.sessions, self.send, clock=self.clock)
        if step.recorded is not None:
            r = step.recorded
            with self.lock:
                self.report.sent += r.sent
                self.report.failed += r.failed + r.expired
                self.report.retried += r.retry
                self.report.uncertain += r.uncertain
                if self.progress:
                    self.progress(r.sent + r.failed + r.expired, self.total)
        if step.kind is StepKind.BATCH:
            return True
        if step.kind is StepKind.STOPPED:
            with self.lock:
                self.report.stopped = self.report.stopped or step.reason
            self.stop.set()
            return False
        if step.kind is StepKind.DONE or self.sleep is None:
            return False
        now = self.clock()
        delay = (step.until - now).total_seconds() if step.until else POLL_SECONDS
        if self.horizon is not None and step.until is not None and delay > self.horizon:
            with self.lock:
                self.report.later = min(self.report.later or step.until, step.until)
            return False
        self.sleep(min(max(delay, 0.05), POLL_SECONDS))
        sender.recover_gone(self.sessions, self.send, now=self.clock())
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
    fresh: bool = True,
    stop: threading.Event | None = None,
    horizon: float | None = None,
) -> SendReport:
    """Send edition ``edition_id`` to its frozen audience; safe to run again.

    Recipients already sent (or failed) are never sent again. With ``wait`` the call
    returns when every recipient is handled, waiting for retries and later waves;
    without, it sends what is due now and returns. Raises ProviderConfigError when a
    provider cannot work (before anything is frozen, if it cannot at the start),
    StateError for a held/paused/cancelled edition, CheckFailed for failed checks.
    Setting ``stop`` (from another thread) ends the run after the batch in flight.
    ``horizon`` (seconds) bounds the wait: when the next row is due later than that,
    the run ends with ``report.later`` set to when (a worker's task re-queues itself).
    """
    started_at = time.monotonic()
    send, started = sender.open_send(
        sessions,
        settings=settings,
        edition_id=edition_id,
        primary=provider,
        secondary=secondary,
        clock=clock,
        fresh=fresh,
    )
    report = SendReport(
        edition_id,
        send.prepared.newsletter,
        newly_queued=started.queued,
        recovered_uncertain=started.recovered,
    )
    with transaction(sessions) as session:
        total = sum(log.stats(session, edition_id=edition_id).values())
    delivery = settings.delivery
    with (
        graceful_stop(stop) as stop,
        _heartbeat(sessions, send.runner, delivery.heartbeat_seconds, clock),
    ):
        pause = sleep if wait else None
        run = _Run(sessions, send, report, stop, clock, pause, progress, total, horizon)
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
                logger.warning(
                    "sender process %s exited with code %s", helper.name, helper.exitcode
                )
        if run.error is not None:
            raise run.error
        if stop.is_set() and not report.stopped:
            report.stopped = "interrupted"
    with transaction(sessions) as session:
        report.summary = log.summary(session, edition_id=edition_id)
        edition = session.get_one(Edition, edition_id)
        status, reason = edition.status, edition.status_reason
    if status is EditionStatus.PAUSED and reason and reason.startswith(OUTAGE):
        report.outage, report.stopped = True, reason.removeprefix(OUTAGE)
    elif status in (EditionStatus.PAUSED, EditionStatus.CANCELLED):
        report.stopped = report.stopped or status.value  # another runner's decision, or staff's
    report.elapsed = time.monotonic() - started_at
    logger.info(
        "edition %s: sent %d, failed %d, retrying %d, uncertain %d in %.1f s",
        edition_id,
        report.sent,
        report.failed,
        report.retried,
        report.uncertain,
        report.elapsed,
    )
    return report


def _start_helper_processes(
    settings: Settings, edition_id: int, *, wait: bool
) -> Sequence[multiprocessing.process.BaseProcess]:
    """Start ``delivery.processes - 1`` more runner processes on the same edition.

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


def one_process(settings: Settings) -> Settings:
    """``settings`` for a runner that starts no helper processes of its own."""
    return settings.model_copy(
        update={"delivery": settings.delivery.model_copy(update={"processes": 1})}
    )


def _helper_process(settings: Settings, edition_id: int, wait: bool) -> None:
    """Entry point of a helper runner process: its own engine, provider and threads."""
    from newsletter.db import open_engine, session_factory
    from newsletter.delivery.providers import open_providers

    logging.basicConfig(
        level=settings.service.log_level,
        format="%(asctime)s %(levelname)s %(processName)s: %(message)s",
    )
    single = one_process(settings)
    engine = open_engine(single)
    try:
        with open_providers(single) as (provider, secondary):
            send_edition(
                session_factory(engine),
                settings=single,
                edition_id=edition_id,
                provider=provider,
                secondary=secondary,
                wait=wait,
                fresh=False,
            )
    finally:
        engine.dispose()
