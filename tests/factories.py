"""Test-data factories that write real rows (no mocks)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from newsletter.models import (
    Story,
    StoryOrigin,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    utcnow,
)

_seq = itertools.count(1)


def subscriber(
    session: Session,
    email: str | None = None,
    *,
    name: str = "",
    timezone: str | None = None,
    newsletters: tuple[str, ...] = ("daily-briefing",),
    status: SubscriptionStatus = SubscriptionStatus.CONFIRMED,
) -> Subscriber:
    n = next(_seq)
    sub = Subscriber(email=email or f"reader{n}@example.com", name=name, timezone=timezone)
    sub.subscriptions = [Subscription(newsletter=slug, status=status) for slug in newsletters]
    session.add(sub)
    session.flush()
    return sub


def subscribers(session: Session, count: int, *, newsletter: str = "daily-briefing") -> None:
    """``count`` confirmed subscribers of ``newsletter``, written in bulk (fast for thousands)."""
    first = next(_seq)
    for _ in range(count - 1):
        next(_seq)
    people = [
        Subscriber(email=f"bulk{first + i}@example.com", name=f"Reader {first + i}")
        for i in range(count)
    ]
    session.add_all(people)
    session.flush()
    session.add_all(
        Subscription(subscriber_id=p.id, newsletter=newsletter, status=SubscriptionStatus.CONFIRMED)
        for p in people
    )
    session.flush()


def story(
    session: Session,
    *,
    newsletter: str = "daily-briefing",
    title: str | None = None,
    url: str | None = None,
    summary: str = "<p>A short summary.</p>",
    kicker: str = "World",
    age: timedelta = timedelta(hours=1),
    pinned: bool = False,
    hidden: bool = False,
    now: datetime | None = None,
) -> Story:
    n = next(_seq)
    when = (now or utcnow()) - age
    s = Story(
        newsletter=newsletter,
        guid=f"guid-{n}",
        url=url or f"https://news.example.com/story/{n}",
        title=title or f"Story number {n}",
        summary=summary,
        kicker=kicker,
        source="Example Wire",
        origin=StoryOrigin.FEED,
        published_at=when,
        fetched_at=when,
        pinned=pinned,
        hidden=hidden,
    )
    session.add(s)
    session.flush()
    return s


class FakeClock:
    """A clock that moves only when the sender sleeps."""

    def __init__(self) -> None:
        self.now = utcnow()
        self.slept = 0.0

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += timedelta(seconds=seconds)
