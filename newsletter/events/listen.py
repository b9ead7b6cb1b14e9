"""A small inbound SMTP listener (aiosmtpd) for mail that comes back: put it behind
the MTA that receives the VERP return path and the unsubscribe mailbox.

Each message is handled as :mod:`newsletter.events.mail` reads one from a mailbox,
in its own transaction; the SMTP answer is 250 once it is stored (a 451 asks the
sending server to try again later when the database could not take it).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.db import transaction
from newsletter.events.mail import MAX_MESSAGE_BYTES, MailReport, handle

log = logging.getLogger(__name__)


class _Handler:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings, self.sessions = settings, sessions
        self.report = MailReport()
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "replace")
        try:
            with self.lock, transaction(self.sessions) as db:
                handle(db, self.settings, data, self.report, envelope_to=list(envelope.rcpt_tos))
        except Exception:  # the sender retries a 4xx; the reason is in our log
            log.exception("could not store a returned message")
            return "451 4.3.0 Try again later"
        return "250 2.0.0 OK"


class Listener:
    """The listener on ``host:port``; ``start``/``stop``, or a context manager."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], *, host: str, port: int
    ) -> None:
        self.handler = _Handler(settings, sessions)
        self.controller = Controller(
            self.handler,
            hostname=host,
            port=port,
            server_hostname=settings.sender.domain,
            data_size_limit=MAX_MESSAGE_BYTES,
        )

    @property
    def report(self) -> MailReport:
        return self.handler.report

    def start(self) -> Listener:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> Listener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
