"""The `smtp` provider: a pool of SMTP connections, one message per recipient.

Each edition is encoded once (:mod:`newsletter.providers.mime_template`) and each
recipient's message is filled in as bytes, optionally DKIM-signed (dkimpy), and
sent over one of ``pool_size`` reused connections. A batch is spread over the
pool by worker threads; when the server offers PIPELINING, MAIL, RCPT and DATA
go out in one write (one round trip fewer per command).

Outcomes: 250 after the data → ``sent`` (message id = our Message-ID); a 5xx
for the recipient or the content → ``failed`` with the reply; a 4xx, a 421 or a
connection dropped before the final "." → ``retry`` (the ledger backs off); a
connection lost after the final "." and before the reply → ``uncertain`` (the
server may have queued it). A connection that turns
out stale before any of the message was sent is replaced once at once. Bad
credentials or a rejected envelope sender raise ProviderConfigError when
nothing in the batch was accepted (otherwise the rest are ``retry``).
"""

from __future__ import annotations

import logging
import queue
import re
import smtplib
import ssl
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from newsletter.config import Settings
from newsletter.delivery.message import (
    MessageTemplate,
    UnsendableRecipient,
    date_header,
    dot_stuff,
    template_for,
)
from newsletter.delivery.providers.dkim import DKIMSigner
from newsletter.delivery.types import Outcome, OutcomeStatus, PreparedEdition, Recipient
from newsletter.errors import ProviderConfigError, ProviderError

log = logging.getLogger(__name__)

Security = Literal["none", "starttls", "tls"]
_VERP = re.compile(r"^[^@+]+\+(\d+)@")


def verp_address(base: str, delivery_id: int | None) -> str:
    """``bounces@d`` + 42 → ``bounces+42@d`` (the base itself for a test copy)."""
    if delivery_id is None:
        return base
    local, _, domain = base.rpartition("@")
    return f"{local}+{delivery_id}@{domain}"


def delivery_id_from_verp(address: str) -> int | None:
    """The delivery id in a VERP bounce address (``bounces+42@d`` → 42), or None."""
    match = _VERP.match(address.strip("<>"))
    return int(match.group(1)) if match else None


class _Unavailable(Exception):
    """A connection could not be made now; ``reachable`` says whether the host answered."""

    def __init__(self, message: str, *, reachable: bool) -> None:
        super().__init__(message)
        self.reachable = reachable


class _Dropped(Exception):
    """The connection died mid-transaction: ``before_content`` if no data was sent,
    ``after_end`` if the whole message (and its final ".") was."""

    def __init__(self, message: str, *, before_content: bool, after_end: bool = False) -> None:
        super().__init__(message)
        self.before_content = before_content
        self.after_end = after_end


def _reply(code: int, text: bytes | str) -> str:
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(text.split())}".strip()


class _Connection:
    """One authenticated SMTP session, used by one thread at a time."""

    def __init__(self, smtp: smtplib.SMTP) -> None:
        self.smtp = smtp
        self.pipelining = smtp.has_extn("pipelining")
        self.used = False
        self.closed = False

    def transact(self, sender: str, rcpt: str, wire: bytes) -> tuple[str, int, str]:
        """Send one message; returns ``(stage, code, reply)`` of the last reply.

        ``wire`` is dot-stuffed and ends with CRLF. Raises _Dropped.
        """
        self.used = True
        smtp = self.smtp
        envelope = [f"MAIL FROM:<{sender}>", f"RCPT TO:<{rcpt}>", "DATA"]
        stages = ("MAIL FROM", "RCPT TO", "DATA")
        try:
            if self.pipelining:
                smtp.send("".join(c + "\r\n" for c in envelope))
                replies = [smtp.getreply() for _ in envelope]
            else:
                replies = []
                for command in envelope:
                    smtp.send(command + "\r\n")
                    replies.append(smtp.getreply())
                    if replies[-1][0] not in (250, 251, 354):
                        break
        except (smtplib.SMTPException, OSError) as exc:
            raise _Dropped(f"connection lost before the data: {exc}", before_content=True) from exc
        expected = (250, 250, 354)
        for stage, (code, text), want in zip(stages, replies, expected, strict=False):
            if code != want and not (want == 250 and code == 251):
                if replies[-1][0] == 354:
                    # The server took DATA without a valid envelope: drop the session
                    # rather than end an empty message.
                    self.close(polite=False)
                return stage, code, _reply(code, text)
        try:
            smtp.send(wire + b".\r\n")
        except (smtplib.SMTPException, OSError) as exc:
            raise _Dropped(f"connection lost during the data: {exc}", before_content=False) from exc
        try:
            code, text = smtp.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            # The final "." went out: the server may have queued the message.
            raise _Dropped(
                f"connection lost after the data, before the server's reply: {exc}",
                before_content=False,
                after_end=True,
            ) from exc
        return "end of data", code, _reply(code, text)

    def reset(self) -> None:
        """RSET after a refused transaction; raises on a dead connection."""
        code, text = self.smtp.rset()
        if code != 250:
            raise smtplib.SMTPResponseException(code, text)

    def close(self, *, polite: bool = True) -> None:
        self.closed = True
        try:
            if polite:
                self.smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            self.smtp.close()


