"""Listings page by keyset: walking the pages gives every row once, in order, and a
cursor the service did not make is a clear error (the CLI prints how to go on)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from newsletter.audience import subscribers
from newsletter.config import Settings
from newsletter.content import editions, stories
from newsletter.db import Page
from newsletter.delivery import ledger, log
from newsletter.errors import InputError
from newsletter.models import Edition, EditionKind, utcnow
from tests import factories
from tests.conftest import CliRun


def _walk(fetch: Callable[[str | None], Page[Any]], key: Callable[[Any], Any]) -> list[Any]:
    seen: list[Any] = []
    cursor: str | None = None
    for _ in range(100):
        page = fetch(cursor)
        assert len(page.items) <= 3
        seen += [key(row) for row in page.items]
        if page.cursor is None:
            return seen
        cursor = page.cursor
    raise AssertionError("the pages never ended")


def test_every_listing_walks_its_rows_once_in_order(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    with sessions.begin() as s:
        factories.subscribers(s, 8)
        factories.subscriber(s, "nobody@example.org", newsletters=())
        factories.subscriber(s, "both@example.org", newsletters=("daily-briefing", "good-news"))
        now = utcnow()
        for i in range(7):
            factories.story(s, now=now - timedelta(hours=i))
        day = date(2026, 11, 1)
        for i in range(7):  # specials share a date with a regular one: the id breaks the tie
            kind = EditionKind.REGULAR if i % 2 == 0 else EditionKind.SPECIAL
            s.add(
                Edition(
                    newsletter="daily-briefing", issue_date=day + timedelta(days=i // 2), kind=kind
                )
            )
        s.flush()
        eid = s.query(Edition.id).order_by(Edition.id).first()[0]  # type: ignore[index]
        ledger.freeze_audience(s, edition_id=eid, slug="daily-briefing", now=now)
    with sessions() as s:
        all_subs = subscribers.list_subscribers(s).items
        walked = _walk(
            lambda c: subscribers.list_subscribers(s, limit=3, cursor=c),
            lambda r: (r.subscriber_id, r.newsletter),
        )
        assert walked == [(r.subscriber_id, r.newsletter) for r in all_subs]
        assert (all_subs[-2].newsletter, all_subs[-1].newsletter) == ("daily-briefing", "good-news")
        assert any(r.newsletter is None for r in all_subs)  # no subscription: listed once
        all_stories = stories.list_stories(s, limit=1000).items
        assert _walk(lambda c: stories.list_stories(s, limit=3, cursor=c), lambda r: r.id) == [
            r.id for r in all_stories
        ]
        all_editions = editions.list_editions(s, limit=1000).items
        assert len(all_editions) == 7
        assert _walk(lambda c: editions.list_editions(s, limit=3, cursor=c), lambda r: r.id) == [
            r.id for r in all_editions
        ]
        all_rows = log.list_deliveries(s, limit=1000).items
        assert len(all_rows) == 9
        assert _walk(lambda c: log.list_deliveries(s, limit=3, cursor=c), lambda r: r.id) == [
            r.id for r in all_rows
        ]
        for bad in ("x", "1|2|3", "2026-13-01|4", "-1"):
            with pytest.raises(InputError, match="invalid page cursor"):
                editions.list_editions(s, cursor=bad)
        with pytest.raises(InputError, match="invalid page cursor"):
            log.list_deliveries(s, cursor="9" * 40)


def test_the_cli_says_how_to_see_the_next_page(
    run_cli: CliRun, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as s:
        factories.subscribers(s, 5)
    first = run_cli("subscribers", "list", "--limit", "2", "--format", "json")
    hint = [line for line in first.stderr.splitlines() if "--after" in line]
    assert len(hint) == 1
    cursor = hint[0].split("--after ", 1)[1].strip("'")
    second = run_cli("subscribers", "list", "--limit", "2", "--after", cursor, "--format", "json")
    assert first.stdout != second.stdout
    bad = run_cli("subscribers", "list", "--after", "nonsense", expect=2)
    assert "invalid page cursor" in bad.output
