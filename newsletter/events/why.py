"""Why did (or didn't) this reader get that edition? One answer, from the ledger, the
events and the subscription history together, and a person's whole timeline.

The CLI (``deliveries why``, ``deliveries timeline``) and the staff console show the
same answers. A forgotten address answers "erased on request" from its hash alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.audience.addresses import normalise_email
from newsletter.audience.suppression import email_hash
from newsletter.config import Settings
from newsletter.content import editions
from newsletter.errors import NotFoundError
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Edition,
    SendEvent,
    Signup,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
    Unsuppression,
)


@dataclass(frozen=True)
class Entry:
    when: datetime | None
    what: str


@dataclass(frozen=True)
class Answer:
    """The one-line answer, the edition it is about, and the timeline behind it."""

    line: str
    edition_id: int | None
    timeline: tuple[Entry, ...]


def _t(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "an unknown time"


def timeline(session: Session, *, email: str) -> tuple[Entry, ...]:
    """Everything that happened to an address, oldest first."""
    address = normalise_email(email)
    entries: list[Entry] = []
    entry = session.scalars(
        select(Suppression).where(Suppression.email_hash == email_hash(address))
    ).one_or_none()
    for lifted in session.scalars(
        select(Unsuppression).where(Unsuppression.email_hash == email_hash(address))
    ):
        entries.append(
            Entry(lifted.suppressed_at, f"suppressed ({lifted.was_reason}): {lifted.was_detail}")
        )
        entries.append(Entry(lifted.created_at, f"re-enabled by staff: {lifted.reason}"))
    if entry is not None:
        if entry.reason is SuppressionReason.FORGOTTEN:
            entries.append(Entry(entry.created_at, "erased on request"))
        else:
            detail = f": {entry.detail}" if entry.detail else ""
            entries.append(Entry(entry.created_at, f"suppressed ({entry.reason.value}){detail}"))
    sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()
    if sub is not None:
        entries.append(Entry(sub.created_at, "first known"))
        for s in sub.subscriptions:
            entries.append(
                Entry(s.created_at, f"subscribed to {s.newsletter} ({s.source}), pending")
            )
            if s.confirmed_at:
                entries.append(Entry(s.confirmed_at, f"confirmed {s.newsletter}"))
            if s.status is SubscriptionStatus.UNSUBSCRIBED and s.unsubscribed_at:
                via = f" ({s.unsubscribed_via})" if s.unsubscribed_via else ""
                entries.append(Entry(s.unsubscribed_at, f"unsubscribed from {s.newsletter}{via}"))
        for signup in session.scalars(select(Signup).where(Signup.subscriber_id == sub.id)):
            names = ", ".join(signup.newsletters)
            entries.append(Entry(signup.created_at, f"signed up on the web for {names}"))
    rows = session.execute(
        select(Delivery, Edition.newsletter, Edition.issue_date)
        .join(Edition, Edition.id == Delivery.edition_id)
        .where(Delivery.email == address)
        .order_by(Delivery.id)
    ).all()
    for d, newsletter, day in rows:
        label = f"edition {d.edition_id} ({newsletter}, {day})"
        entries.append(Entry(d.created_at, f"{label}: in the audience"))
        entries.append(Entry(d.sent_at or d.updated_at, f"{label}: {_delivery_state(d)}"))
    events = session.scalars(
        select(SendEvent).where(SendEvent.email == address).order_by(SendEvent.id)
    )
    for e in events:
        what = f"{e.kind}" + (f" {e.url}" if e.url else "") + (f": {e.reason}" if e.reason else "")
        where = f"delivery {e.delivery_id}" if e.delivery_id else "no delivery of ours"
        entries.append(Entry(e.occurred_at or e.created_at, f"{e.source} event {what} ({where})"))
    return tuple(sorted(entries, key=lambda x: (x.when is None, x.when or datetime.min)))


def _delivery_state(d: Delivery) -> str:
    status = d.status
    if status in (
        DeliveryStatus.SENT,
        DeliveryStatus.DEFERRED,
        DeliveryStatus.DELIVERED,
        DeliveryStatus.OPENED,
        DeliveryStatus.CLICKED,
    ):
        via = f" through {d.provider}" if d.provider else ""
        mid = f" (message id {d.provider_message_id})" if d.provider_message_id else ""
        after = "" if status is DeliveryStatus.SENT else f", then {status.value}"
        return f"sent at {_t(d.sent_at)}{via}{mid}{after}"
    if status in (DeliveryStatus.BOUNCED, DeliveryStatus.DROPPED, DeliveryStatus.COMPLAINED):
        return f"sent at {_t(d.sent_at)} through {d.provider}, then {status.value}"
    if status is DeliveryStatus.FAILED:
        return f"failed: {d.error or 'no reason recorded'}"
    if status is DeliveryStatus.UNCERTAIN:
        return f"uncertain: {d.error or 'the provider may have accepted it'}"
    if status is DeliveryStatus.CANCELLED:
        return f"not sent (cancelled{': ' + d.error if d.error else ''})"
    if status in (DeliveryStatus.QUEUED, DeliveryStatus.RETRY) and d.not_before:
        return f"waiting to be sent at {_t(d.not_before)}" + (
            f" (retrying after: {d.error})" if d.error and status is DeliveryStatus.RETRY else ""
        )
    return f"{status.value}"


def why(
    session: Session,
    *,
    settings: Settings,
    email: str,
    edition_id: int | None = None,
    newsletter: str | None = None,
) -> Answer:
    """Why ``email`` did or did not get an edition (the given one; else the newsletter's
    latest; else their latest delivery). Raises InputError (bad address),
    NotFoundError (unknown edition or newsletter)."""
    address = normalise_email(email)
    history = timeline(session, email=address)
    entry = session.scalars(
        select(Suppression).where(Suppression.email_hash == email_hash(address))
    ).one_or_none()
    if entry is not None and entry.reason is SuppressionReason.FORGOTTEN:
        return Answer(f"{address}: erased on request at {_t(entry.created_at)}", None, history)
    edition = _edition(session, settings, address, edition_id, newsletter)
    sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()
    if edition is None:
        if sub is None and entry is None:
            return Answer(f"{address}: not known (never subscribed)", None, history)
        return Answer(f"{address}: {_standing(sub, entry, newsletter)}", None, history)
    label = f"edition {edition.id} of {edition.newsletter} ({edition.issue_date})"
    row = session.scalars(
        select(Delivery).where(Delivery.edition_id == edition.id, Delivery.email == address)
    ).one_or_none()
    if row is not None:
        return Answer(f"{address}, {label}: {_delivery_state(row)}", edition.id, history)
    if sub is None and entry is None:
        return Answer(f"{address}, {label}: not known (never subscribed)", edition.id, history)
    return Answer(
        f"{address}, {label}: not in its audience: "
        + _not_frozen(session, address, sub, entry, edition),
        edition.id,
        history,
    )


def _edition(
    session: Session,
    settings: Settings,
    address: str,
    edition_id: int | None,
    newsletter: str | None,
) -> Edition | None:
    if edition_id is not None:
        return editions.get_edition(session, edition_id)
    if newsletter is not None:
        settings.newsletter(newsletter)
        return session.scalars(
            select(Edition)
            .where(Edition.newsletter == newsletter, Edition.send_started_at.is_not(None))
            .order_by(Edition.issue_date.desc(), Edition.id.desc())
            .limit(1)
        ).one_or_none() or _none(newsletter)
    latest = session.scalar(select(func.max(Delivery.edition_id)).where(Delivery.email == address))
    return session.get(Edition, latest) if latest is not None else None


def _none(newsletter: str) -> Edition:
    raise NotFoundError(f"{newsletter} has sent no edition yet", code="edition.not_found")


def _standing(sub: Subscriber | None, entry: Suppression | None, newsletter: str | None) -> str:
    if entry is not None:
        return f"suppressed at {_t(entry.created_at)} ({entry.reason.value}): {entry.detail}"
    assert sub is not None
    states = [
        f"{s.newsletter} {s.status.value}"
        for s in sub.subscriptions
        if newsletter in (None, s.newsletter)
    ]
    return "no edition sent to them yet; " + (", ".join(states) or "no subscription")


def _not_frozen(
    session: Session,
    address: str,
    sub: Subscriber | None,
    entry: Suppression | None,
    edition: Edition,
) -> str:
    """Why someone was not in an edition's frozen audience."""
    frozen = edition.send_started_at
    if entry is not None and (frozen is None or entry.created_at <= frozen):
        return f"suppressed at {_t(entry.created_at)} ({entry.reason.value})" + (
            f" because of {entry.detail}" if entry.detail else ""
        )
    if frozen is not None:
        for lifted in session.scalars(
            select(Unsuppression).where(
                Unsuppression.email_hash == email_hash(address),
                Unsuppression.suppressed_at <= frozen,
                Unsuppression.created_at > frozen,
            )
        ):
            return (
                f"suppressed at {_t(lifted.suppressed_at)} ({lifted.was_reason})"
                + (f" because of {lifted.was_detail}" if lifted.was_detail else "")
                + f"; re-enabled at {_t(lifted.created_at)}, after the freeze"
            )
    s: Subscription | None = None
    if sub is not None:
        s = next((x for x in sub.subscriptions if x.newsletter == edition.newsletter), None)
    if s is None:
        return f"not subscribed to {edition.newsletter}"
    if frozen is None:
        return f"the edition is {edition.status.value}: its audience is not frozen yet"
    if s.status is SubscriptionStatus.PENDING:
        return f"pending confirmation since {_t(s.created_at)}"
    if s.status is SubscriptionStatus.UNSUBSCRIBED and s.unsubscribed_at:
        via = f" ({s.unsubscribed_via})" if s.unsubscribed_via else ""
        return f"unsubscribed at {_t(s.unsubscribed_at)}{via}"
    if s.confirmed_at and s.confirmed_at > frozen:
        return f"subscribed at {_t(s.confirmed_at)}, after the audience was frozen at {_t(frozen)}"
    if entry is not None:
        return f"suppressed at {_t(entry.created_at)} ({entry.reason.value}), after the freeze"
    return f"{s.status.value} (the audience was frozen at {_t(frozen)})"


