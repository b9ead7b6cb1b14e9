"""Signed, opaque tokens for unsubscribe, preference and confirmation links.

A token carries the subscriber's random ``key`` (never their id or address) and the
newsletter slug ("" = every newsletter), signed with the service secret by
itsdangerous, so a link can be acted on without cookies or login and cannot be
forged or altered. The unsubscribe and preferences links of one email share a
token (the action is the URL path: ``/unsubscribe/<t>``, ``/preferences/<t>``):
both grant the same control over the same subscription, and one signature per
recipient keeps a million-recipient send fast. Confirmation tokens are separate.
"""

from __future__ import annotations

import hashlib
import hmac
from base64 import urlsafe_b64encode
from dataclasses import dataclass
from functools import cache
from typing import Literal

from itsdangerous import BadSignature, SignatureExpired, Signer, TimestampSigner
from itsdangerous.encoding import base64_encode, want_bytes

from newsletter.errors import InputError

Purpose = Literal["unsubscribe", "preferences", "confirm", "staff-session"]
_SALT: dict[str, str] = {
    "unsubscribe": "newsletter.subscription",
    "preferences": "newsletter.subscription",
    "confirm": "newsletter.confirm",
    "staff-session": "newsletter.staff-session",
}


@dataclass(frozen=True)
class TokenData:
    """What a valid token says: whose it is and for which newsletter ("" = all)."""

    purpose: Purpose
    subscriber_key: str
    newsletter: str


class _Signer(Signer):
    """An itsdangerous HMAC-SHA256 Signer that derives its key once, not per signature.

    Signing is on the hot path of a send (one token per recipient); the format and
    verification are itsdangerous's own.
    """

    def __init__(self, secret: str, salt: str) -> None:
        super().__init__(secret, salt=salt, digest_method=hashlib.sha256)
        self._key = super().derive_key()

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        return self._key if secret_key is None else super().derive_key(secret_key)

    def get_signature(self, value: str | bytes) -> bytes:
        return base64_encode(hmac.digest(self._key, want_bytes(value), "sha256"))

    def sign(self, value: str | bytes) -> bytes:
        # Signer.sign's own output (value + "." + unpadded urlsafe base64 of the
        # HMAC), in one step: it runs once per recipient of a send.
        raw = want_bytes(value)
        mac = urlsafe_b64encode(hmac.digest(self._key, raw, "sha256")).rstrip(b"=")
        return raw + self.sep + mac


@cache
def _signer(secret: str, salt: str) -> _Signer:
    return _Signer(secret, salt)


def signer(secret: str, purpose: Purpose) -> Signer:
    """The (cached) signer behind :func:`make_token`, for signing many tokens fast."""
    return _signer(secret, _SALT[purpose])


def make_token(secret: str, *, purpose: Purpose, subscriber_key: str, newsletter: str) -> str:
    """Sign ``subscriber_key:newsletter`` for ``purpose``; URL-safe, ~80 characters."""
    value = f"{subscriber_key}:{newsletter}"
    return signer(secret, purpose).sign(value).decode("ascii")


def read_token(secret: str, token: str, *, purpose: Purpose) -> TokenData:
    """Verify a token; InputError if it is forged, altered or for another purpose."""
    try:
        value = _signer(secret, _SALT[purpose]).unsign(token).decode("ascii")
    except (BadSignature, UnicodeError):
        raise InputError(
            f"invalid or tampered {purpose} token", code="token.invalid", purpose=purpose
        ) from None
    key, sep, newsletter = value.partition(":")
    if not sep or not key:
        raise InputError(f"invalid {purpose} token", code="token.invalid", purpose=purpose)
    return TokenData(purpose=purpose, subscriber_key=key, newsletter=newsletter)


def make_timed_token(secret: str, *, purpose: Purpose, value: str) -> str:
    """Sign ``value`` with the time it was signed, for a link that expires (confirm)."""
    signer = TimestampSigner(secret, salt=_SALT[purpose], digest_method=hashlib.sha256)
    return signer.sign(value).decode("ascii")


def read_timed_token(secret: str, token: str, *, purpose: Purpose, max_age: int) -> str:
    """The value of a timed token; InputError if forged, altered, expired (code
    ``token.expired``) or for another purpose."""
    signer = TimestampSigner(secret, salt=_SALT[purpose], digest_method=hashlib.sha256)
    try:
        return signer.unsign(token, max_age=int(max_age)).decode("ascii")
    except SignatureExpired:
        raise InputError(f"the {purpose} link has expired", code="token.expired") from None
    except (BadSignature, UnicodeError):
        raise InputError(
            f"invalid or tampered {purpose} token", code="token.invalid", purpose=purpose
        ) from None
