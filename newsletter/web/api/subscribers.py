"""The API's subscribers: search, one person, create, update, unsubscribe, timeline.

Over the same services as the console (:mod:`newsletter.audience.subscribers`,
:func:`newsletter.events.why.timeline`). An address in a path is the last part of
it and may hold a ``/`` (``{email:path}``); any spelling finds the stored one.
Errors are the API's problems (``{"error", "code"}``), from its handlers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from newsletter.audience import subscribers as svc
from newsletter.audience.suppression import find_entry
from newsletter.db import transaction
from newsletter.events.why import timeline as person_timeline
from newsletter.models import Subscriber, SubscriptionStatus, SuppressionReason
from newsletter.staff.access import Permission
from newsletter.web.api.auth import require
from newsletter.web.api.routes import AFTER, LIMIT, REFUSALS, TimelineEntry
from newsletter.web.state import web_state

router = APIRouter(tags=["subscribers"])
READ = [Depends(require(Permission.SUBSCRIBERS_READ))]
WRITE = [Depends(require(Permission.SUBSCRIBERS_WRITE))]
EMAIL = Annotated[str, Path(min_length=1, max_length=320, description="An address, any case")]
SLUG = Annotated[str, Field(min_length=1, max_length=64)]
VIA = "api"


class SubscriptionRowOut(BaseModel):
    """One subscription in a listing (a subscriber without any: newsletter null)."""

    email: str
    name: str
    timezone: str | None
    newsletter: str | None
    status: SubscriptionStatus | None
    source: str | None
    created_at: datetime | None
    confirmed_at: datetime | None
    suppressed: SuppressionReason | None


class SubscriberPage(BaseModel):
    items: list[SubscriptionRowOut]
    next: str | None


class SubscriptionOut(BaseModel):
    newsletter: str
    status: SubscriptionStatus
    source: str
    created_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    unsubscribed_via: str | None


class SubscriberOut(BaseModel):
    email: str
    name: str
    timezone: str | None
    created_at: datetime
    suppressed: SuppressionReason | None
    subscriptions: list[SubscriptionOut]


class SubscriberIn(BaseModel):
    """A new subscriber (an existing one keeps what is not given, and gains these)."""

    email: str = Field(min_length=1, max_length=320)
    name: str = Field(default="", max_length=1000)
    timezone: str | None = Field(default=None, max_length=64, description="IANA, e.g. Europe/Paris")
    newsletters: list[SLUG] = Field(min_length=1, max_length=100)
    status: Literal["pending", "confirmed"] = "pending"


class SubscriberUpdate(BaseModel):
    """What to change; a field left out stays as it is, an empty name or timezone clears."""

    name: str | None = Field(default=None, max_length=1000)
    timezone: str | None = Field(default=None, max_length=64)
    newsletters: list[SLUG] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Every newsletter they should get: new ones start pending, "
        "ones left out are unsubscribed",
    )


class UnsubscribeIn(BaseModel):
    newsletter: SLUG | None = Field(
        description="A newsletter, or null for every one (which also suppresses the address)"
    )


class UnsubscribeOut(BaseModel):
    email: str
    unsubscribed: list[str] = Field(description="The subscriptions this call changed")
    suppressed: bool


class TimelineOut(BaseModel):
    email: str
    timeline: list[TimelineEntry]


def _out(sub: Subscriber, suppressed: SuppressionReason | None) -> SubscriberOut:
    return SubscriberOut(
        email=sub.email,
        name=sub.name,
        timezone=sub.timezone,
        created_at=sub.created_at,
        suppressed=suppressed,
        subscriptions=[
            SubscriptionOut(
                newsletter=s.newsletter,
                status=s.status,
                source=s.source,
                created_at=s.created_at,
                confirmed_at=s.confirmed_at,
                unsubscribed_at=s.unsubscribed_at,
                unsubscribed_via=s.unsubscribed_via,
            )
            for s in sorted(sub.subscriptions, key=lambda s: s.newsletter)
        ],
    )


def _suppressed(session: Session, address: str) -> SuppressionReason | None:
    entry = find_entry(session, address=address)
    return entry.reason if entry else None


@router.get("/subscribers", response_model=SubscriberPage, responses=REFUSALS, dependencies=READ)
def list_subscribers(
    request: Request,
    prefix: Annotated[str | None, Query(max_length=320, description="Address starts with")] = None,
    newsletter: Annotated[str | None, Query(max_length=64)] = None,
    status: SubscriptionStatus | None = None,
    limit: LIMIT = 100,
    after: AFTER = None,
) -> SubscriberPage:
    """Subscriptions, oldest subscriber first, by address prefix, newsletter and status."""
    web = web_state(request)
    if newsletter is not None:
        web.settings.newsletter(newsletter)  # an unknown slug is a 404, not no rows
    with web.sessions() as session:
        page = svc.list_subscribers(
            session, newsletter=newsletter, status=status, prefix=prefix, limit=limit, cursor=after
        )
    items = [
        SubscriptionRowOut(
            email=r.email,
            name=r.name,
            timezone=r.timezone,
            newsletter=r.newsletter,
            status=r.status,
            source=r.source,
            created_at=r.created_at,
            confirmed_at=r.confirmed_at,
            suppressed=r.suppressed,
        )
        for r in page.items
    ]
    return SubscriberPage(items=items, next=page.cursor)


@router.post(
    "/subscribers",
    response_model=SubscriberOut,
    status_code=201,
    responses=REFUSALS,
    dependencies=WRITE,
)
def create_subscriber(request: Request, body: SubscriberIn) -> SubscriberOut:
    """Add a subscriber (or subscribe an existing one to more newsletters).

    Suppressed addresses are refused, and so is re-subscribing someone who left (409).
    """
    web = web_state(request)
    with transaction(web.sessions) as session:
        sub = svc.add_subscriber(
            session,
            email=body.email,
            name=body.name,
            timezone=body.timezone,
            newsletters=body.newsletters,
            status=SubscriptionStatus(body.status),
            source=VIA,
            settings=web.settings,
        )
        return _out(sub, None)


@router.get(
    "/subscribers/{email:path}/timeline",
    response_model=TimelineOut,
    responses=REFUSALS,
    dependencies=READ,
)
def get_timeline(request: Request, email: EMAIL) -> TimelineOut:
    """Everything that happened to an address, oldest first (empty if never known)."""
    with web_state(request).sessions() as session:
        address = svc.normalise_email(email)
        entries = person_timeline(session, email=address)
    return TimelineOut(
        email=address, timeline=[TimelineEntry(when=e.when, what=e.what) for e in entries]
    )


@router.post(
    "/subscribers/{email:path}/unsubscribe",
    response_model=UnsubscribeOut,
    responses=REFUSALS,
    dependencies=WRITE,
)
def unsubscribe(request: Request, email: EMAIL, body: UnsubscribeIn) -> UnsubscribeOut:
    """Unsubscribe from one newsletter, or (null) from all, which suppresses the address."""
    web = web_state(request)
    if body.newsletter is not None:
        web.settings.newsletter(body.newsletter)
    with transaction(web.sessions) as session:
        changed = svc.unsubscribe(session, email=email, newsletter=body.newsletter, via=VIA)
        address = svc.normalise_email(email)
        suppressed = _suppressed(session, address) is not None
    return UnsubscribeOut(
        email=address, unsubscribed=[s.newsletter for s in changed], suppressed=suppressed
    )


@router.get(
    "/subscribers/{email:path}",
    response_model=SubscriberOut,
    responses=REFUSALS,
    dependencies=READ,
)
def get_subscriber(request: Request, email: EMAIL) -> SubscriberOut:
    """One subscriber with every subscription and whether the address is suppressed."""
    with web_state(request).sessions() as session:
        sub = svc.get_subscriber(session, email=email)
        return _out(sub, _suppressed(session, sub.email))


@router.patch(
    "/subscribers/{email:path}",
    response_model=SubscriberOut,
    responses=REFUSALS,
    dependencies=WRITE,
)
def update_subscriber(request: Request, email: EMAIL, body: SubscriberUpdate) -> SubscriberOut:
    """Change the name, timezone or newsletters (at the person's request)."""
    web = web_state(request)
    with transaction(web.sessions) as session:
        sub = svc.update_subscriber(
            session,
            email=email,
            settings=web.settings,
            name=body.name,
            timezone=body.timezone,
            newsletters=body.newsletters,
            source=VIA,
            via=VIA,
        )
        return _out(sub, _suppressed(session, sub.email))
