"""Signed, opaque tokens for unsubscribe and preference links.

A token carries the subscriber's random ``key`` (never their id or address) and
the newsletter slug, signed with the service secret (itsdangerous), so a link can
be acted on without cookies or login and cannot be forged or altered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from itsdangerous import BadData, URLSafeSerializer

from newsletter.errors import InputError

Purpose = Literal["unsubscribe", "preferences", "confirm"]


@dataclass(frozen=True)
class TokenData:
    """What a valid token says: whose it is and for which newsletter ("" = all)."""

    purpose: Purpose
    subscriber_key: str
    newsletter: str


def _serializer(secret: str, purpose: Purpose) -> URLSafeSerializer:
    return URLSafeSerializer(secret, salt=f"newsletter.{purpose}")


def make_token(secret: str, *, purpose: Purpose, subscriber_key: str, newsletter: str) -> str:
    """Sign ``(subscriber_key, newsletter)`` for ``purpose``; URL-safe."""
    return str(_serializer(secret, purpose).dumps([subscriber_key, newsletter]))


def read_token(secret: str, token: str, *, purpose: Purpose) -> TokenData:
    """Verify a token; InputError if it is forged, altered or for another purpose."""
    try:
        key, newsletter = _serializer(secret, purpose).loads(token)
    except (BadData, ValueError, TypeError):
        raise InputError(f"invalid or tampered {purpose} token") from None
    if not isinstance(key, str) or not isinstance(newsletter, str):
        raise InputError(f"invalid {purpose} token")
    return TokenData(purpose=purpose, subscriber_key=key, newsletter=newsletter)


def link(
    base_url: str, secret: str, *, purpose: Purpose, subscriber_key: str, newsletter: str
) -> str:
    """The absolute URL on the site for a token: ``{base}/{purpose}/{token}``."""
    token = make_token(
        secret, purpose=purpose, subscriber_key=subscriber_key, newsletter=newsletter
    )
    return f"{base_url}/{purpose}/{token}"
