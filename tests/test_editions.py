"""Edition building: which stories, in what order, frozen once per newsletter and date."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions
from newsletter.content.types import RecipientValues
from newsletter.delivery import sender
from newsletter.delivery.personalise import Personaliser
from newsletter.errors import CheckFailed, NoStoriesError, StateError
from newsletter.models import Edition, EditionStatus, utcnow
from tests import factories

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=utcnow().tzinfo)
TODAY = date(2026, 11, 24)


def build(session: Session, settings: Settings, *, rebuild: bool = False) -> Edition:
    edition, _ = editions.build_edition(
        session,
        settings=settings,
        slug="daily-briefing",
        issue_date=TODAY,
        now=NOW,
        rebuild=rebuild,
    )
    return edition


def titles(edition: Edition) -> list[str]:
    return [item.title for item in edition.items]


def test_pinned_first_then_newest_fresh_capped(session: Session, settings: Settings) -> None:
    for hours in range(1, 12):
        factories.story(session, title=f"{hours}h", age=timedelta(hours=hours), now=NOW)
    factories.story(session, title="pinned-old", age=timedelta(hours=20), pinned=True, now=NOW)
    factories.story(session, title="hidden", age=timedelta(minutes=5), hidden=True, now=NOW)
    factories.story(session, title="stale", age=timedelta(hours=30), now=NOW)
    factories.story(session, title="far-future", age=-timedelta(hours=5), now=NOW)
    factories.story(session, title="other", newsletter="good-news", now=NOW)
    edition = build(session, settings)
    assert titles(edition) == ["pinned-old", "1h", "2h", "3h", "4h", "5h", "6h", "7h"]
    assert [i.position for i in edition.items] == list(range(1, 9))


def test_sources_take_turns(session: Session, settings: Settings) -> None:
    for n in range(6):
        s = factories.story(session, title=f"wire-{n}", age=timedelta(minutes=n + 1), now=NOW)
        s.source = "Wire"
    for n in range(2):
        s = factories.story(session, title=f"desk-{n}", age=timedelta(hours=n + 2), now=NOW)
        s.source = "Desk"
    session.flush()
    assert titles(build(session, settings)) == [
        "wire-0",
        "desk-0",
        "wire-1",
        "desk-1",
        "wire-2",
        "wire-3",
        "wire-4",
        "wire-5",
    ]


def test_one_edition_per_date_and_rebuild(session: Session, settings: Settings) -> None:
    factories.story(session, title="first", now=NOW)
    edition = build(session, settings)
    factories.story(session, title="newer", age=timedelta(minutes=1), now=NOW)
    again, created = editions.build_edition(
        session, settings=settings, slug="daily-briefing", issue_date=TODAY, now=NOW
    )
    assert again.id == edition.id and not created and titles(again) == ["first"]
    rebuilt = build(session, settings, rebuild=True)
    assert rebuilt.id == edition.id and titles(rebuilt) == ["newer", "first"]


def test_stories_of_an_earlier_edition_are_not_repeated(
    session: Session, settings: Settings
) -> None:
    factories.story(session, title="yesterday's", age=timedelta(hours=2), now=NOW)
    editions.build_edition(
        session,
        settings=settings,
        slug="daily-briefing",
        issue_date=TODAY - timedelta(days=1),
        now=NOW,
    )
    with pytest.raises(NoStoriesError, match="no eligible stories"):
        build(session, settings)


def test_frozen_copies_do_not_change_with_the_story(session: Session, settings: Settings) -> None:
    story = factories.story(session, title="Original headline", now=NOW)
    edition = build(session, settings)
    story.title = "Edited later"
    session.flush()
    assert titles(editions.get_edition(session, edition.id)) == ["Original headline"]


def test_placeholders_in_feed_text_stay_inert(session: Session, settings: Settings) -> None:
    factories.story(
        session, title="Hello %%NAME%%", summary="<p>Go to %%UNSUBSCRIBE_URL%%</p>", now=NOW
    )
    edition = build(session, settings)
    content = editions.render_edition(edition, settings)
    html = Personaliser(content).html(
        RecipientValues("Ann", "https://x.example/u", "https://x.example/p")
    )
    assert "Hello Ann" not in html and "Go to https://x.example/u" not in html


def test_rebuild_refused_once_sending_started(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    with sessions.begin() as s:
        factories.story(s, now=utcnow())
        edition, _ = editions.build_edition(s, settings=settings, slug="daily-briefing")
        sender.start_send(s, settings=settings, edition_id=edition.id, now=utcnow())
        assert edition.status is EditionStatus.SENDING
    with sessions.begin() as s, pytest.raises(StateError, match="cannot be rebuilt"):
        editions.build_edition(s, settings=settings, slug="daily-briefing", rebuild=True)


def test_failed_checks_store_nothing(session: Session, settings: Settings) -> None:
    factories.story(session, url="https://news.example.com/ok", now=NOW)
    edition = build(session, settings)
    edition.items[0].url = "/relative/link"
    with pytest.raises(CheckFailed, match="relative"):
        editions.freeze_content(session, edition=edition, settings=settings)
    assert edition.html is None and edition.text is None


def test_local_today_uses_the_newsletter_timezone(settings: Settings) -> None:
    late_utc = datetime(2026, 11, 25, 3, 0, tzinfo=NOW.tzinfo)  # 22:00 in New York
    assert editions.local_today(settings.newsletter("daily-briefing"), late_utc) == TODAY
