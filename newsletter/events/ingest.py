"""What happened after the hand-off: store each event once, move its delivery up the
ladder, and suppress what must not be mailed again.

Every source (SendGrid's webhook, bounce mail, the unsubscribe mailbox, our own
SMTP rejections) turns what it learned into :class:`Event` values and hands a batch
to :func:`ingest`, in one transaction:

- each event is stored once (by its provider id; a repeat is counted, not stored);
- an event whose delivery cannot be found is kept (``delivery_id`` None) and counted;
- the delivery's status moves by precedence, never back (``models.EVENT_RANK``);
- a hard bounce, a drop for a bad or bounced address, a spam report or an
  unsubscribe suppresses the address (a list-level unsubscribe leaves that
  newsletter only), with the reason and the event, and cancels what it has not yet
  been sent; soft bounces suppress once ``events.soft_bounce_limit`` of them fall
  within ``events.soft_bounce_days``;
- opens and clicks are stored for newsletters with ``tracking`` on, and only there.
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.audience import subscribers, suppression
from newsletter.audience.addresses import normalise_email
from newsletter.config import Settings
from newsletter.db import driver_time, executemany, select_in
from newsletter.delivery import ledger
from newsletter.errors import InputError, NotFoundError
from newsletter.models import (
    EVENT_RANK,
    Delivery,
    DeliveryStatus,
    SendEvent,
    SuppressionReason,
    utcnow,
)


class Kind(enum.StrEnum):
    """What an event says (SendGrid's names, which the other sources reuse)."""

    PROCESSED = "processed"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCE = "bounce"  # hard: the address does not exist or refuses us for good
    BLOCKED = "blocked"  # soft: refused this time (a 4xx, a full mailbox, a block list)
    DROPPED = "dropped"
    OPEN = "open"
    CLICK = "click"
    SPAMREPORT = "spamreport"
    UNSUBSCRIBE = "unsubscribe"  # from everything
    GROUP_UNSUBSCRIBE = "group_unsubscribe"  # from this newsletter
    GROUP_RESUBSCRIBE = "group_resubscribe"


#: Where an event moves its delivery (the ladder only goes up).
MOVES = {
    Kind.DEFERRED: DeliveryStatus.DEFERRED,
    Kind.DELIVERED: DeliveryStatus.DELIVERED,
    Kind.OPEN: DeliveryStatus.OPENED,
    Kind.CLICK: DeliveryStatus.CLICKED,
    Kind.BOUNCE: DeliveryStatus.BOUNCED,
    Kind.BLOCKED: DeliveryStatus.BOUNCED,
    Kind.DROPPED: DeliveryStatus.DROPPED,
    Kind.SPAMREPORT: DeliveryStatus.COMPLAINED,
}
#: SendGrid's reasons for a drop that say the address must not be mailed.
BAD_ADDRESS_DROPS = ("bounced address", "invalid", "spam reporting address", "unsubscribed address")
ENGAGEMENT = (Kind.OPEN, Kind.CLICK)
INSERT_EVENT = (
    "INSERT INTO delivery_events (delivery_id, kind, source, provider_event_id, email,"
    " occurred_at, url, reason, detail, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (provider_event_id) DO NOTHING"
)


@dataclass(frozen=True)
class Event:
    """One event, whatever its source."""

    kind: Kind
    source: str  # sendgrid, mail, mailto, smtp
    delivery_id: int | None = None
    message_id: str | None = None  # the provider's message id (a fallback to find it)
    email: str | None = None
    event_id: str | None = None  # the provider's own id: stored once
    occurred_at: datetime | None = None
    url: str | None = None
    reason: str | None = None
    newsletter: str | None = None  # for a list-level unsubscribe without a delivery
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class IngestReport:
    """What a batch did."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    unknown: int = 0  # kept, but no delivery of ours matches
    ignored: int = 0  # opens and clicks of a newsletter without tracking
    moved: int = 0
    suppressed: int = 0
    unsubscribed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


_DELIVERIES = (
    "SELECT d.id, d.email, e.newsletter, d.provider_message_id FROM deliveries d"
    " JOIN editions e ON e.id = d.edition_id WHERE d.{} IN ({{}})"
)


def _resolve(
    session: Session, events: Sequence[Event]
) -> tuple[dict[int, tuple[str, str]], dict[tuple[str, str], int]]:
    """The deliveries the events name: id → (email, newsletter), and (provider message
    id, address) → id for events that name only the provider's message."""
    ids = {e.delivery_id for e in events if e.delivery_id is not None}
    message_ids = {
        e.message_id.split(".", 1)[0] for e in events if e.delivery_id is None and e.message_id
    }
    found: dict[int, tuple[str, str]] = {}
    for row_id, email, newsletter, _ in select_in(session, _DELIVERIES.format("id"), sorted(ids)):
        found[row_id] = (email, newsletter)
    by_message: dict[tuple[str, str], int] = {}
    for row_id, email, newsletter, mid in select_in(
        session, _DELIVERIES.format("provider_message_id"), sorted(message_ids)
    ):
        found[row_id] = (email, newsletter)
        by_message[(str(mid), email.lower())] = row_id
    return found, by_message


def ingest(
    session: Session, *, settings: Settings, events: Sequence[Event], now: datetime
) -> IngestReport:
    """Store and act on a batch of events (see the module docstring); the caller
    commits. Never raises for an unknown delivery or a repeated event."""
    report = IngestReport(received=len(events))
    known, by_message = _resolve(session, events)
    seen_ids = {e.event_id for e in events if e.event_id}
    existing = {
        row[0]
        for row in select_in(
            session,
            "SELECT provider_event_id FROM delivery_events WHERE provider_event_id IN ({})",
            sorted(seen_ids),
        )
    }
    rows: list[tuple[Any, ...]] = []
    as_stored = driver_time(session)
    stamp = as_stored(now)
    fresh: list[tuple[Event, int | None, str | None, str | None]] = []
    batch_ids: set[str] = set()
    for e in events:
        if e.event_id and (e.event_id in existing or e.event_id in batch_ids):
            report.duplicates += 1
            continue
        if e.event_id:
            batch_ids.add(e.event_id)
        delivery_id = e.delivery_id if e.delivery_id in known else None
        if delivery_id is None and e.message_id and e.email:
            key = (e.message_id.split(".", 1)[0], e.email.lower())
            delivery_id = by_message.get(key)
        email, newsletter = (
            (known[delivery_id][0], known[delivery_id][1])
            if delivery_id
            else (
                _address(e.email),
                e.newsletter,
            )
        )
        if e.kind in ENGAGEMENT and newsletter and not _tracked(settings, newsletter):
            report.ignored += 1
            continue
        if delivery_id is None:
            report.unknown += 1
        rows.append(
            (
                delivery_id,
                e.kind.value,
                e.source,
                e.event_id,
                email,
                as_stored(e.occurred_at),
                e.url,
                e.reason,
                json.dumps(e.detail) if e.detail else "{}",
                stamp,
            )
        )
        fresh.append((e, delivery_id, email, newsletter))
    # One executemany through the driver: a webhook batch is thousands of rows, and
    # a repeat that races another POST is skipped by the unique event id.
    executemany(session, INSERT_EVENT, rows)
    report.stored = len(rows)
    highest: dict[int, DeliveryStatus] = {}
    for e, d, _, _ in fresh:  # only each delivery's highest move matters
        if d is not None and e.kind in MOVES:
            new = MOVES[e.kind]
            if d not in highest or EVENT_RANK[new] > EVENT_RANK[highest[d]]:
                highest[d] = new
    report.moved = ledger.advance(session, moves=list(highest.items()), now=now)
    _act(session, settings, fresh, report, now)
    return report


def _address(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        return normalise_email(raw)
    except InputError:
        return raw[:320]


def _tracked(settings: Settings, newsletter: str) -> bool:
    nl = settings.newsletters.get(newsletter)
    return nl.tracking if nl is not None else True


def _act(
    session: Session,
    settings: Settings,
    fresh: list[tuple[Event, int | None, str | None, str | None]],
    report: IngestReport,
    now: datetime,
) -> None:
    """Suppress and unsubscribe as the events say (once per address and reason)."""
    soft: Counter[str] = Counter()
    done: set[tuple[str, str]] = set()
    for e, _delivery, email, newsletter in fresh:
        if not email:
            continue
        reason: SuppressionReason | None = None
        if e.kind is Kind.BOUNCE:
            reason = SuppressionReason.BOUNCED
        elif e.kind is Kind.SPAMREPORT:
            reason = SuppressionReason.COMPLAINED
        elif e.kind is Kind.DROPPED and (e.reason or "").lower().startswith(BAD_ADDRESS_DROPS):
            spam = (e.reason or "").lower().startswith("spam")
            reason = SuppressionReason.COMPLAINED if spam else SuppressionReason.BOUNCED
        elif e.kind is Kind.BLOCKED:
            soft[email] += 1
        elif e.kind is Kind.UNSUBSCRIBE:
            reason = SuppressionReason.UNSUBSCRIBED
        elif e.kind is Kind.GROUP_UNSUBSCRIBE and newsletter and (email, newsletter) not in done:
            done.add((email, newsletter))
            try:
                changed = subscribers.unsubscribe(
                    session, email=email, newsletter=newsletter, via=e.source
                )
            except NotFoundError:
                changed = []
            report.unsubscribed += len(changed)
        if reason is not None and (email, reason.value) not in done:
            done.add((email, reason.value))
            note = f"{e.source} {e.kind.value}" + (f" (event {e.event_id})" if e.event_id else "")
            why = f"{note}: {e.reason}" if e.reason else note
            if suppression.find_entry(session, address=email) is None:
                report.suppressed += 1
            if reason is SuppressionReason.UNSUBSCRIBED:
                try:
                    report.unsubscribed += len(
                        subscribers.unsubscribe(session, email=email, newsletter=None, via=e.source)
                    )
                    continue
                except NotFoundError:
                    pass
            suppression.add_entry(session, address=email, reason=reason, detail=why[:500])
    for email in soft:
        _soft_limit(session, settings, email, report, now)


def _soft_limit(
    session: Session, settings: Settings, email: str, report: IngestReport, now: datetime
) -> None:
    """Suppress an address once enough soft bounces fall within the window."""
    window = now - timedelta(days=settings.events.soft_bounce_days)
    count = session.scalar(
        select(func.count())
        .select_from(SendEvent)
        .where(
            SendEvent.email == email,
            SendEvent.kind == Kind.BLOCKED.value,
            SendEvent.created_at >= window,
        )
    )
    limit = settings.events.soft_bounce_limit
    if int(count or 0) >= limit and suppression.find_entry(session, address=email) is None:
        detail = f"{count} soft bounces within {settings.events.soft_bounce_days} days"
        suppression.add_entry(
            session, address=email, reason=SuppressionReason.BOUNCED, detail=detail
        )
        report.suppressed += 1


def rejections(session: Session, *, settings: Settings, edition_id: int) -> IngestReport:
    """Turn an edition's rejected recipients into hard bounces (an SMTP 5xx at RCPT or
    DATA, a SendGrid 400 naming the address): each suppresses its address, once."""
    rows = session.execute(
        select(Delivery.id, Delivery.email, Delivery.provider, Delivery.error).where(
            Delivery.edition_id == edition_id,
            Delivery.status == DeliveryStatus.FAILED,
            Delivery.failure == "recipient",
        )
    )
    events = [
        Event(
            kind=Kind.BOUNCE,
            source=provider or "provider",
            delivery_id=row_id,
            email=email,
            event_id=f"rejected:{row_id}",
            reason=error,
        )
        for row_id, email, provider, error in rows
    ]
    return ingest(session, settings=settings, events=events, now=utcnow())
