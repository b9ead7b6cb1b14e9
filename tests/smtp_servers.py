"""Real SMTP servers for tests: aiosmtpd in-process with fault injection, a socket
that answers every connection with one fixed reply, and Postfix's smtp-sink.

Everything listens on 127.0.0.1 on a free port and is closed by its context manager.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

SMTP_SINK = os.environ.get("SMTP_SINK", "/usr/sbin/smtp-sink")
SERVER_NAME = "mx.test"  # given, so aiosmtpd does not look its own name up in DNS


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Received:
    """One message as the server took it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: Any


@dataclass
class Recorder:
    """An aiosmtpd handler that stores messages and misbehaves on request.

    Faults: ``rcpt_replies`` maps an address to the reply its RCPT gets;
    ``mail_replies``/``data_replies`` are replies for the next MAIL/DATA
    commands (None: behave normally; ``"drop"``: close the connection unanswered);
    ``pipelining`` adds PIPELINING to the EHLO reply.
    """

    pipelining: bool = False
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    mail_replies: deque[str | None] = field(default_factory=deque)
    data_replies: deque[str | None] = field(default_factory=deque)
    messages: list[Received] = field(default_factory=list)
    sessions: set[Any] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _fault(self, replies: deque[str | None], server: Any) -> str | None:
        try:
            reply = replies.popleft()
        except IndexError:
            return None
        if reply == "drop":
            server.transport.close()
            return "421 gone"  # never reaches the client: the connection is closed
        return reply

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.sessions.add(session.peer)
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        fault = self._fault(self.mail_replies, server)
        if fault:
            return fault
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        fault = self._fault(self.data_replies, server)
        if fault:
            return fault
        with self.lock:
            self.messages.append(
                Received(
                    envelope.mail_from, list(envelope.rcpt_tos), envelope.content, session.peer
                )
            )
        return "250 2.0.0 Queued"

    def by_rcpt(self) -> dict[str, Received]:
        """Messages keyed by their single recipient (asserts one recipient each)."""
        out: dict[str, Received] = {}
        for m in self.messages:
            assert len(m.rcpt_tos) == 1, m.rcpt_tos
            out[m.rcpt_tos[0]] = m
        return out


def password_authenticator(login: str, password: str) -> Any:
    """An aiosmtpd authenticator accepting exactly one login/password."""

    def authenticate(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == login.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    return authenticate


@dataclass
class LocalSMTP:
    host: str
    port: int
    handler: Recorder


@contextmanager
def aiosmtpd_server(handler: Recorder | None = None, **smtp_kwargs: Any) -> Iterator[LocalSMTP]:
    """Run aiosmtpd on 127.0.0.1:<free port> (``smtp_kwargs`` go to aiosmtpd's SMTP)."""
    handler = handler or Recorder()
    ssl_context = smtp_kwargs.pop("ssl_context", None)
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port(),
        server_hostname=SERVER_NAME,
        ssl_context=ssl_context,
        ready_timeout=10,
        **smtp_kwargs,
    )
    controller.start()
    try:
        yield LocalSMTP("127.0.0.1", controller.port, handler)
    finally:
        controller.stop()


class _FixedReply(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(self.server.reply)  # type: ignore[attr-defined]


@contextmanager
def fixed_reply_server(reply: str) -> Iterator[LocalSMTP]:
    """A server that greets every connection with ``reply`` and hangs up (e.g. 421)."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _FixedReply)
    server.daemon_threads = True
    server.reply = (reply + "\r\n").encode()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LocalSMTP("127.0.0.1", server.server_address[1], Recorder())
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class TLSFiles:
    """A self-signed certificate for 127.0.0.1 and the contexts that use it."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def make_tls_files(folder: Path) -> TLSFiles:
    """Write a fresh self-signed certificate valid for IP 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    files = TLSFiles(folder / "cert.pem", folder / "key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def smtp_sink_missing() -> str | None:
    """Why smtp-sink cannot run here, or None when it can."""
    if shutil.which(SMTP_SINK) is None:
        return (
            f"Postfix smtp-sink not found at {SMTP_SINK} "
            "(apt-get install -y postfix, or set SMTP_SINK)"
        )
    return None


@dataclass
class SinkServer(LocalSMTP):
    """A running smtp-sink; its ``-c`` counters go to ``counters``."""

    counters: Path = Path()

    def messages(self) -> int:
        """How many messages smtp-sink has received ("." seen) so far."""
        found = re.findall(rb"mesg=(\d+)", self.counters.read_bytes())
        return int(found[-1]) if found else 0


@contextmanager
def smtp_sink(folder: Path, *options: str, backlog: int = 1000) -> Iterator[SinkServer]:
    """Run ``smtp-sink -c [options] 127.0.0.1:<free port> <backlog>`` until the block ends.

    smtp-sink accepts and discards everything (with PIPELINING); ``options`` such
    as ``-r rcpt`` inject faults. As root it must drop privileges (``-u nobody``).
    """
    port = free_port()
    command = [SMTP_SINK, "-c", *options]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]
    command += [f"127.0.0.1:{port}", str(backlog)]
    counters = folder / f"smtp-sink-{port}.counters"
    with counters.open("wb") as out:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"smtp-sink did not start: {err.strip()}") from None
                time.sleep(0.02)
        yield SinkServer("127.0.0.1", port, Recorder(), counters)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
