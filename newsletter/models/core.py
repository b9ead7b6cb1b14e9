"""The base of the models: the declarative base, the UTC type, every status enum and
its transition table."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    DateTime,
    Enum,
    MetaData,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_key() -> str:
    """An opaque random identifier (used in signed tokens instead of ids)."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as UTC; returns aware UTC (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def string_enum(cls: type[enum.Enum], length: int = 16) -> Enum:
    # Stored as plain strings so SQLite and PostgreSQL behave the same and new
    # states need no ALTER TYPE.
    return Enum(
        cls,
        native_enum=False,
        length=length,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class SubscriptionStatus(enum.StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"


class SuppressionReason(enum.StrEnum):
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"
    FORGOTTEN = "forgotten"
    MANUAL = "manual"


class StoryOrigin(enum.StrEnum):
    FEED = "feed"
    EDITOR = "editor"


class EditionStatus(enum.StrEnum):
    BUILT = "built"
    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    CANCELLED = "cancelled"
    HELD = "held"  # stopped for editorial review (or by a failed pre-send check)


class EditionKind(enum.StrEnum):
    REGULAR = "regular"  # the scheduled issue: one per newsletter and date
    SPECIAL = "special"  # a one-off (breaking news) from a file: any number per date


class DeliveryStatus(enum.StrEnum):
    """Where one (edition, subscriber) row stands; see ``newsletter/delivery/ledger.py``."""

    QUEUED = "queued"
    SENDING = "sending"  # claimed by a runner, in the provider's hands
    SENT = "sent"  # the provider accepted it
    FAILED = "failed"  # not delivered; more attempts will not help (``failure`` says why)
    RETRY = "retry"  # a passing fault: claimed again after ``not_before``
    UNCERTAIN = "uncertain"  # may have been accepted; we cannot know
    CANCELLED = "cancelled"
    # What the provider reports after accepting it (the events wing moves these,
    # by precedence: see EVENT_RANK).
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    DROPPED = "dropped"
    COMPLAINED = "complained"


class DeliveryFailure(enum.StrEnum):
    """Why a delivery failed: only ``recipient`` is that reader's own fault."""

    RECIPIENT = "recipient"  # refused for this address alone (400 naming it, SMTP 5xx)
    EXPIRED = "expired"  # its retry window closed (or the attempts cap was reached)
    STOPPED = "stopped"  # the send stopped: every batch failed alike (the message, the account)


EDITION_TRANSITIONS: dict[EditionStatus, set[EditionStatus]] = {
    EditionStatus.BUILT: {EditionStatus.SENDING, EditionStatus.CANCELLED, EditionStatus.HELD},
    EditionStatus.HELD: {EditionStatus.BUILT, EditionStatus.CANCELLED},
    EditionStatus.SENDING: {EditionStatus.SENT, EditionStatus.PAUSED, EditionStatus.CANCELLED},
    EditionStatus.PAUSED: {EditionStatus.SENDING, EditionStatus.CANCELLED},
    EditionStatus.SENT: {EditionStatus.SENDING},  # a resend of retried/uncertain rows
    EditionStatus.CANCELLED: set(),
}

SUBSCRIPTION_TRANSITIONS: dict[SubscriptionStatus, set[SubscriptionStatus]] = {
    SubscriptionStatus.PENDING: {SubscriptionStatus.CONFIRMED, SubscriptionStatus.UNSUBSCRIBED},
    SubscriptionStatus.CONFIRMED: {SubscriptionStatus.UNSUBSCRIBED},
    SubscriptionStatus.UNSUBSCRIBED: {SubscriptionStatus.PENDING, SubscriptionStatus.CONFIRMED},
}

#: After the hand-off, a delivery moves only up this ladder, whatever order the
#: provider's events arrive in: a bounce, a drop or a complaint wins over delivered,
#: a click over an open; nothing ever moves it back.
EVENT_RANK: dict[DeliveryStatus, int] = {
    DeliveryStatus.SENT: 1,
    DeliveryStatus.DEFERRED: 2,
    DeliveryStatus.DELIVERED: 3,
    DeliveryStatus.OPENED: 4,
    DeliveryStatus.CLICKED: 5,
    DeliveryStatus.BOUNCED: 6,
    DeliveryStatus.DROPPED: 6,
    DeliveryStatus.COMPLAINED: 7,
}

# Delivery rows move in bulk (UPDATE ... WHERE status IN ...); the ledger in
# newsletter/delivery/ledger.py takes every WHERE clause from this table.
DELIVERY_TRANSITIONS: dict[DeliveryStatus, set[DeliveryStatus]] = {
    DeliveryStatus.QUEUED: {DeliveryStatus.SENDING, DeliveryStatus.CANCELLED},
    DeliveryStatus.RETRY: {
        DeliveryStatus.SENDING,
        DeliveryStatus.CANCELLED,
        DeliveryStatus.QUEUED,  # an operator's requeue: a fresh retry window
        DeliveryStatus.FAILED,  # its retry window closed while it waited
    },
    DeliveryStatus.SENDING: {
        DeliveryStatus.SENT,
        DeliveryStatus.FAILED,
        DeliveryStatus.RETRY,
        DeliveryStatus.UNCERTAIN,
        DeliveryStatus.QUEUED,  # handed back untouched: the provider took none of it
    },
    DeliveryStatus.UNCERTAIN: {DeliveryStatus.QUEUED, DeliveryStatus.CANCELLED},
    **{
        old: {new for new, rank in EVENT_RANK.items() if rank > EVENT_RANK[old]}
        for old in EVENT_RANK
    },
    DeliveryStatus.FAILED: {DeliveryStatus.QUEUED},  # an operator's requeue
    DeliveryStatus.CANCELLED: set(),
}

#: Statuses at or after the provider's acceptance.
ACCEPTED = tuple(EVENT_RANK)


__all__ = [
    "utcnow",
    "new_key",
    "UTCDateTime",
    "NAMING",
    "Base",
    "string_enum",
    "SubscriptionStatus",
    "SuppressionReason",
    "StoryOrigin",
    "EditionStatus",
    "EditionKind",
    "DeliveryStatus",
    "DeliveryFailure",
    "EDITION_TRANSITIONS",
    "SUBSCRIPTION_TRANSITIONS",
    "DELIVERY_TRANSITIONS",
    "EVENT_RANK",
    "ACCEPTED",
]