@dataclass(frozen=True)
class Engagement:
    """Per edition: who opened it, and clicks per link."""

    unique_opens: int
    unique_clicks: int
    links: tuple[tuple[str, int, int], ...]  # url, clicks, readers who clicked


def engagement(session: Session, *, edition_id: int) -> Engagement:
    """Opens and clicks of an edition's deliveries (tracking newsletters only)."""
    of_edition = select(Delivery.id).where(Delivery.edition_id == edition_id)
    opens = session.scalar(
        select(func.count(func.distinct(SendEvent.delivery_id))).where(
            SendEvent.kind == "open", SendEvent.delivery_id.in_(of_edition)
        )
    )
    clicked = session.scalar(
        select(func.count(func.distinct(SendEvent.delivery_id))).where(
            SendEvent.kind == "click", SendEvent.delivery_id.in_(of_edition)
        )
    )
    links = session.execute(
        select(SendEvent.url, func.count(), func.count(func.distinct(SendEvent.delivery_id)))
        .where(SendEvent.kind == "click", SendEvent.delivery_id.in_(of_edition))
        .group_by(SendEvent.url)
        .order_by(func.count().desc(), SendEvent.url)
    )
    return Engagement(
        int(opens or 0),
        int(clicked or 0),
        tuple((str(u or ""), int(n), int(k)) for u, n, k in links),
    )
