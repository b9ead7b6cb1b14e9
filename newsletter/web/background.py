"""Sends the web process runs itself, in threads: the console's and the API's
"send now" and "resume".

Why a thread and not a scheduled send due now: only ``newsletter scheduler`` starts
scheduled sends, so under ``newsletter serve`` alone (the default setup: SQLite, the
outbox) one would say "scheduled" and never go out; recording one *and* running it
here would race a scheduler that does run. So :func:`send_in_background` does what
``newsletter send --edition`` does: in the caller's request it checks the provider,
the edition's state and the pre-send checks (refusals come back at once), then it
runs :func:`newsletter.delivery.queue.send` in a thread and returns: inline, that
freezes the audience, sends every batch and waits for retries; on Celery it freezes
the audience and queues the send for the workers.

The ledger keeps this honest: runners claim rows, so another runner (the CLI, another
web node) never sends anyone twice; a server shutting down tells its threads to stop
after the batch in flight and leaves the rest queued (:meth:`BackgroundSends.stop_all`,
called from the console router's lifespan); one that dies leaves its claims to the
next runner, as uncertain, like any crash. The console says whether this server is
sending an edition and offers to continue a send nobody here runs.
"""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack

from sqlalchemy.orm import Session

from newsletter.db import transaction
from newsletter.delivery import preview, queue, sender
from newsletter.delivery.providers import open_providers
from newsletter.delivery.providers.base import Provider
from newsletter.delivery.types import OutcomeStatus
from newsletter.errors import (
    CheckFailed,
    NewsletterError,
    ProviderConfigError,
    ProviderError,
    StateError,
)
from newsletter.events.ingest import rejections
from newsletter.models import EditionStatus, utcnow
from newsletter.schedule import records
from newsletter.web.state import WebState

logger = logging.getLogger(__name__)

#: How long a shutting-down server waits for each send to finish the batch in flight.
STOP_WAIT_SECONDS = 60.0


class BackgroundSends:
    """The sends this web process runs, one thread per edition.

    A thread owns the providers it was handed and closes them; at shutdown every
    thread is told to stop after its batch in flight (:meth:`stop_all`, called by
    the console router's lifespan).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[int, tuple[threading.Thread, threading.Event]] = {}
        self._errors: dict[int, str] = {}
        self._closed = False

    def running(self, edition_id: int) -> bool:
        """Whether a thread of this process is sending ``edition_id`` now."""
        with self._lock:
            live = self._threads.get(edition_id)
            return live is not None and live[0].is_alive()

    def error(self, edition_id: int) -> str:
        """Why the last send of ``edition_id`` from here stopped early ("" if it did not)."""
        with self._lock:
            return self._errors.get(edition_id, "")

    def start(
        self,
        web: WebState,
        edition_id: int,
        *,
        owned: ExitStack,
        provider: Provider,
        secondary: Provider | None,
    ) -> None:
        """Run the send of ``edition_id`` in a new thread, which closes ``owned``.

        Raises StateError when this process already sends it or is shutting down."""
        with self._lock:
            if self._closed:
                raise StateError("the web server is shutting down", code="web.stopping")
            live = self._threads.get(edition_id)
            if live is not None and live[0].is_alive():
                raise StateError(
                    f"edition {edition_id} is already sending from this web server",
                    code="edition.sending_here",
                    edition_id=edition_id,
                )
            stop = threading.Event()
            thread = threading.Thread(
                target=self._run,
                args=(web, edition_id, owned, provider, secondary, stop),
                name=f"web-send-{edition_id}",
                daemon=True,  # a server killed outright leaves uncertain claims, not a hang
            )
            self._threads[edition_id] = (thread, stop)
            self._errors.pop(edition_id, None)
            thread.start()

    def _run(
        self,
        web: WebState,
        edition_id: int,
        owned: ExitStack,
        provider: Provider,
        secondary: Provider | None,
        stop: threading.Event,
    ) -> None:
        problem = ""
        try:
            with owned:
                # On Celery the thread only freezes the audience and queues the
                # send; the workers suppress the rejected addresses at its end.
                report = queue.send(
                    web.sessions,
                    settings=web.settings,
                    edition_id=edition_id,
                    provider=provider,
                    secondary=secondary,
                    stop=stop,
                    wait=web.settings.queue.backend == "inline",
                )
            # What follows every send (as the CLI's): rejected addresses are suppressed.
            with transaction(web.sessions) as session:
                rejections(session, settings=web.settings, edition_id=edition_id)
            if report.stopped not in (None, "paused", "cancelled", "interrupted"):
                problem = f"the send stopped: {report.stopped}"
        except NewsletterError as exc:
            logger.warning("edition %s: the send from the web stopped: %s", edition_id, exc)
            problem = str(exc)
        except Exception:
            logger.exception("edition %s: the send from the web failed", edition_id)
            problem = "the send stopped on an unexpected error (the server log has it)"
        finally:
            with self._lock:
                if problem:
                    self._errors[edition_id] = problem
                live = self._threads.get(edition_id)
                if live is not None and live[0] is threading.current_thread():
                    del self._threads[edition_id]

    def stop_all(self, timeout: float) -> None:
        """Stop every send after its batch in flight, waiting up to ``timeout`` each."""
        with self._lock:
            self._closed = True
            live = list(self._threads.values())
        for _, stop in live:
            stop.set()
        for thread, _ in live:
            thread.join(timeout)


_SENDS = "_background_sends"


def background(web: WebState) -> BackgroundSends:
    """This app's :class:`BackgroundSends` (the console's and the API's, shared)."""
    found = vars(web).get(_SENDS)
    if not isinstance(found, BackgroundSends):
        found = vars(web).setdefault(_SENDS, BackgroundSends())
    assert isinstance(found, BackgroundSends)
    return found