@dataclass
class _Job:
    """One send_batch call: the work queue and its results, shared by its workers."""

    template: MessageTemplate
    items: deque[tuple[int, Recipient, bool]]
    outcomes: list[Outcome | None]
    config_error: ProviderConfigError | None = None
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


class SMTPProvider:
    """SMTP delivery with a connection pool; see the module docstring."""

    name = "smtp"
    max_batch = 1000
    idempotent = False

    def __init__(
        self,
        *,
        host: str,
        port: int,
        security: Security = "none",
        username: str | None = None,
        password: str | None = None,
        pool_size: int = 4,
        timeout: float = 30.0,
        return_path: str | None = None,
        verp: bool = False,
        dkim: DKIMSigner | None = None,
        local_hostname: str = "localhost",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.security = host, port, security
        self.username, self._password = username, password or ""
        self.pool_size, self.timeout = pool_size, timeout
        self.return_path, self.verp, self.dkim = return_path, verp, dkim
        # Given explicitly: smtplib would otherwise look the host's FQDN up in DNS.
        self.local_hostname = local_hostname
        self.ssl_context = ssl_context or ssl.create_default_context()
        self._idle: queue.LifoQueue[_Connection | None] = queue.LifoQueue()
        for _ in range(pool_size):
            self._idle.put(None)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._date: tuple[int, bytes] = (0, b"")

    @classmethod
    def from_settings(cls, settings: Settings) -> SMTPProvider:
        """Build from ``delivery.smtp`` and the SMTP/DKIM secrets; raises ProviderConfigError."""
        smtp = settings.delivery.smtp
        if smtp.username and settings.smtp_password is None:
            raise ProviderConfigError(
                "delivery.smtp.username is set but NEWSLETTER_SMTP_PASSWORD is not"
            )
        key = settings.dkim_private_key
        dkim = None
        if smtp.dkim_selector or smtp.dkim_domain or key is not None:
            if not (smtp.dkim_selector and smtp.dkim_domain and key is not None):
                raise ProviderConfigError(
                    "DKIM needs delivery.smtp.dkim_selector, delivery.smtp.dkim_domain "
                    "and NEWSLETTER_DKIM_PRIVATE_KEY together"
                )
            dkim = DKIMSigner.load(
                selector=smtp.dkim_selector,
                domain=smtp.dkim_domain,
                private_key=key.get_secret_value(),
                algorithm=smtp.dkim_algorithm,
            )
        return cls(
            host=smtp.host,
            port=smtp.port,
            security=smtp.security,
            username=smtp.username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            pool_size=smtp.pool_size,
            timeout=smtp.timeout_seconds,
            return_path=smtp.return_path,
            verp=smtp.verp,
            dkim=dkim,
            local_hostname=settings.sender.domain,
        )

    # ----- connections ------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"SMTP server {self.host}:{self.port}"

    def _connect(self) -> _Connection:
        """A new session (TLS and login as configured).

        Raises ProviderConfigError (TLS or credentials refused, a 5xx greeting)
        or _Unavailable (refused, timed out, a 4xx greeting).
        """
        try:
            if self.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    local_hostname=self.local_hostname,
                    timeout=self.timeout,
                    context=self.ssl_context,
                )
            else:
                smtp = smtplib.SMTP(
                    self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout
                )
        except smtplib.SMTPConnectError as exc:
            reason = (
                f"{self._where} refused the connection: {_reply(exc.smtp_code, exc.smtp_error)}"
            )
            if exc.smtp_code >= 500:
                raise ProviderConfigError(reason) from None
            raise _Unavailable(reason, reachable=True) from None
        except ssl.SSLError as exc:
            raise ProviderConfigError(f"TLS with {self._where} failed: {exc.reason}") from None
        except (smtplib.SMTPException, OSError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise _Unavailable(
                f"cannot connect to {self._where}: {reason}", reachable=False
            ) from None
        try:
            self._greet(smtp)
        except BaseException:
            smtp.close()
            raise
        return _Connection(smtp)

    def _greet(self, smtp: smtplib.SMTP) -> None:
        try:
            smtp.ehlo_or_helo_if_needed()
            if self.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise ProviderConfigError(f"{self._where} does not offer STARTTLS")
                smtp.starttls(context=self.ssl_context)
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self._password)
        except smtplib.SMTPAuthenticationError as exc:
            raise ProviderConfigError(
                f"{self._where} rejected the login for user {self.username!r}: "
                f"{_reply(exc.smtp_code, exc.smtp_error)}"
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise ProviderConfigError(
                f"{self._where} does not offer AUTH (is security = 'starttls' needed?)"
            ) from None
        except ssl.SSLError as exc:
            raise ProviderConfigError(f"TLS with {self._where} failed: {exc.reason}") from None
        except smtplib.SMTPResponseException as exc:
            reason = f"{self._where} refused the session: {_reply(exc.smtp_code, exc.smtp_error)}"
            if exc.smtp_code >= 500:
                raise ProviderConfigError(reason) from None
            raise _Unavailable(reason, reachable=True) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise _Unavailable(
                f"{self._where} dropped the session: {exc}", reachable=True
            ) from None

    def check(self) -> None:
        """Connect and log in once (the session joins the pool).

        Raises ProviderConfigError when the server is unreachable or refuses TLS or
        the credentials, ProviderError when it answers but is busy (4xx greeting).
        """
        try:
            conn = self._connect()
        except _Unavailable as exc:
            if exc.reachable:
                raise ProviderError(str(exc)) from None
            raise ProviderConfigError(str(exc)) from None
        try:
            old = self._idle.get_nowait()
        except queue.Empty:  # every slot is busy sending: nothing to keep it in
            conn.close()
            return
        if old is not None:
            old.close()
        self._idle.put(conn)

    def send_single(self, message: PreparedEdition, recipient: Recipient) -> Outcome:
        """One message outside the ledger (a confirmation): a batch of one."""
        [outcome] = self.send_batch(message, [recipient])
        return outcome

    def close(self) -> None:
        """Stop the workers and QUIT every pooled connection."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        pooled = [self._idle.get() for _ in range(self.pool_size)]
        for conn in pooled:
            if conn is not None:
                conn.close()
            self._idle.put(None)

    # ----- sending ----------------------------------------------------------

    def envelope_sender(self, edition: PreparedEdition, recipient: Recipient) -> str:
        """MAIL FROM: the fixed return path, or its VERP form naming the delivery."""
        if self.verp:
            base = self.return_path or f"bounces@{edition.domain}"
            return verp_address(base, recipient.delivery_id)
        return self.return_path or edition.from_address

    def _template(self, edition: PreparedEdition) -> MessageTemplate:
        return template_for(edition)

    def _date_header(self) -> bytes:
        now = int(time.time())
        second, value = self._date
        if second != now:
            value = date_header(datetime.fromtimestamp(now, UTC))
            self._date = (now, value)
        return value

    def message(
        self, edition: PreparedEdition, recipient: Recipient, *, stuffed: bool = False
    ) -> tuple[str, bytes]:
        """``(Message-ID, bytes)`` of ``recipient``'s message, signed if DKIM is on.

        ``stuffed`` gives the dot-stuffed form that goes after DATA.
        Raises UnsendableRecipient.
        """
        template = self._template(edition)
        if self.dkim is None:
            return template.render(recipient, date=self._date_header(), stuffed=stuffed)
        message_id, data = template.render(recipient, date=self._date_header())
        data = self.dkim.sign(data) + data
        return message_id, dot_stuff(data) if stuffed else data

    def send_batch(
        self, edition: PreparedEdition, recipients: Sequence[Recipient]
    ) -> list[Outcome]:
        """Send one message per recipient over the pool; one Outcome each, in order."""
        if not recipients:
            return []
        job = _Job(
            template=self._template(edition),  # built once, before the workers start
            items=deque((i, r, False) for i, r in enumerate(recipients)),
            outcomes=[None] * len(recipients),
        )
        workers = min(self.pool_size, len(recipients))
        if workers > 1:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.pool_size, "smtp-send")
                executor = self._executor
            futures = [executor.submit(self._work, job) for _ in range(workers - 1)]
            self._work(job)
            for future in futures:
                future.result()
        else:
            self._work(job)
        sent = sum(1 for o in job.outcomes if o is not None and o.status is OutcomeStatus.SENT)
        if job.config_error is not None and not sent:
            raise job.config_error
        reason = str(job.config_error) if job.config_error else job.last_error
        return [
            o
            if o is not None
            else Outcome(r.delivery_id, OutcomeStatus.RETRY, error=reason or "not attempted")
            for o, r in zip(job.outcomes, recipients, strict=True)
        ]

    def _work(self, job: _Job) -> None:
        """Take recipients off the job's queue until it is empty or sending stops."""
        conn = self._idle.get()
        try:
            while job.config_error is None:
                try:
                    index, recipient, redo = job.items.popleft()
                except IndexError:
                    return
                if conn is None:
                    try:
                        conn = self._connect()
                    except ProviderConfigError as exc:
                        job.config_error = exc
                        return
                    except _Unavailable as exc:
                        # Leave it to a worker with a live connection, if any.
                        log.warning("%s", exc)
                        job.last_error = str(exc)
                        job.items.appendleft((index, recipient, redo))
                        return
                outcome, conn = self._deliver(conn, job, recipient)
                if outcome is None:  # stale pooled connection, nothing sent: once more
                    if redo:
                        outcome = Outcome(
                            recipient.delivery_id, OutcomeStatus.RETRY, error=job.last_error
                        )
                    else:
                        job.items.appendleft((index, recipient, True))
                        continue
                job.outcomes[index] = outcome
        finally:
            self._idle.put(conn)

    def _deliver(
        self, conn: _Connection, job: _Job, recipient: Recipient
    ) -> tuple[Outcome | None, _Connection | None]:
        """One message on ``conn``; returns the outcome and the connection if still usable."""
        did = recipient.delivery_id
        try:
            message_id, wire = self.message(job.template.edition, recipient, stuffed=True)
        except UnsendableRecipient as exc:
            return Outcome(did, OutcomeStatus.FAILED, error=str(exc)), conn
        sender = self.envelope_sender(job.template.edition, recipient)
        reused = conn.used
        try:
            stage, code, reply = conn.transact(sender, recipient.email, wire)
        except _Dropped as exc:
            conn.close(polite=False)
            job.last_error = str(exc)
            if exc.before_content and reused:
                return None, None
            status = OutcomeStatus.UNCERTAIN if exc.after_end else OutcomeStatus.RETRY
            return Outcome(did, status, error=str(exc)), None
        if stage == "end of data" and code == 250:
            return Outcome(did, OutcomeStatus.SENT, message_id=message_id), conn
        error = f"{reply} (at {stage})"
        live: _Connection | None = conn
        if code == 421 or conn.closed:  # the server is closing the session (or we did)
            conn.close(polite=False)
            live = None
        elif stage != "end of data":
            try:
                conn.reset()
            except (smtplib.SMTPException, OSError):
                conn.close(polite=False)
                live = None
        if stage == "MAIL FROM" and code >= 500:
            with job.lock:
                job.config_error = job.config_error or ProviderConfigError(
                    f"{self._where} rejected the envelope sender <{sender}>: {error}"
                )
            return Outcome(did, OutcomeStatus.RETRY, error=error), live
        status = OutcomeStatus.FAILED if code >= 500 else OutcomeStatus.RETRY
        return Outcome(did, status, error=error), live
