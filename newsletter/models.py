"""Database tables (SQLAlchemy 2.x typed mappings) and their status enums.

Statuses change only through the transition functions here (``transition``), which
refuse moves the state machine does not allow. Uniqueness that the service relies on
("never twice") is enforced by the database: one subscription per (subscriber,
newsletter), one edition per (newsletter, date), one delivery per (edition, subscriber).
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from newsletter.errors import StateError


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


def _enum(cls: type[enum.Enum], length: int = 16) -> Enum:
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
    # What the provider reports after accepting it (the events wing moves these).
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
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
    DeliveryStatus.SENT: {
        DeliveryStatus.DEFERRED,
        DeliveryStatus.DELIVERED,
        DeliveryStatus.BOUNCED,
        DeliveryStatus.COMPLAINED,
    },
    DeliveryStatus.DEFERRED: {
        DeliveryStatus.DELIVERED,
        DeliveryStatus.BOUNCED,
        DeliveryStatus.COMPLAINED,
    },
    DeliveryStatus.DELIVERED: {DeliveryStatus.BOUNCED, DeliveryStatus.COMPLAINED},
    DeliveryStatus.BOUNCED: {DeliveryStatus.COMPLAINED},
    DeliveryStatus.COMPLAINED: set(),
    DeliveryStatus.FAILED: {DeliveryStatus.QUEUED},  # an operator's requeue
    DeliveryStatus.CANCELLED: set(),
}

#: Statuses at or after the provider's acceptance.
ACCEPTED = (
    DeliveryStatus.SENT,
    DeliveryStatus.DEFERRED,
    DeliveryStatus.DELIVERED,
    DeliveryStatus.BOUNCED,
    DeliveryStatus.COMPLAINED,
)


class Subscriber(Base):
    """A person, identified by their normalised email address."""

    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key: Mapped[str] = mapped_column(String(32), unique=True, default=new_key)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    subscriptions: Mapped[list[Subscription]] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan"
    )


class Subscription(Base):
    """A subscriber's membership of one newsletter."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "newsletter"),
        Index("ix_subscriptions_newsletter_status", "newsletter", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    newsletter: Mapped[str] = mapped_column(String(64))
    status: Mapped[SubscriptionStatus] = mapped_column(_enum(SubscriptionStatus))
    source: Mapped[str] = mapped_column(String(64), default="cli")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    subscriber: Mapped[Subscriber] = relationship(back_populates="subscriptions")


class Suppression(Base):
    """An address that must never be mailed (bounced, complained, left, forgotten).

    ``email_hash`` (SHA-256 of the normalised address) is always set and unique, so a
    forgotten person's entry keeps no address but still blocks re-adding them.
    """

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True, index=True)
    reason: Mapped[SuppressionReason] = mapped_column(_enum(SuppressionReason))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Story(Base):
    """One story available to a newsletter, from a feed or added by an editor."""

    __tablename__ = "stories"
    __table_args__ = (
        UniqueConstraint("newsletter", "url"),
        UniqueConstraint("newsletter", "guid"),
        Index("ix_stories_newsletter_published", "newsletter", "published_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    newsletter: Mapped[str] = mapped_column(String(64))
    guid: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    url: Mapped[str] = mapped_column(String(2000))
    title: Mapped[str] = mapped_column(String(500))
    summary: Mapped[str] = mapped_column(Text, default="")
    kicker: Mapped[str] = mapped_column(String(100), default="")
    source: Mapped[str] = mapped_column(String(300), default="")
    origin: Mapped[StoryOrigin] = mapped_column(_enum(StoryOrigin), default=StoryOrigin.FEED)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)


class Edition(Base):
    """One issue of a newsletter for one date, with its frozen stories and content."""

    __tablename__ = "editions"
    __table_args__ = (
        # One regular edition per newsletter and date; special editions are unlimited.
        Index(
            "uq_editions_newsletter_issue_date",
            "newsletter",
            "issue_date",
            unique=True,
            sqlite_where=sql_text("kind = 'regular'"),
            postgresql_where=sql_text("kind = 'regular'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    newsletter: Mapped[str] = mapped_column(String(64))
    issue_date: Mapped[date] = mapped_column(Date)
    kind: Mapped[EditionKind] = mapped_column(
        _enum(EditionKind), default=EditionKind.REGULAR, server_default=EditionKind.REGULAR.value
    )
    status: Mapped[EditionStatus] = mapped_column(_enum(EditionStatus), default=EditionStatus.BUILT)
    subject: Mapped[str] = mapped_column(String(500), default="")
    # Rendered once when sending starts, so every recipient (and a resumed send)
    # gets exactly the same content.
    html: Mapped[str | None] = mapped_column(Text, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    send_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    send_finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Why the edition is held or paused: the hold's reason; for a pause, None when
    # staff paused it, else the send's own ("outage: ..."), which the scheduler lifts.
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    items: Mapped[list[EditionStory]] = relationship(
        back_populates="edition",
        cascade="all, delete-orphan",
        order_by="EditionStory.position",
    )


class EditionStory(Base):
    """A story frozen into an edition at a position (a copy, so later edits don't leak in)."""

    __tablename__ = "edition_stories"
    __table_args__ = (UniqueConstraint("edition_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    edition_id: Mapped[int] = mapped_column(ForeignKey("editions.id", ondelete="CASCADE"))
    story_id: Mapped[int | None] = mapped_column(
        ForeignKey("stories.id", ondelete="SET NULL"), nullable=True
    )
    position: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(500))
    url: Mapped[str] = mapped_column(String(2000))
    summary: Mapped[str] = mapped_column(Text, default="")
    kicker: Mapped[str] = mapped_column(String(100), default="")
    source: Mapped[str] = mapped_column(String(300), default="")
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    edition: Mapped[Edition] = relationship(back_populates="items")


class Delivery(Base):
    """The ledger: one row per (edition, subscriber), created before anything is sent."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("edition_id", "subscriber_id"),
        Index("ix_deliveries_edition_status", "edition_id", "status"),
        Index("ix_deliveries_email", "email"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    edition_id: Mapped[int] = mapped_column(ForeignKey("editions.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), nullable=True
    )
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200), default="")
    subscriber_key: Mapped[str] = mapped_column(String(32))
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[DeliveryStatus] = mapped_column(
        _enum(DeliveryStatus), default=DeliveryStatus.QUEUED
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    provider: Mapped[str | None] = mapped_column(String(32), nullable=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    failure: Mapped[DeliveryFailure | None] = mapped_column(_enum(DeliveryFailure), nullable=True)
    # The runner holding the claim (see Runner), so a dead one's claims are found at once.
    runner_id: Mapped[str | None] = mapped_column(String(120), nullable=True)
    # Transient faults are retried until this instant (delivery.retry_window).
    retry_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SendEvent(Base):
    """Operator-visible history of a delivery: provider responses, retries, bounces."""

    __tablename__ = "delivery_events"
    __table_args__ = (Index("ix_delivery_events_delivery", "delivery_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Runner(Base):
    """A process sending deliveries: it heartbeats, and its claims name it."""

    __tablename__ = "runners"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SendState(Base):
    """The state of one edition's send that every runner shares, on any machine.

    Which provider is in use (failover), how many batches in a row failed
    transiently and since when (the outage pause), how many failed outright for
    one reason (the failure guard), and why the send stopped, if it did.
    """

    __tablename__ = "send_states"

    edition_id: Mapped[int] = mapped_column(
        ForeignKey("editions.id", ondelete="CASCADE"), primary_key=True
    )
    provider: Mapped[str] = mapped_column(String(32))
    transient_batches: Mapped[int] = mapped_column(Integer, default=0)
    transient_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    failing_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    failing_batches: Mapped[int] = mapped_column(Integer, default=0)
    stopped: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Pacing(Base):
    """A shared rate limit (GCRA): the theoretical arrival time of the next message."""

    __tablename__ = "pacing"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    tat: Mapped[datetime] = mapped_column(UTCDateTime())


def transition_edition(edition: Edition, new: EditionStatus) -> None:
    """Move an edition to ``new``; StateError if the state machine forbids it."""
    if new not in EDITION_TRANSITIONS[edition.status]:
        raise StateError(
            f"edition {edition.id} is {edition.status.value}; cannot become {new}",
            code=f"edition.{edition.status.value}",
            edition_id=edition.id,
            status=edition.status.value,
        )
    edition.status = new


def transition_subscription(sub: Subscription, new: SubscriptionStatus) -> None:
    """Move a subscription to ``new``, stamping confirmed/unsubscribed times."""
    if new == sub.status:
        return
    if new not in SUBSCRIPTION_TRANSITIONS[sub.status]:
        raise StateError(
            f"subscription is {sub.status.value}; cannot become {new}",
            code=f"subscription.{sub.status.value}",
        )
    sub.status = new
    if new is SubscriptionStatus.CONFIRMED:
        sub.confirmed_at = utcnow()
        sub.unsubscribed_at = None
    elif new is SubscriptionStatus.UNSUBSCRIBED:
        sub.unsubscribed_at = utcnow()


def delivery_sources(new: DeliveryStatus) -> list[DeliveryStatus]:
    """Statuses a delivery may move to ``new`` from (for bulk UPDATE ... WHERE)."""
    return [old for old, targets in DELIVERY_TRANSITIONS.items() if new in targets]


# ----- scheduling: job run history, the single-runner lease, scheduled sends ------


class JobKind(enum.StrEnum):
    """What a scheduler job run does (``job_runs.kind``, and the stored jobs' argument)."""

    BUILD = "build"  # a newsletter's regular issue: fetch, build, check, schedule its send
    DISPATCH = "dispatch"  # the every-minute tick: start due sends, advance started ones
    SEND = "send"  # start one scheduled send
    WAVE = "wave"  # send the due waves of a started send
    RESUME = "resume"  # resume a send its provider's outage paused


class SendSource(enum.StrEnum):
    """Who asked for a scheduled send."""

    SCHEDULE = "schedule"  # the newsletter's own cron schedule
    AT = "at"  # staff, for a given time (``send --at``)
    REVIEW = "review"  # `newsletter run` with a review window: it goes out afterwards


class JobOutcome(enum.StrEnum):
    RUNNING = "running"
    OK = "ok"
    SKIPPED = "skipped"  # past its staleness deadline, or missed its run time
    HELD = "held"  # the edition is held for review (or failed its pre-send checks)
    FAILED = "failed"  # the job raised; ``error`` holds the traceback
    INTERRUPTED = "interrupted"  # its scheduler died mid-run


class ScheduledSendStatus(enum.StrEnum):
    PENDING = "pending"
    PAUSED = "paused"
    STARTED = "started"  # audience frozen; the dispatcher sends what is due
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"


SCHEDULED_SEND_TRANSITIONS: dict[ScheduledSendStatus, set[ScheduledSendStatus]] = {
    ScheduledSendStatus.PENDING: {
        ScheduledSendStatus.STARTED,
        ScheduledSendStatus.PAUSED,
        ScheduledSendStatus.SKIPPED,
        ScheduledSendStatus.FAILED,
        ScheduledSendStatus.CANCELLED,
    },
    ScheduledSendStatus.PAUSED: {ScheduledSendStatus.PENDING, ScheduledSendStatus.CANCELLED},
    ScheduledSendStatus.STARTED: {
        ScheduledSendStatus.DONE,
        ScheduledSendStatus.FAILED,
        ScheduledSendStatus.CANCELLED,
    },
    ScheduledSendStatus.DONE: set(),
    ScheduledSendStatus.SKIPPED: set(),
    ScheduledSendStatus.FAILED: set(),
    ScheduledSendStatus.CANCELLED: set(),
}


class JobRun(Base):
    """One run of a scheduler job: when, what came of it, counts, and any traceback."""

    __tablename__ = "job_runs"
    __table_args__ = (
        Index("ix_job_runs_job_scheduled", "job_id", "scheduled_for"),
        Index("ix_job_runs_started", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(100))
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, 32))
    newsletter: Mapped[str | None] = mapped_column(String(64), nullable=True)
    edition_id: Mapped[int | None] = mapped_column(
        ForeignKey("editions.id", ondelete="SET NULL"), nullable=True
    )
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    outcome: Mapped[JobOutcome] = mapped_column(_enum(JobOutcome), default=JobOutcome.RUNNING)
    holder: Mapped[str] = mapped_column(String(200), default="")
    counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    detail: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class SchedulerLease(Base):
    """The single-runner lock: only ``holder`` runs jobs until ``expires_at``."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ScheduledSend(Base):
    """A send the scheduler starts at ``send_at``: a regular issue or a staff one-off.

    ``edition_id`` is None for a one-off that builds the newsletter's edition when it
    fires. ``local_time`` (HH:MM) makes the send go out in per-timezone waves.
    """

    __tablename__ = "scheduled_sends"
    __table_args__ = (Index("ix_scheduled_sends_status_send_at", "status", "send_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    newsletter: Mapped[str] = mapped_column(String(64))
    edition_id: Mapped[int | None] = mapped_column(
        ForeignKey("editions.id", ondelete="CASCADE"), nullable=True
    )
    issue_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    source: Mapped[SendSource] = mapped_column(_enum(SendSource))
    send_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    local_time: Mapped[str | None] = mapped_column(String(5), nullable=True)
    status: Mapped[ScheduledSendStatus] = mapped_column(
        _enum(ScheduledSendStatus), default=ScheduledSendStatus.PENDING
    )
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


def transition_scheduled_send(send: ScheduledSend, new: ScheduledSendStatus) -> None:
    """Move a scheduled send to ``new``; StateError if the state machine forbids it."""
    if new not in SCHEDULED_SEND_TRANSITIONS[send.status]:
        raise StateError(
            f"scheduled send {send.id} is {send.status.value}; cannot become {new}",
            code=f"scheduled_send.{send.status.value}",
            send_id=send.id,
        )
    send.status = new