#: Why an edition's state lets no send start (the codes :func:`sender.start_send` uses).
_REFUSED = {
    EditionStatus.HELD: "is held for review: release it first",
    EditionStatus.PAUSED: "is paused: resume it instead",
    EditionStatus.CANCELLED: "was cancelled; nothing will be sent",
}


def send_in_background(web: WebState, edition_id: int, *, resume: bool = False) -> preview.DryRun:
    """Start (``resume``: resume a paused) send of ``edition_id`` in a thread of this
    process; returns the dry run it passed (its audience, as counted now).

    What can refuse it is asked here, so it comes back at once: the provider's check,
    the edition's state and the pre-send checks (ProviderConfigError, NotFoundError,
    StateError, also when this process already sends it, CheckFailed). Freezing the
    audience, the one step that grows with the list (about a second per 200,000 on
    SQLite), happens in the thread, as the send's first step.
    """
    sends = background(web)
    if sends.running(edition_id):
        raise StateError(
            f"edition {edition_id} is already sending from this web server",
            code="edition.sending_here",
            edition_id=edition_id,
        )
    owned = ExitStack()
    try:
        provider, secondary = owned.enter_context(open_providers(web.settings))
        sender.preflight(provider, secondary)
        if resume:
            with transaction(web.sessions) as session:
                sender.resume(session, edition_id=edition_id)
        with web.sessions() as session:
            dry = preview.dry_run(session, settings=web.settings, edition_id=edition_id)
        if dry.problems:
            raise CheckFailed(list(dry.problems), edition_id=edition_id)
        if dry.status in _REFUSED:
            raise StateError(
                f"edition {edition_id} {_REFUSED[dry.status]}",
                code=f"edition.{dry.status.value}",
                edition_id=edition_id,
            )
        sends.start(web, edition_id, owned=owned, provider=provider, secondary=secondary)
    except BaseException:
        owned.close()
        raise
    return dry


def send_test_copy(web: WebState, edition_id: int, *, email: str) -> None:
    """One ``[TEST]`` copy of the edition to ``email`` through the app's provider (no
    ledger row); raises like :func:`newsletter.delivery.sender.send_test`, and
    ProviderError when the provider did not take it."""
    if web.provider is None:
        raise ProviderConfigError("the web app's provider is not open", code="provider.closed")
    with web.sessions() as session:
        outcome = sender.send_test(
            session,
            settings=web.settings,
            edition_id=edition_id,
            email=email,
            provider=web.provider,
        )
    if outcome.status is not OutcomeStatus.SENT:
        raise ProviderError(
            f"test copy to {email} not sent: {outcome.error}", code="send.test_failed"
        )


def scheduler_running(session: Session) -> bool:
    """Whether a ``newsletter scheduler`` holds its lease now (it starts scheduled sends)."""
    lease = records.get_lease(session)
    return lease is not None and lease.expires_at >= utcnow()
