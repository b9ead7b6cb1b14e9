"""What every page gets: security headers, a body size limit, CSRF tokens, the
client's address, and an access log that never shows a token.

- Headers: a Content-Security-Policy with no ``unsafe-inline`` (styles and scripts
  come from /static only), ``frame-ancestors 'none'``, ``nosniff``, and
  ``Referrer-Policy: no-referrer`` so a token in a URL never leaks to another site.
- CSRF: a random value in an HttpOnly, SameSite=Lax cookie, and its signature in
  each form (double submit). Every state-changing form checks it, except the
  RFC 8058 one-click POST, which mail providers send with no cookie and no token.
- Request bodies over ``web.max_body_bytes`` get 413 before they are read whole.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets

from itsdangerous import BadSignature, Signer
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_COOKIE = "nl_csrf"
CSRF_FIELD = "csrf"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
_TOKEN_PATH = re.compile(r"/(unsubscribe|preferences|confirm)/[^/?#\s\"]+")


def redact(text: str) -> str:
    """A path or log line with every token in it replaced by ``[token]``."""
    return _TOKEN_PATH.sub(r"/\1/[token]", text)


class RedactTokens(logging.Filter):
    """Keeps tokens out of the access log (uvicorn logs each request's path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


class SecurityHeaders:
    """ASGI middleware adding :data:`HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.raw = [(k.encode(), v.encode()) for k, v in HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in self.raw if k not in names
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


class BodyLimit:
    """ASGI middleware refusing request bodies over ``limit`` bytes with 413
    (``larger`` allows more under some path prefixes: the webhook's batches)."""

    def __init__(self, app: ASGIApp, *, limit: int, larger: dict[str, int] | None = None) -> None:
        self.app, self.limit, self.larger = app, limit, larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        limit = next((n for p, n in self.larger.items() if path.startswith(p)), self.limit)
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _too_large(scope, receive, send)


class _TooLarge(Exception):
    pass


async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
    response = PlainTextResponse("Request too large.", status_code=413)
    await response(scope, receive, send)


class CSRF:
    """Issue and check the double-submit CSRF token of a request."""

    def __init__(self, secret: str, *, secure: bool = False) -> None:
        self.signer = Signer(secret, salt="newsletter.csrf")
        # Behind a TLS proxy the request itself is plain HTTP: the public URL says.
        self.secure = secure

    def cookie(self, request: Request) -> str:
        """This visitor's CSRF cookie value (a new one if they have none yet)."""
        value = request.cookies.get(CSRF_COOKIE, "")
        if not re.fullmatch(r"[0-9a-f]{32}", value):
            value = request.state.__dict__.setdefault("csrf_new", secrets.token_hex(16))
        return value

    def field(self, request: Request) -> str:
        """The value a form carries."""
        return self.signer.sign(self.cookie(request)).decode()

    def valid(self, request: Request, submitted: str | None) -> bool:
        """Whether the form's value belongs to the visitor's cookie."""
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not cookie or not submitted:
            return False
        try:
            value = self.signer.unsign(submitted).decode()
        except (BadSignature, UnicodeError):
            return False
        return hmac.compare_digest(value, cookie)

    def attach(self, request: Request, response: Response) -> None:
        """Set the cookie when this request minted a new value."""
        new = request.state.__dict__.get("csrf_new")
        if new:
            response.set_cookie(
                CSRF_COOKIE,
                new,
                httponly=True,
                samesite="lax",
                secure=self.secure or request.url.scheme == "https",
                path="/",
            )


def client_address(request: Request, *, trust_forwarded_for: bool) -> str:
    """The visitor's address: the socket's, or (behind a trusted proxy) the first
    address of X-Forwarded-For."""
    if trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for", "")
        first = forwarded.split(",", 1)[0].strip()
        if first:
            return first[:64]
    return request.client.host if request.client else "unknown"


def no_store(response: Response) -> Response:
    """Pages with a token's content (preferences, data) are never cached."""
    response.headers["cache-control"] = "no-store"
    return response
