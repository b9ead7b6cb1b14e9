"""A reader's own page, reached with the signed link in every email: which newsletters,
their name and timezone, leaving everything, their data, and erasure.

The link's token is the same as the unsubscribe link's (``newsletter.tokens``): it
grants control of one subscriber, proven by their mailbox, without a login.
Changes take effect for editions not yet frozen (a frozen audience is the ledger's).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.audience import subscribers
from newsletter.audience.subscribers import clean_name, normalise_timezone
from newsletter.audience.suppression import find_entry
from newsletter.config import Settings
from newsletter.errors import InputError, StateError
from newsletter.models import (
    Delivery,
    Edition,
    Signup,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    SuppressionReason,
    transition_subscription,
)
from newsletter.tokens import read_token

VIA = "preferences"


def reader(session: Session, *, settings: Settings, token: str) -> Subscriber:
    """The subscriber a preferences (or unsubscribe) token names.

    Raises InputError for a forged or altered token, and for one whose subscriber no
    longer exists (``token.unknown``: erased, say).
    """
    data = read_token(settings.signing_key, token, purpose="preferences")
    sub = session.scalars(
        select(Subscriber).where(Subscriber.key == data.subscriber_key)
    ).one_or_none()
    if sub is None:
        raise InputError("this link is no longer valid", code="token.unknown")
    return sub


@dataclass(frozen=True)
class Choice:
    slug: str
    name: str
    description: str
    subscribed: bool


@dataclass(frozen=True)
class Preferences:
    """What the preferences page shows."""

    email: str
    name: str
    timezone: str | None
    choices: tuple[Choice, ...]
    blocked: bool  # suppressed for a reason they cannot lift here (bounced, complained)


def preferences(session: Session, *, settings: Settings, token: str) -> Preferences:
    """The reader's current choices (every configured newsletter, on or off)."""
    sub = reader(session, settings=settings, token=token)
    status = {s.newsletter: s.status for s in sub.subscriptions}
    entry = find_entry(session, address=sub.email)
    choices = tuple(
        Choice(slug, nl.name, nl.description, status.get(slug) is SubscriptionStatus.CONFIRMED)
        for slug, nl in settings.newsletters.items()
    )
    blocked = entry is not None and entry.reason is not SuppressionReason.UNSUBSCRIBED
    return Preferences(sub.email, sub.name, sub.timezone, choices, blocked)


def save(
    session: Session,
    *,
    settings: Settings,
    token: str,
    chosen: Collection[str],
    name: str,
    timezone: str | None,
    now: datetime,
) -> Preferences:
    """Set which newsletters the reader gets, and their name and timezone.

    Turning one on confirms it at once (the link proves the mailbox) and lifts a
    suppression they made themselves (having left everything); a bounce or a
    complaint is not theirs to lift here (StateError ``subscriber.suppressed``).
    Raises InputError for an unknown newsletter, name or timezone.
    """
    sub = reader(session, settings=settings, token=token)
    wanted = set(subscribers.check_newsletters(settings, list(chosen)))
    sub.name = clean_name(name)
    sub.timezone = normalise_timezone(timezone) if timezone else None
    current = {s.newsletter: s for s in sub.subscriptions}
    entry = find_entry(session, address=sub.email)
    if wanted and entry is not None:
        if entry.reason is not SuppressionReason.UNSUBSCRIBED:
            raise StateError(
                "this address cannot be subscribed", code="subscriber.suppressed", email=sub.email
            )
        session.delete(entry)  # they left everything, and now choose to come back
    for slug in settings.newsletters:
        existing = current.get(slug)
        if slug in wanted:
            if existing is None:
                sub.subscriptions.append(
                    Subscription(
                        newsletter=slug,
                        status=SubscriptionStatus.CONFIRMED,
                        source=VIA,
                        created_at=now,
                        confirmed_at=now,
                    )
                )
            elif existing.status is not SubscriptionStatus.CONFIRMED:
                transition_subscription(existing, SubscriptionStatus.CONFIRMED)
                existing.unsubscribed_via = None
        elif existing is not None and existing.status is not SubscriptionStatus.UNSUBSCRIBED:
            subscribers.unsubscribe(session, email=sub.email, newsletter=slug, via=VIA)
    session.flush()
    return preferences(session, settings=settings, token=token)


def leave_everything(session: Session, *, settings: Settings, token: str) -> None:
    """Unsubscribe from every newsletter (and suppress the address: no mail at all)."""
    sub = reader(session, settings=settings, token=token)
    subscribers.unsubscribe(session, email=sub.email, newsletter=None, via=VIA)


def data(session: Session, *, settings: Settings, token: str) -> dict[str, Any]:
    """Everything held about the reader, as plain JSON-ready data."""
    sub = reader(session, settings=settings, token=token)
    rows = session.execute(
        select(Delivery, Edition.newsletter, Edition.issue_date)
        .join(Edition, Edition.id == Delivery.edition_id)
        .where(Delivery.subscriber_id == sub.id)
        .order_by(Delivery.id)
    )
    signups = session.scalars(select(Signup).where(Signup.subscriber_id == sub.id))
    entry = find_entry(session, address=sub.email)

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "email": sub.email,
        "name": sub.name,
        "timezone": sub.timezone,
        "created_at": when(sub.created_at),
        "suppressed": entry.reason.value if entry else None,
        "subscriptions": [
            {
                "newsletter": s.newsletter,
                "status": s.status.value,
                "source": s.source,
                "created_at": when(s.created_at),
                "confirmed_at": when(s.confirmed_at),
                "unsubscribed_at": when(s.unsubscribed_at),
                "unsubscribed_via": s.unsubscribed_via,
            }
            for s in sub.subscriptions
        ],
        "signups": [
            {
                "newsletters": s.newsletters,
                "created_at": when(s.created_at),
                "confirmed_at": when(s.confirmed_at),
            }
            for s in signups
        ],
        "deliveries": [
            {
                "edition_id": d.edition_id,
                "newsletter": newsletter,
                "issue_date": issue_date.isoformat(),
                "status": d.status.value,
                "sent_at": when(d.sent_at),
            }
            for d, newsletter, issue_date in rows
        ],
    }


def erase(session: Session, *, settings: Settings, token: str) -> None:
    """Erase the reader (``subscribers remove --forget``): only a hashed block stays."""
    sub = reader(session, settings=settings, token=token)
    subscribers.remove(session, email=sub.email, newsletter=None, forget=True)
