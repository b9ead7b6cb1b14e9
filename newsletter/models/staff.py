"""Staff accounts and API tokens: who may use the console and the API, in which role.

Passwords are stored only as argon2 hashes and API tokens only as SHA-256 digests;
``session_epoch`` grows when a password changes, which ends every session signed
before it.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from newsletter.models.core import Base, UTCDateTime, string_enum, utcnow


class StaffRole(enum.StrEnum):
    """What a member of staff may do (see ``newsletter.staff.access``)."""

    EDITOR = "editor"  # stories, editions, previews, test sends, send and schedule
    OPERATOR = "operator"  # delivery log, why, pause/resume/cancel, requeue; reads subscribers
    ADMIN = "admin"  # everything, staff and suppression changes too


class Staff(Base):
    """A member of staff who logs in to the console."""

    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    role: Mapped[StaffRole] = mapped_column(string_enum(StaffRole))
    password_hash: Mapped[str] = mapped_column(String(200))
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiToken(Base):
    """A bearer token for the JSON API, with its own role; revocable."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[StaffRole] = mapped_column(string_enum(StaffRole))
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the token
    prefix: Mapped[str] = mapped_column(String(12))  # its first characters, to tell them apart
    staff_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff.id", ondelete="CASCADE"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


__all__ = ["ApiToken", "Staff", "StaffRole"]
