"""Subscribers and their per-newsletter subscriptions.

Addresses are stored in the one lower-case form :mod:`newsletter.addresses` makes
(``normalise_email`` is re-exported here for the callers that import it from here).

Policies every entry point shares:

- a suppressed address (bounced, complained, unsubscribed from everything, manual,
  or forgotten — kept only as a SHA-256 hash) is never added, imported or confirmed;
- an unsubscribed subscription is never re-subscribed by an import, and by
  :func:`add_subscriber` only with ``resubscribe=True`` (staff acting on the
  person's own request);
- unsubscribing from every newsletter also suppresses the address, so nothing can
  bring it back by accident.

Data functions take the session first and never commit: the caller owns the
transaction. CSV import lives in :mod:`newsletter.subscriber_import`, the
suppression list in :mod:`newsletter.suppression`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session, selectinload

from newsletter.audience.addresses import normalise_email as normalise_email
from newsletter.audience.suppression import add_entry, find_entry, refuse_suppressed
from newsletter.config import Settings
from newsletter.db import Page, cursor_int
from newsletter.delivery import ledger
from newsletter.errors import InputError, NotFoundError, StateError
from newsletter.models import (
    Delivery,
    SendEvent,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
    transition_subscription,
    utcnow,
)
from newsletter.tokens import read_token

FORGOTTEN = "forgotten"
NAME_MAX = 200  # Subscriber.name is String(200); PostgreSQL would refuse longer.
EXPORT_COLUMNS = ("email", "name", "timezone", "newsletters", "status")

_SPACE = re.compile(r"\s+")


# ----- validation -----------------------------------------------------------


@cache
def _zones() -> dict[str, str]:
    # Case-insensitive lookup to the canonical IANA spelling; "localtime" and
    # "Factory" are artefacts of the host's tz database, not places.
    return {
        z.lower(): z
        for z in available_timezones()
        if z not in ("localtime", "Factory", "posixrules")
        and not z.startswith(("posix/", "right/"))
    }


def timezone_names() -> list[str]:
    """Every IANA zone a reader can choose (places, "Area/City"), sorted."""
    return sorted(z for z in _zones().values() if "/" in z and not z.startswith("Etc/"))


def normalise_timezone(value: str | None) -> str | None:
    """An IANA zone name in its canonical spelling; empty/None → None.

    Raises InputError for a name the tz database does not know.
    """
    if value is None or not value.strip():
        return None
    zone = _zones().get(value.strip().lower())
    if zone is None:
        raise InputError(f"unknown timezone {value.strip()!r} (use an IANA name like Europe/Paris)")
    return zone


def clean_name(value: str) -> str:
    """A display name safe for headers: whitespace collapsed, control characters dropped.

    Raises InputError when longer than 200 characters.
    """
    text = _SPACE.sub(" ", unicodedata.normalize("NFC", value))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cc").strip()
    if len(text) > NAME_MAX:
        raise InputError(f"name is longer than {NAME_MAX} characters")
    return text


def check_newsletters(settings: Settings, slugs: Sequence[str]) -> list[str]:
    """Validated, de-duplicated slugs in the given order; NotFoundError for unknown ones."""
    seen: list[str] = []
    for slug in slugs:
        settings.newsletter(slug)
        if slug not in seen:
            seen.append(slug)
    return seen


# ----- lookups --------------------------------------------------------------


def _find(session: Session, address: str) -> Subscriber | None:
    return session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()


def _require(session: Session, address: str) -> Subscriber:
    sub = _find(session, address)
    if sub is None:
        raise NotFoundError(f"no subscriber {address}", code="subscriber.not_found", email=address)
    return sub


def get_subscriber(session: Session, *, email: str) -> Subscriber:
    """The subscriber with this address (any spelling), subscriptions loaded.

    Raises InputError (invalid address) and NotFoundError (``subscriber.not_found``).
    """
    address = normalise_email(email)
    stmt = select(Subscriber).where(Subscriber.email == address)
    sub = session.scalars(stmt.options(selectinload(Subscriber.subscriptions))).one_or_none()
    if sub is None:
        raise NotFoundError(f"no subscriber {address}", code="subscriber.not_found", email=address)
    return sub


# ----- subscribing ----------------------------------------------------------


def add_subscriber(
    session: Session,
    *,
    email: str,
    name: str = "",
    timezone: str | None = None,
    newsletters: Sequence[str],
    status: SubscriptionStatus = SubscriptionStatus.PENDING,
    source: str = "cli",
    settings: Settings,
    resubscribe: bool = False,
) -> Subscriber:
    """Create (or update) a subscriber and subscribe them to ``newsletters``.

    An existing subscriber keeps their name/timezone unless new non-empty values are
    given; an existing pending subscription is confirmed when ``status`` is
    confirmed, never downgraded. Returns the subscriber (flushed).

    Raises InputError (bad address, name, timezone, status, no newsletter),
    NotFoundError (unknown newsletter), StateError (suppressed address, or an
    unsubscribed subscription without ``resubscribe``).
    """
    address = normalise_email(email)
    clean = clean_name(name)
    zone = normalise_timezone(timezone)
    if status is SubscriptionStatus.UNSUBSCRIBED:
        raise InputError("a new subscription must be pending or confirmed")
    slugs = check_newsletters(settings, newsletters)
    if not slugs:
        raise InputError("choose at least one newsletter")
    refuse_suppressed(session, address=address)

    sub = _find(session, address)
    current = {s.newsletter: s for s in sub.subscriptions} if sub else {}
    # Check before changing anything, so a refusal leaves no partial change behind.
    for slug in slugs:
        existing = current.get(slug)
        if existing and existing.status is SubscriptionStatus.UNSUBSCRIBED and not resubscribe:
            when = existing.unsubscribed_at.date().isoformat() if existing.unsubscribed_at else "?"
            raise StateError(
                f"{address} unsubscribed from {slug} on {when}; re-subscribe only at their "
                "own request",
                code="subscription.unsubscribed",
                email=address,
                slug=slug,
            )
    if sub is None:
        sub = Subscriber(email=address, name=clean, timezone=zone)
        session.add(sub)
    else:
        if clean and clean != sub.name:
            sub.name = clean
        if zone and zone != sub.timezone:
            sub.timezone = zone
    now = utcnow()
    for slug in slugs:
        existing = current.get(slug)
        if existing is None:
            confirmed = status is SubscriptionStatus.CONFIRMED
            sub.subscriptions.append(
                Subscription(
                    newsletter=slug,
                    status=status,
                    source=source,
                    created_at=now,
                    confirmed_at=now if confirmed else None,
                )
            )
        elif existing.status is SubscriptionStatus.UNSUBSCRIBED:
            transition_subscription(existing, status)
            existing.source = source
        elif status is SubscriptionStatus.CONFIRMED:
            transition_subscription(existing, status)
    session.flush()
    return sub


def update_subscriber(
    session: Session,
    *,
    email: str,
    settings: Settings,
    name: str | None = None,
    timezone: str | None = None,
    newsletters: Sequence[str] | None = None,
    source: str = "cli",
    via: str = "cli",
) -> Subscriber:
    """Change a subscriber's name, timezone and newsletters (staff, at their request).

    None leaves a field as it is; an empty name or timezone clears it.
    ``newsletters`` is the whole set they should get: one not yet held is added
    pending (as :func:`add_subscriber` would), one left out is unsubscribed (the
    address is not suppressed: use :func:`unsubscribe` with None to leave all).
    Everything is checked before anything changes. Raises InputError (bad name or
    timezone, an empty set), NotFoundError (no subscriber, unknown newsletter),
    StateError (adding to a suppressed address, or re-adding a newsletter they
    unsubscribed from: that is ``add_subscriber(resubscribe=True)``).
    """
    sub = get_subscriber(session, email=email)
    clean = clean_name(name) if name is not None else None
    zone = normalise_timezone(timezone) if timezone is not None else sub.timezone
    added: list[str] = []
    dropped: list[str] = []
    if newsletters is not None:
        wanted = check_newsletters(settings, newsletters)
        if not wanted:
            raise InputError(
                "choose at least one newsletter (to leave them all, unsubscribe)",
                code="subscriber.no_newsletter",
            )
        current = {s.newsletter: s for s in sub.subscriptions}
        active = {k for k, s in current.items() if s.status is not SubscriptionStatus.UNSUBSCRIBED}
        added = [slug for slug in wanted if slug not in active]
        dropped = [slug for slug in active if slug not in wanted]
        for slug in added:
            if slug in current:  # held, so unsubscribed
                raise StateError(
                    f"{sub.email} unsubscribed from {slug}; re-subscribe only at their own request",
                    code="subscription.unsubscribed",
                    email=sub.email,
                    slug=slug,
                )
        if added:
            refuse_suppressed(session, address=sub.email)
    if clean is not None and clean != sub.name:
        sub.name = clean
    if zone != sub.timezone:
        sub.timezone = zone
    if added:
        add_subscriber(
            session, email=sub.email, newsletters=added, source=source, settings=settings
        )
    for slug in dropped:
        _unsubscribe(session, sub, slug, via=via)
    session.flush()
    return sub


def confirm(session: Session, *, email: str, newsletter: str | None = None) -> list[Subscription]:
    """Confirm the pending subscription to ``newsletter`` (None: every pending one).

    Returns the subscriptions now confirmed (already-confirmed ones included).
    Raises NotFoundError (no such subscriber/subscription) and StateError
    (suppressed address, or the subscription is unsubscribed).
    """
    address = normalise_email(email)
    refuse_suppressed(session, address=address)
    sub = _require(session, address)
    targets = [s for s in sub.subscriptions if newsletter is None or s.newsletter == newsletter]
    if not targets:
        raise NotFoundError(
            f"{address} is not subscribed to {newsletter or 'any newsletter'}",
            code="subscription.not_found",
            email=address,
            slug=newsletter,
        )
    active = [s for s in targets if s.status is not SubscriptionStatus.UNSUBSCRIBED]
    if not active:
        raise StateError(
            f"{address} has unsubscribed from {newsletter or 'every newsletter'}",
            code="subscription.unsubscribed",
            email=address,
            slug=newsletter,
        )
    for s in active:
        transition_subscription(s, SubscriptionStatus.CONFIRMED)
    session.flush()
    return active


def _unsubscribe(
    session: Session, sub: Subscriber, newsletter: str | None, *, via: str = "cli"
) -> list[Subscription]:
    changed = []
    for s in sub.subscriptions:
        if newsletter in (None, s.newsletter) and s.status is not SubscriptionStatus.UNSUBSCRIBED:
            transition_subscription(s, SubscriptionStatus.UNSUBSCRIBED)
            s.unsubscribed_via = via
            changed.append(s)
    if newsletter is None:
        add_entry(
            session,
            address=sub.email,
            reason=SuppressionReason.UNSUBSCRIBED,
            detail="unsubscribed from all",
        )
    else:
        # Whoever leaves mid-send gets nothing more from this newsletter.
        ledger.cancel_for_recipient(session, email=sub.email, newsletter=newsletter, now=utcnow())
    session.flush()
    return changed


def unsubscribe(
    session: Session, *, email: str, newsletter: str | None, via: str = "cli"
) -> list[Subscription]:
    """Unsubscribe from one newsletter, or from all (None) — which also suppresses.

    Idempotent: returns only the subscriptions this call changed. Raises
    NotFoundError for an address that was never subscribed (``subscriber.not_found``:
    nothing is suppressed, so a typo blocks nobody) or when a named subscription does
    not exist (``subscription.not_found``). A signed link of a subscriber who is gone
    is :func:`unsubscribe_by_token`'s business, and succeeds.
    """
    address = normalise_email(email)
    sub = _find(session, address)
    if newsletter is None:
        return _unsubscribe(session, sub or _require(session, address), None, via=via)
    if sub is None or all(s.newsletter != newsletter for s in sub.subscriptions):
        raise NotFoundError(
            f"{address} is not subscribed to {newsletter}",
            code="subscription.not_found",
            email=address,
            slug=newsletter,
        )
    return _unsubscribe(session, sub, newsletter, via=via)


def unsubscribe_by_token(
    session: Session, *, token: str, settings: Settings, via: str = "cli"
) -> list[Subscription]:
    """Act on a signed unsubscribe token (one-click URL, mailto handler, CLI).

    The token's newsletter "" means every newsletter (and suppresses the address).
    Idempotent, and succeeds with an empty list when the subscriber or subscription
    no longer exists — the person gets no mail either way. Raises InputError for a
    forged, altered or wrong-purpose token.
    """
    data = read_token(settings.signing_key, token, purpose="unsubscribe")
    stmt = select(Subscriber).where(Subscriber.key == data.subscriber_key)
    stmt = stmt.options(selectinload(Subscriber.subscriptions))
    sub = session.scalars(stmt).one_or_none()
    if sub is None:
        return []
    return _unsubscribe(session, sub, data.newsletter or None, via=via)


# ----- removal and erasure --------------------------------------------------


@dataclass(frozen=True)
class RemoveResult:
    """What :func:`remove` did."""

    unsubscribed: int = 0
    subscriber_deleted: bool = False
    subscriptions_deleted: int = 0
    deliveries_anonymised: int = 0


def _scrub(value: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return pattern.sub(FORGOTTEN, value)
    if isinstance(value, list):
        return [_scrub(v, pattern) for v in value]
    if isinstance(value, dict):
        return {pattern.sub(FORGOTTEN, k): _scrub(v, pattern) for k, v in value.items()}
    return value


def remove(session: Session, *, email: str, newsletter: str | None, forget: bool) -> RemoveResult:
    """Unsubscribe (from ``newsletter`` or all), or with ``forget`` erase the person.

    Forgetting deletes the subscriber and their subscriptions, anonymises their
    Delivery rows (email "forgotten", name "", address scrubbed from errors and
    provider events), cancels their not-yet-sent deliveries, and leaves only a
    hashed suppression entry so they are never re-added by accident.
    Raises InputError (``forget`` with ``newsletter``), NotFoundError for an address
    we hold nothing about (``subscriber.not_found``) or a newsletter they are not
    subscribed to.
    """
    if not forget:
        return RemoveResult(
            unsubscribed=len(unsubscribe(session, email=email, newsletter=newsletter))
        )
    if newsletter is not None:
        raise InputError(
            "forgetting erases the person from every newsletter, not from one",
            code="subscriber.forget_one",
        )
    address = normalise_email(email)
    sub = _find(session, address)
    pattern = re.compile(re.escape(address), re.IGNORECASE)

    match = Delivery.email == address
    if sub is not None:
        match = match | (Delivery.subscriber_id == sub.id)
    deliveries = list(session.scalars(select(Delivery).where(match)))
    found = find_entry(session, address=address)
    if sub is None and not deliveries and found is None:
        # Nothing to erase. The hashed block exists so that an erased person is not
        # re-added; for an address we never held it would be a new record made from
        # the request itself, and a mistyped address would silently block a stranger.
        # (To block an address on purpose there is suppression.)
        raise NotFoundError(
            f"no subscriber {address}: nothing to forget",
            code="subscriber.not_found",
            email=address,
        )
    # The address is gone: nothing queued may go to "forgotten" (the ledger cancels it).
    ledger.cancel_for_recipient(session, email=address, newsletter=None, now=utcnow())
    for d in deliveries:
        session.refresh(d, ["status"])
        d.email, d.name, d.subscriber_id = FORGOTTEN, "", None
        if d.error:
            d.error = pattern.sub(FORGOTTEN, d.error)
    if deliveries:
        events = select(SendEvent).where(SendEvent.delivery_id.in_([d.id for d in deliveries]))
        for event in session.scalars(events):
            event.detail = _scrub(event.detail, pattern)

    deleted = 0
    if sub is not None:
        deleted = len(sub.subscriptions)
        session.delete(sub)
    if found is None:
        add_entry(session, address=address, reason=SuppressionReason.FORGOTTEN, detail="")
    else:
        found.email, found.reason, found.detail = None, SuppressionReason.FORGOTTEN, ""
    session.flush()
    return RemoveResult(
        subscriber_deleted=sub is not None,
        subscriptions_deleted=deleted,
        deliveries_anonymised=len(deliveries),
    )


# ----- listing and export ---------------------------------------------------


def _listing(newsletter: str | None, status: SubscriptionStatus | None) -> Select[*tuple[Any, ...]]:
    joined = newsletter is not None or status is not None
    stmt = (
        select(
            Subscriber.id,
            Subscriber.email,
            Subscriber.name,
            Subscriber.timezone,
            Subscription.newsletter,
            Subscription.status,
            Subscription.source,
            Subscription.created_at,
            Subscription.confirmed_at,
            Suppression.reason.label("suppressed"),
        )
        .select_from(Subscriber)
        .join(Subscription, Subscription.subscriber_id == Subscriber.id, isouter=not joined)
        .join(Suppression, Suppression.email == Subscriber.email, isouter=True)
        .order_by(Subscriber.id, Subscription.newsletter)
    )
    if newsletter is not None:
        stmt = stmt.where(Subscription.newsletter == newsletter)
    if status is not None:
        stmt = stmt.where(Subscription.status == status)
    return stmt


@dataclass(frozen=True)
class SubscriptionRow:
    """One subscription in a listing (a subscriber without any: newsletter None)."""

    subscriber_id: int
    email: str
    name: str
    timezone: str | None
    newsletter: str | None
    status: SubscriptionStatus | None
    source: str | None
    created_at: datetime | None
    confirmed_at: datetime | None
    suppressed: SuppressionReason | None


def _after(prefix: str) -> str | None:
    """The smallest text greater than every text starting with ``prefix`` (None: no
    such text): the prefix with its last character moved up by one code point."""
    for end in range(len(prefix) - 1, -1, -1):
        code = ord(prefix[end]) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates are not text: skip past them
            code = 0xE000
        if code <= 0x10FFFF:
            return prefix[:end] + chr(code)
    return None


def list_subscribers(
    session: Session,
    *,
    newsletter: str | None = None,
    status: SubscriptionStatus | None = None,
    prefix: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Page[SubscriptionRow]:
    """Subscriptions, oldest subscriber first; ``limit`` rows a page (None: all).

    Without filters, subscribers with no subscription appear once with newsletter None.
    ``prefix`` keeps addresses that start with it (lower-cased, as addresses are
    stored), as a range ``prefix <= email < next`` that the unique index on
    ``email`` serves (a ``LIKE '%...'`` could not); it assumes code point order,
    which SQLite's BINARY and PostgreSQL's C collations have.
    """
    stmt = _listing(newsletter, status)
    start = (prefix or "").strip().lower()
    if start:
        stmt = stmt.where(Subscriber.email >= start)
        end = _after(start)
        if end is not None:
            stmt = stmt.where(Subscriber.email < end)
    if cursor is not None:
        id_text, _, slug = cursor.partition("|")  # "" after the bar: no subscription
        last = cursor_int(id_text)
        stmt = stmt.where(
            or_(
                Subscriber.id > last,
                and_(Subscriber.id == last, func.coalesce(Subscription.newsletter, "") > slug),
            )
        )
    found = [
        SubscriptionRow(*row)
        for row in session.execute(stmt.limit(None if limit is None else limit + 1))
    ]
    if limit is None or len(found) <= limit:
        return Page(found, None)
    rows = found[:limit]
    return Page(rows, f"{rows[-1].subscriber_id}|{rows[-1].newsletter or ''}")


def export_rows(session: Session, *, newsletter: str | None = None) -> Iterator[dict[str, str]]:
    """Stream re-importable rows: email, name, timezone, newsletters, status.

    One row per subscriber with their active (pending/confirmed) subscriptions,
    ``newsletters`` ;-separated; ``status`` is one value when they agree, else one
    per newsletter in the same order. Suppressed addresses and people with no active
    subscription are left out, so a re-import elsewhere cannot mail them.
    """
    stmt = (
        _listing(newsletter, None)
        .where(Subscription.status != SubscriptionStatus.UNSUBSCRIBED)
        .where(Suppression.id.is_(None))
        .execution_options(yield_per=2000)
    )
    current: dict[str, Any] | None = None
    for row in session.execute(stmt):
        if current is None or current["email"] != row.email:
            if current is not None:
                yield _export_row(current)
            current = {"email": row.email, "name": row.name, "timezone": row.timezone, "subs": []}
        current["subs"].append((row.newsletter, row.status.value))
    if current is not None:
        yield _export_row(current)


def _export_row(group: dict[str, Any]) -> dict[str, str]:
    slugs = [slug for slug, _ in group["subs"]]
    statuses = [status for _, status in group["subs"]]
    return {
        "email": group["email"],
        "name": group["name"],
        "timezone": group["timezone"] or "",
        "newsletters": ";".join(slugs),
        "status": statuses[0] if len(set(statuses)) == 1 else ";".join(statuses),
    }
