"""A SendGrid-compatible v3 Mail Send server that records what it accepts and fails on cue.

In tests::

    with SendGridServer() as server:                 # 127.0.0.1, a free port
        server.script(["429", "ok", "413", "drop"])   # one action per request, then "ok"
        ... point the provider at server.url with key server.api_key ...
        assert server.stats()["duplicates"] == 0

As a process (benchmarks, crash tests)::

    python tests/sendgrid_server.py --port 0 [--key SG.test-key] [--counts-only]

prints ``PORT <n>`` as its first line, serves until SIGTERM/SIGINT, then prints the
stats as JSON. ``GET /stats`` returns them at any time, ``POST /reset`` clears them,
``POST /script`` (a JSON list of actions) sets the fault script.

``GET /v3/scopes`` (the provider's preflight) answers the key's scopes (``scopes``,
``mail.send`` among them; 401 for another key). POST /v3/mail/send needs
``Authorization: Bearer <key>`` (else 401). Actions:
``ok`` (202 + X-Message-Id, recorded), ``429[:s]`` (Retry-After s, default 2, and
X-RateLimit-*), ``429-reset:s`` (only X-RateLimit-Reset = now + s), ``500``, ``503``,
``401``, ``403``, ``413`` (an HTML body), ``400[:field,...]`` (JSON errors naming
the fields), ``slow:s`` (hold the request s seconds, then close without answering: a
request lost in a slow gateway), ``slowok:s`` (accept after s seconds: a client with a
shorter timeout never hears it), ``drop`` (read the request, close without answering),
``acceptdrop`` (accept and record the request, then close without answering),
``reset`` (RST before reading the body). ``faults(rate, actions)`` answers each request
with a random one of ``actions`` with probability ``rate`` (after the script).
Stats: ``requests`` (accepted), ``attempts`` (all mail sends), ``recipients``,
``duplicates`` (copies beyond the first per delivery id, or per address without
one), ``dropped`` (accepted, then dropped as SendGrid does: a ``to`` name with an
unquoted , or ;) and ``by_delivery`` (omitted with counts-only, which scans bodies
with a regex instead of parsing them when it can, and keeps no bodies).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_KEY = "SG.test-key-0123456789"
MAIL_SEND = "/v3/mail/send"
SCOPES = "/v3/scopes"
ACTIONS = {"ok", "429", "429-reset", "500", "503", "401", "403", "413", "400"}
TIMED = {"slow", "slowok"}
BARE = {"drop", "reset", "acceptdrop"}
_DELIVERY = re.compile(rb'"delivery_id"\s*:\s*"(\d+)"')


def _check_action(action: str) -> str:
    head, _, arg = action.partition(":")
    if head in TIMED:
        float(arg)
    elif head not in ACTIONS | BARE or (arg and head not in ("429", "429-reset", "400")):
        raise ValueError(f"unknown server action {action!r}")
    return action


class SendGridServer:
    """The recording server; thread-safe; ``start``/``stop`` or use as a context manager."""

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        counts_only: bool = False,
    ) -> None:
        self.api_key = api_key
        self.counts_only = counts_only
        self.max_body_bytes: int | None = None  # larger requests get 413, like SendGrid's 30 MB
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.recorder = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None
        self._script: deque[str] = deque()
        self._busy = 0
        self.scopes = ["mail.send", "user.profile.read"]
        self._faults: tuple[float, list[str], random.Random] = (0.0, [], random.Random(0))
        self.reset()

    # ----- lifecycle -----------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SendGridServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes handlers that are holding a slow request
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> SendGridServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- control and results -------------------------------------------------

    def script(self, actions: Iterable[str]) -> None:
        """Answer the next requests with ``actions`` in order, then ``ok``."""
        checked = [_check_action(a) for a in actions]
        with self._lock:
            self._script = deque(checked)

    def faults(self, rate: float, actions: Iterable[str], *, seed: int = 0) -> None:
        """After the script, answer each request with a random fault with probability
        ``rate`` (one of ``actions``), else ``ok``."""
        checked = [_check_action(a) for a in actions]
        with self._lock:
            self._faults = (rate, checked, random.Random(seed))

    def reset(self) -> None:
        """Forget everything recorded and the script."""
        with self._lock:
            self._script = deque()
            self.requests = 0
            self.attempts = 0
            self.recipients = 0
            self.duplicates = 0
            self.dropped = 0
            self.by_email: Counter[str] = Counter()
            self.by_delivery: Counter[str] = Counter()
            self._seen_ids = bytearray()  # copies per delivery id - _id_base, capped at 255
            self._id_base: int | None = None
            self._seen_emails: Counter[str] = Counter()
            self.bodies: list[dict[str, Any]] = []
            self.message_ids: list[str] = []
            self.log: list[tuple[str, int]] = []  # (action, personalizations) per attempt

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                "requests": self.requests,
                "attempts": self.attempts,
                "recipients": self.recipients,
                "duplicates": self.duplicates,
                "dropped": self.dropped,
            }
            if not self.counts_only:
                out["by_delivery"] = dict(self.by_delivery)
            return out

    def personalizations(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Every accepted (request body, personalization), in order (not counts-only)."""
        for body in list(self.bodies):
            for p in body["personalizations"]:
                yield body, p

    def rendered(self, email: str) -> list[tuple[str, str]]:
        """(text, html) of each accepted copy for ``email``, substitutions applied."""
        copies = []
        for body, p in self.personalizations():
            if any(t["email"] == email for t in p["to"]):
                parts = {c["type"]: c["value"] for c in body["content"]}
                subs = p.get("substitutions", {})
                copies.append(
                    (_substitute(parts["text/plain"], subs), _substitute(parts["text/html"], subs))
                )
        return copies

    # ----- called by the handler -----------------------------------------------

    def next_action(self) -> str:
        with self._lock:
            self.attempts += 1
            if self._script:
                return self._script.popleft()
            rate, actions, rng = self._faults
            if actions and rng.random() < rate:
                return rng.choice(actions)
            return "ok"

    def wait(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def idle(self) -> bool:
        """No mail send request is being handled right now (a ``slowok`` one included)."""
        with self._lock:
            return self._busy == 0

    def accept(self, raw: bytes, tos: int) -> tuple[int, dict[str, Any]]:
        """Record an accepted request with ``tos`` "to" keys; returns (status, error body)."""
        if self.counts_only:
            # A quote inside a JSON string is escaped, so these only match real keys.
            ids = _DELIVERY.findall(raw)
            if ids and tos == len(ids):
                self._count([(None, i.decode()) for i in ids], None)
                return 202, {}
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, _errors([(None, "Bad Request: the body is not JSON")])
        problems = _problems(body)
        if problems:
            return 400, _errors(problems)
        found, dropped = [], 0
        for p in body["personalizations"]:
            delivery = (p.get("custom_args") or {}).get("delivery_id")
            for kind in ("to", "cc", "bcc"):
                for t in p.get(kind) or ():
                    name = t.get("name") or ""
                    if ("," in name or ";" in name) and not name[0] == name[-1] == '"':
                        dropped += 1  # SendGrid reads "Smith" of "Smith, J" as the address
                    else:
                        found.append((t["email"], delivery))
        with self._lock:
            self.dropped += dropped
        self._count(found, None if self.counts_only else body)
        return 202, {}

    def _count(self, found: list[tuple[str | None, str | None]], body: Any) -> None:
        with self._lock:
            self.requests += 1
            self.recipients += len(found)
            if body is not None:
                self.bodies.append(body)
            for email, delivery in found:
                if not self.counts_only:
                    self.by_email[str(email)] += 1
                    if delivery is not None:
                        self.by_delivery[delivery] += 1
                n = int(delivery) if delivery is not None and delivery.isdigit() else -1
                if n >= 0 and self._id_base is None:
                    self._id_base = n
                i = n - (self._id_base or 0)
                if n >= 0 and 0 <= i < 50_000_000:  # ids of one send are close together
                    if i >= len(self._seen_ids):
                        self._seen_ids.extend(bytes(i + 1 - len(self._seen_ids) + 65536))
                    self.duplicates += self._seen_ids[i] > 0
                    self._seen_ids[i] = min(self._seen_ids[i] + 1, 255)
                else:
                    key = f"id:{n}" if n >= 0 else str(email).lower()
                    self.duplicates += self._seen_emails[key] > 0
                    self._seen_emails[key] += 1

    def new_message_id(self) -> str:
        message_id = f"{self._prefix}-{next(self._ids):08d}"
        with self._lock:
            self.message_ids.append(message_id)
        return message_id


def _substitute(text: str, subs: dict[str, str]) -> str:
    for key, value in subs.items():
        text = text.replace(key, value)
    return text


def _errors(items: list[tuple[str | None, str]]) -> dict[str, Any]:
    return {"errors": [{"field": f, "message": m, "help": None} for f, m in items]}


def _problems(body: Any) -> list[tuple[str | None, str]]:
    """What SendGrid itself answers 400 for (a few of its checks)."""
    if not isinstance(body, dict):
        return [(None, "Bad Request")]
    found: list[tuple[str | None, str]] = []
    if not (body.get("from") or {}).get("email"):
        found.append(("from.email", "The from object must be provided for every email send."))
    ps = body.get("personalizations")
    if not isinstance(ps, list) or not 1 <= len(ps) <= 1000:
        found.append(("personalizations", "Between 1 and 1000 personalizations are required."))
        ps = []
    if not body.get("content") and not body.get("template_id"):
        found.append(("content", "Unless a valid template_id is provided, content is required."))
    seen: set[str] = set()
    for i, p in enumerate(ps):
        if not p.get("to"):
            found.append((f"personalizations.{i}.to", "The to array is required."))
        for j, t in enumerate(p.get("to") or ()):
            email = str(t.get("email", ""))
            if "@" not in email:
                found.append((f"personalizations.{i}.to.{j}.email", "Invalid email address."))
            elif email.lower() in seen:
                found.append(
                    (f"personalizations.{i}.to.{j}.email", f"Duplicate recipient {email}.")
                )
            seen.add(email.lower())
    return found


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive when the client wants it
    server_version = "sendgrid-test/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    @property
    def recorder(self) -> SendGridServer:
        return self.server.recorder  # type: ignore[attr-defined,no-any-return]

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._reply(
            status,
            json.dumps(data).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        if self.path == "/stats":
            self._json(200, self.recorder.stats())
        elif self.path == SCOPES:
            if self.headers.get("Authorization") != f"Bearer {self.recorder.api_key}":
                self._json(401, _errors([(None, "authorization required")]))
            else:
                self._json(200, {"scopes": self.recorder.scopes})
        else:
            self._json(404, _errors([(None, "not found")]))

    def do_POST(self) -> None:
        server = self.recorder
        if self.path == "/reset":
            self._body()
            server.reset()
            self._json(200, {"reset": True})
        elif self.path == "/script":
            try:
                server.script(json.loads(self._body()))
            except (ValueError, TypeError) as exc:
                self._json(400, _errors([(None, str(exc))]))
            else:
                self._json(200, {"script": True})
        elif self.path == MAIL_SEND:
            with server._lock:
                server._busy += 1
            try:
                self._mail_send(server)
            finally:
                with server._lock:
                    server._busy -= 1
        else:
            self._body()
            self._json(404, _errors([(None, "not found")]))

    def _mail_send(self, server: SendGridServer) -> None:
        if self.headers.get("Authorization") != f"Bearer {server.api_key}":
            self._body()
            message = "The provided authorization grant is invalid, expired, or revoked"
            self._json(401, _errors([(None, message)]))
            return
        action = server.next_action()
        head, _, arg = action.partition(":")
        if head == "reset":  # unread body, so the personalizations are unknown (0)
            with server._lock:
                server.log.append((head, 0))
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        raw = self._body()
        size = raw.count(b'"to":')  # the personalizations, in compact JSON
        if server.max_body_bytes is not None and len(raw) > server.max_body_bytes:
            head = "413"
        with server._lock:
            server.log.append((head, size))
        if head in ("slow", "slowok"):
            server.wait(float(arg))
            if head == "slow":
                self.close_connection = True
                return
            head = "ok"
        if head == "drop":
            self.close_connection = True
        elif head == "acceptdrop":
            server.accept(raw, size)
            self.close_connection = True
        elif head == "ok":
            status, error = server.accept(raw, size)
            if status == 202:
                self._reply(202, headers={"X-Message-Id": server.new_message_id()})
            else:
                self._json(status, error)
        elif head in ("429", "429-reset"):
            wait = int(arg or 2)
            headers = {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0"}
            headers["X-RateLimit-Reset"] = str(int(time.time()) + wait)
            if head == "429":
                headers["Retry-After"] = str(wait)
            self._json(429, _errors([(None, "too many requests")]), headers)
        elif head == "413":
            page = b"<html><body><h1>413 Request Entity Too Large</h1></body></html>"
            self._reply(413, page, {"Content-Type": "text/html"})
        elif head == "400":
            fields = arg.split(",") if arg else [None]
            self._json(400, _errors([(f, "Does not contain a valid address.") for f in fields]))
        else:
            self._json(int(head), _errors([(None, f"error {head}")]))


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; print ``PORT n`` first and the stats last."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", default=DEFAULT_KEY, help="the API key to require")
    parser.add_argument("--counts-only", action="store_true", help="keep counts, no bodies")
    parser.add_argument("--faults", type=float, default=0.0, help="random fault rate (0-1)")
    parser.add_argument(
        "--fault-actions", default="429,500,503,reset", help="comma-separated fault actions"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random faults")
    args = parser.parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server = SendGridServer(
        api_key=args.key, host=args.host, port=args.port, counts_only=args.counts_only
    ).start()
    if args.faults:
        server.faults(args.faults, args.fault_actions.split(","), seed=args.seed)
    print(f"PORT {server.port}", flush=True)
    while not done.wait(0.5):
        pass
    server.stop()
    print(json.dumps(server.stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
