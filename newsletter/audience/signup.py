"""Signing up on the web: a pending request, one confirmation email, one click to confirm.

Self-hosted sign-up forms are abused to mail strangers (list bombing), so:

- the answer is the same whatever the address is (new, pending, confirmed, left,
  suppressed): :func:`request_signup` says only whether to send a confirmation;
- at most one confirmation per address per ``web.confirm_every_hours``: a repeated
  request joins the pending one (its newsletters are added) and mails nobody;
- a suppressed address (bounced, complained, left everything, erased) gets nothing;
- nothing the visitor typed goes into the confirmation email, and nothing they typed
  changes an existing subscriber until the mailbox's owner confirms: the request
  (newsletters, name, timezone) waits in ``signups``;
- the confirmation link is signed for this purpose only and expires after
  ``web.confirm_days``; opening it (a GET, which link scanners do) changes nothing,
  confirming is a POST (:func:`confirm_signup`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import tokens
from newsletter.audience.addresses import normalise_email
from newsletter.audience.subscribers import check_newsletters, clean_name, normalise_timezone
from newsletter.audience.suppression import find_entry
from newsletter.config import Settings
from newsletter.errors import InputError, StateError
from newsletter.models import (
    Signup,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    transition_subscription,
)

SOURCE = "web"


@dataclass(frozen=True)
class SignupResult:
    """What to do after a sign-up request: mail ``to`` a confirmation, or nothing."""

    to: str | None
    token: str | None
    newsletters: tuple[str, ...]


def request_signup(
    session: Session,
    *,
    settings: Settings,
    email: str,
    newsletters: Sequence[str],
    name: str = "",
    timezone: str | None = None,
    now: datetime,
) -> SignupResult:
    """Record a sign-up request; say whether a confirmation email should go out.

    Raises InputError for an invalid address or no (known) newsletter chosen; every
    other case answers alike to the visitor (see the module docstring).
    """
    address = normalise_email(email)
    slugs = tuple(check_newsletters(settings, newsletters))
    if not slugs:
        raise InputError("choose at least one newsletter", code="signup.no_newsletter")
    clean = clean_name(name)
    try:
        zone = normalise_timezone(timezone)
    except InputError:
        zone = None  # a guessed zone we do not know: the newsletter's own applies
    nothing = SignupResult(None, None, slugs)
    if find_entry(session, address=address) is not None:
        return nothing
    sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()
    if sub is None:
        sub = Subscriber(email=address)
        session.add(sub)
        session.flush()
    current = {s.newsletter: s for s in sub.subscriptions}
    wanted = [s for s in slugs if s not in current or not _confirmed(current[s])]
    if not wanted:
        return nothing  # they already get all of them
    for slug in wanted:
        if slug not in current:
            sub.subscriptions.append(
                Subscription(
                    newsletter=slug,
                    status=SubscriptionStatus.PENDING,
                    source=SOURCE,
                    created_at=now,
                )
            )
    recent = session.scalars(
        select(Signup)
        .where(
            Signup.subscriber_id == sub.id,
            Signup.confirmed_at.is_(None),
            Signup.mailed_at > now - timedelta(hours=settings.web.confirm_every_hours),
        )
        .order_by(Signup.created_at.desc())
        .limit(1)
    ).one_or_none()
    if recent is not None:
        # One email per address per window: this request joins the one already mailed.
        recent.newsletters = sorted({*recent.newsletters, *wanted})
        recent.name, recent.timezone = clean or recent.name, zone or recent.timezone
        session.flush()
        return nothing
    signup = Signup(
        subscriber_id=sub.id,
        newsletters=list(wanted),
        name=clean,
        timezone=zone,
        created_at=now,
        mailed_at=now,
    )
    session.add(signup)
    session.flush()
    token = tokens.make_timed_token(settings.signing_key, purpose="confirm", value=signup.key)
    return SignupResult(address, token, tuple(wanted))


def _confirmed(subscription: Subscription) -> bool:
    return subscription.status is SubscriptionStatus.CONFIRMED


@dataclass(frozen=True)
class PendingSignup:
    """What a confirmation link would confirm (shown on its page, changing nothing)."""

    newsletters: tuple[str, ...]
    confirmed: bool  # already confirmed (a second click)


def _signup(session: Session, settings: Settings, token: str) -> Signup:
    key = tokens.read_timed_token(
        settings.signing_key,
        token,
        purpose="confirm",
        max_age=settings.web.confirm_days * 86400,
    )
    signup = session.get(Signup, key)
    if signup is None:  # erased meanwhile, or never ours
        raise InputError("this confirmation link is no longer valid", code="token.invalid")
    return signup


def pending_signup(session: Session, *, settings: Settings, token: str) -> PendingSignup:
    """Read a confirmation link without acting on it; InputError when bad or expired."""
    signup = _signup(session, settings, token)
    known = [s for s in signup.newsletters if s in settings.newsletters]
    return PendingSignup(tuple(known), signup.confirmed_at is not None)


def confirm_signup(
    session: Session, *, settings: Settings, token: str, now: datetime
) -> PendingSignup:
    """Confirm every newsletter the sign-up chose; idempotent (a second POST changes
    nothing). Raises InputError (bad or expired link) and StateError
    (``subscriber.suppressed``: the address may not be mailed)."""
    signup = _signup(session, settings, token)
    known = tuple(s for s in signup.newsletters if s in settings.newsletters)
    if signup.confirmed_at is not None:
        return PendingSignup(known, True)
    sub = session.get_one(Subscriber, signup.subscriber_id)
    if find_entry(session, address=sub.email) is not None:
        raise StateError(
            "this address cannot be subscribed", code="subscriber.suppressed", email=sub.email
        )
    current = {s.newsletter: s for s in sub.subscriptions}
    for slug in known:
        existing = current.get(slug)
        if existing is None:
            sub.subscriptions.append(
                Subscription(
                    newsletter=slug,
                    status=SubscriptionStatus.CONFIRMED,
                    source=SOURCE,
                    created_at=now,
                    confirmed_at=now,
                )
            )
        else:
            # Their own request, proven by the click in their mailbox: a pending one
            # is confirmed, and one they left is taken up again.
            transition_subscription(existing, SubscriptionStatus.CONFIRMED)
            existing.unsubscribed_via = None
    if signup.name:
        sub.name = signup.name
    if signup.timezone:
        sub.timezone = signup.timezone
    signup.confirmed_at = now
    session.flush()
    return PendingSignup(known, False)
