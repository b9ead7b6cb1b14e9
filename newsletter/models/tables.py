"""The tables of subscribers, stories, editions and the delivery ledger, and the
transition functions that move their states."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from newsletter.errors import StateError
from newsletter.models.core import (
    DELIVERY_TRANSITIONS,
    EDITION_TRANSITIONS,
    SUBSCRIPTION_TRANSITIONS,
    Base,
    DeliveryFailure,
    DeliveryStatus,
    EditionKind,
    EditionStatus,
    StoryOrigin,
    SubscriptionStatus,
    SuppressionReason,
    UTCDateTime,
    new_key,
    string_enum,
    utcnow,
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
    status: Mapped[SubscriptionStatus] = mapped_column(string_enum(SubscriptionStatus))
    source: Mapped[str] = mapped_column(String(64), default="cli")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # How they left: one-click, preferences, mailto, cli, import, event (see events).
    unsubscribed_via: Mapped[str | None] = mapped_column(String(16), nullable=True)

    subscriber: Mapped[Subscriber] = relationship(back_populates="subscriptions")


class Signup(Base):
    """A sign-up on the web, waiting for its confirmation link to be used.

    What the visitor asked for (newsletters, name, timezone) is kept here, not in
    the confirmation email (no visitor text reaches a stranger's inbox) and not on
    the subscriber (a stranger must not change a subscriber's name). Confirming
    applies it.
    """

    __tablename__ = "signups"
    __table_args__ = (Index("ix_signups_subscriber_created", "subscriber_id", "created_at"),)

    key: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_key)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    newsletters: Mapped[list[str]] = mapped_column(JSON, default=list)
    name: Mapped[str] = mapped_column(String(200), default="")
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    mailed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RateLimit(Base):
    """A fixed-window counter of the web forms' rate limits, shared by every web node."""

    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Suppression(Base):
    """An address that must never be mailed (bounced, complained, left, forgotten).

    ``email_hash`` (SHA-256 of the normalised address) is always set and unique, so a
    forgotten person's entry keeps no address but still blocks re-adding them.
    """

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True, index=True)
    reason: Mapped[SuppressionReason] = mapped_column(string_enum(SuppressionReason))
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
    origin: Mapped[StoryOrigin] = mapped_column(string_enum(StoryOrigin), default=StoryOrigin.FEED)
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
        string_enum(EditionKind),
        default=EditionKind.REGULAR,
        server_default=EditionKind.REGULAR.value,
    )
    status: Mapped[EditionStatus] = mapped_column(
        string_enum(EditionStatus), default=EditionStatus.BUILT
    )
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
        Index("ix_deliveries_edition_status_id", "edition_id", "status", "id"),
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
        string_enum(DeliveryStatus), default=DeliveryStatus.QUEUED
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    provider: Mapped[str | None] = mapped_column(String(32), nullable=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    failure: Mapped[DeliveryFailure | None] = mapped_column(
        string_enum(DeliveryFailure), nullable=True
    )
    # The runner holding the claim (see Runner), so a dead one's claims are found at once.
    runner_id: Mapped[str | None] = mapped_column(String(120), nullable=True)
    # Transient faults are retried until this instant (delivery.retry_window).
    retry_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SendEvent(Base):
    """What happened to a delivery after the hand-off: provider events (processed,
    delivered, bounce, open, click, spam report...), bounce mail, mailto unsubscribes.

    Each is stored once (``provider_event_id``, e.g. SendGrid's ``sg_event_id``); an
    event whose delivery is unknown is kept (``delivery_id`` None) and counted.
    """

    __tablename__ = "delivery_events"
    __table_args__ = (
        Index("ix_delivery_events_delivery", "delivery_id"),
        Index("ix_delivery_events_email_kind", "email", "kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(  # sendgrid, mail, smtp
        String(16), default="provider", server_default="provider"
    )
    provider_event_id: Mapped[str | None] = mapped_column(String(100), nullable=True, unique=True)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    url: Mapped[str | None] = mapped_column(String(2000), nullable=True)  # a click's link
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Unsuppression(Base):
    """Staff lifted a suppression: when, why, and what it had been (for the timeline)."""

    __tablename__ = "unsuppressions"
    __table_args__ = (Index("ix_unsuppressions_email_hash", "email_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64))
    was_reason: Mapped[str] = mapped_column(String(16))
    was_detail: Mapped[str] = mapped_column(Text, default="")
    suppressed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(Text)
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


__all__ = [
    "Unsuppression",
    "RateLimit",
    "Signup",
    "Subscriber",
    "Subscription",
    "Suppression",
    "Story",
    "Edition",
    "EditionStory",
    "Delivery",
    "SendEvent",
    "Runner",
    "SendState",
    "Pacing",
    "transition_edition",
    "transition_subscription",
    "delivery_sources",
]
