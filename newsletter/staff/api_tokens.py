"""Bearer tokens for the JSON API: created with a role and a name, stored only as a
SHA-256 digest (the token itself is shown once), revocable at once.

A token is 32 random bytes, URL-safe, prefixed ``nl_`` so a leaked one is easy to
recognise in a scan. Its ``last_used_at`` is written at most once a minute, so
reading the API does not turn every call into a write.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.errors import InputError, NotFoundError, StateError
from newsletter.models import ApiToken, StaffRole, utcnow

PREFIX = "nl_"
_TOUCH_EVERY = timedelta(minutes=1)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(
    session: Session, *, name: str, role: StaffRole, staff_id: int | None = None
) -> tuple[ApiToken, str]:
    """A new token named ``name``: its row and the token (shown once, never stored)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise InputError("a token needs a name of 1 to 100 characters", code="token.bad_name")
    if session.scalars(select(ApiToken).where(ApiToken.name == name)).first() is not None:
        raise StateError(f"there is already a token named {name!r}", code="token.exists")
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name, role=role, digest=_digest(token), prefix=token[:10], staff_id=staff_id
    )
    session.add(row)
    session.flush()
    return row, token


def list_tokens(session: Session) -> Sequence[ApiToken]:
    """Every token, newest first (revoked ones too, with when)."""
    return session.scalars(select(ApiToken).order_by(ApiToken.id.desc())).all()


def revoke(session: Session, *, name: str, now: datetime | None = None) -> ApiToken:
    """Revoke the token named ``name``; it stops working on its next request."""
    row = session.scalars(select(ApiToken).where(ApiToken.name == name)).first()
    if row is None:
        raise NotFoundError(f"no token named {name!r}", code="token.not_found", name=name)
    if row.revoked_at is None:
        row.revoked_at = now or utcnow()
    session.flush()
    return row


def authenticate(session: Session, *, token: str, now: datetime) -> ApiToken | None:
    """The live token ``token`` is, or None (unknown, revoked, malformed)."""
    if not token.startswith(PREFIX) or len(token) > 100:
        return None
    digest = _digest(token)
    row = session.scalars(select(ApiToken).where(ApiToken.digest == digest)).first()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.digest, digest):
        return None
    if row.last_used_at is None or now - row.last_used_at >= _TOUCH_EVERY:
        row.last_used_at = now
        session.flush()
    return row
