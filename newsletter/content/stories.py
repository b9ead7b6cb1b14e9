"""The stories stage: fetch RSS/Atom feeds, sanitise what they say, de-duplicate.

Feeds are untrusted input. feedparser reads every RSS/Atom dialect and never raises
on bad XML (it sets ``bozo``); we decide per feed whether what it recovered is
usable. nh3 is the only HTML sanitiser (feedparser's own is switched off), and every
link that reaches the database is an absolute http(s) URL without tracking
parameters. "Never twice" is guaranteed by the table's UNIQUE(newsletter, url) and
UNIQUE(newsletter, guid): rows that already exist are counted as duplicates and
left exactly as they are (an editor may have hidden or pinned them).

Network and parsing happen before any write, so a slow feed never holds the
(SQLite single-writer) lock while it downloads.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

from sqlalchemy import Insert, Table, and_, exists, func, insert, literal, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.content import feeds
from newsletter.content.editions import CLOCK_SKEW
from newsletter.content.feeds import (
    FETCH_TIMEOUT,
    KICKER_LIMIT,
    MAX_FEED_BYTES,
    TITLE_LIMIT,
    Candidate,
    Loaded,
)
from newsletter.content.sanitise import (
    canonical_url,
    clean_summary,
    plain_text,
    summary_text,
)
from newsletter.db import Page, cursor_int, cursor_parts
from newsletter.errors import FeedError, InputError, NotFoundError
from newsletter.models import Edition, EditionStory, Story, StoryOrigin, utcnow

__all__ = [
    "FetchReport",
    "Pinned",
    "StoryFilter",
    "add_story",
    "canonical_url",
    "clean_summary",
    "fetch_feed",
    "fetch_newsletter",
    "hide_story",
    "list_stories",
    "pin_story",
    "summary_text",
    "unhide_story",
]

log = logging.getLogger(__name__)

# Core table: bulk inserts with ON CONFLICT bypass the ORM unit of work.
STORIES = cast(Table, Story.__table__)


@dataclass
class FetchReport:
    """What happened to one feed: counts, or the reason it failed."""

    feed: str
    added: int = 0
    duplicates: int = 0
    skipped: int = 0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def _chunks(items: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def _existing(
    session: Session, newsletter: str, cands: list[Candidate]
) -> tuple[set[str], set[str]]:
    """GUIDs and URLs among ``cands`` already stored for the newsletter."""
    guids = sorted({c.guid for c in cands if c.guid})
    urls = sorted({c.url for c in cands})
    found_g: set[str] = set()
    found_u: set[str] = set()
    for chunk in _chunks(guids):
        q = select(Story.guid).where(Story.newsletter == newsletter, Story.guid.in_(chunk))
        found_g.update(g for g in session.scalars(q) if g)
    for chunk in _chunks(urls):
        q = select(Story.url).where(Story.newsletter == newsletter, Story.url.in_(chunk))
        found_u.update(session.scalars(q))
    return found_g, found_u


def _insert_ignoring_conflicts(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert rows, skipping any that hit a unique constraint; returns how many went in."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    stmt: Insert
    if dialect == "sqlite":
        stmt = sqlite.insert(STORIES).on_conflict_do_nothing()
    elif dialect == "postgresql":
        stmt = postgresql.insert(STORIES).on_conflict_do_nothing()
    else:
        stmt = insert(STORIES)
    if dialect in ("sqlite", "postgresql"):
        return len(session.execute(stmt.returning(STORIES.c.id), rows).all())
    added = 0  # other databases: one savepoint per row
    for row in rows:
        try:
            with session.begin_nested():
                session.execute(stmt, row)
            added += 1
        except IntegrityError:
            pass
    return added


def _store(
    session: Session, *, newsletter: str, cands: list[Candidate], now: datetime
) -> tuple[int, int]:
    """Insert new candidates; returns (added, duplicates)."""
    seen_g: set[str] = set()
    seen_u: set[str] = set()
    unique: list[Candidate] = []
    for c in cands:  # the same story twice within this batch
        if c.url in seen_u or (c.guid and c.guid in seen_g):
            continue
        seen_u.add(c.url)
        if c.guid:
            seen_g.add(c.guid)
        unique.append(c)
    old_g, old_u = _existing(session, newsletter, unique)
    fresh = [c for c in unique if c.url not in old_u and not (c.guid and c.guid in old_g)]
    rows = [
        {
            "newsletter": newsletter,
            "guid": c.guid,
            "url": c.url,
            "title": c.title,
            "summary": c.summary,
            "kicker": c.kicker,
            "source": c.source,
            "origin": StoryOrigin.FEED,
            "published_at": c.published_at,
            "fetched_at": now,
            "pinned": False,
            "hidden": False,
        }  # fmt: skip
        for c in fresh
    ]
    # The constraints, not the query above, are the guarantee: a concurrent fetch
    # may have inserted the same story in between.
    added = _insert_ignoring_conflicts(session, rows)
    return added, len(cands) - added


def _log_report(report: FetchReport) -> None:
    if report.error:
        log.warning("%s: %s", report.feed, report.error)
        return
    for warning in report.warnings:
        log.warning("%s: %s", report.feed, warning)
    # DEBUG, not INFO: the caller reports each feed's counts once (the CLI prints a
    # line per feed, the scheduler records them in the run).
    log.debug(
        "%s: %d added, %d duplicates, %d skipped",
        report.feed, report.added, report.duplicates, report.skipped,
    )  # fmt: skip


def fetch_feed(
    session: Session,
    *,
    newsletter: str,
    source: str,
    settings: Settings,
    now: datetime | None = None,
    timeout: float = FETCH_TIMEOUT,
    max_bytes: int = MAX_FEED_BYTES,
) -> FetchReport:
    """Fetch one feed (http(s) URL or path) into ``newsletter``'s stories.

    Never raises for feed problems (unreachable, HTTP error, not a feed, no usable
    entries): the reason is in ``FetchReport.error``. Raises NotFoundError for an
    unknown newsletter and lets database errors through. Does not commit.
    """
    settings.newsletter(newsletter)
    now = now or utcnow()
    report = FetchReport(feed=source)
    try:
        loaded = feeds.load(
            source, settings=settings, now=now, timeout=timeout, max_bytes=max_bytes
        )
    except FeedError as exc:
        report.error = str(exc)
    else:
        report.skipped, report.warnings = loaded.skipped, loaded.warnings
        report.added, report.duplicates = _store(
            session, newsletter=newsletter, cands=loaded.candidates, now=now
        )
    _log_report(report)
    return report


def fetch_newsletter(
    session: Session,
    *,
    newsletter: str,
    settings: Settings,
    now: datetime | None = None,
    timeout: float = FETCH_TIMEOUT,
) -> list[FetchReport]:
    """Fetch every feed configured for ``newsletter``; one failing feed never stops the rest.

    All feeds are downloaded and parsed first, then stored, so the write
    transaction stays short. Returns one report per feed, in configured order.
    """
    sources = settings.newsletter(newsletter).feeds
    now = now or utcnow()
    loaded: list[tuple[FetchReport, Loaded | None]] = []
    for source in sources:
        report = FetchReport(feed=source)
        try:
            loaded.append(
                (
                    report,
                    feeds.load(
                        source,
                        settings=settings,
                        now=now,
                        timeout=timeout,
                        max_bytes=MAX_FEED_BYTES,
                    ),
                )
            )
        except FeedError as exc:
            report.error = str(exc)
            loaded.append((report, None))
    for report, result in loaded:
        if result is not None:
            report.skipped, report.warnings = result.skipped, result.warnings
            report.added, report.duplicates = _store(
                session, newsletter=newsletter, cands=result.candidates, now=now
            )
        _log_report(report)
    return [report for report, _ in loaded]


# ---------------------------------------------------------------- editor operations


def add_story(
    session: Session,
    *,
    newsletter: str,
    title: str,
    url: str,
    summary: str = "",
    kicker: str = "",
    pin: bool = False,
    now: datetime | None = None,
) -> Story:
    """Add an editor's pick (published now). Does not commit.

    Raises InputError for an empty title or a URL that is not absolute http(s), and
    for a URL already stored for the newsletter (the message names that story's id;
    pin it with ``pin_story`` instead of adding it again).
    """
    clean_url = canonical_url(url)
    if clean_url is None:
        raise InputError(
            f"invalid story URL {url!r}: use an absolute http(s) URL", code="story.bad_url", url=url
        )
    clean_title = plain_text(title, TITLE_LIMIT)
    if not clean_title:
        raise InputError("a story needs a title", code="story.no_title")
    existing = session.scalar(
        select(Story.id).where(Story.newsletter == newsletter, Story.url == clean_url)
    )
    if existing is not None:
        raise InputError(
            f"{clean_url} is already story {existing} in {newsletter}",
            code="story.duplicate",
            story_id=existing,
        )
    now = now or utcnow()
    story = Story(
        newsletter=newsletter,
        guid=None,
        url=clean_url,
        title=clean_title,
        summary=clean_summary(summary),
        kicker=plain_text(kicker, KICKER_LIMIT),
        source=urlsplit(clean_url).hostname or "",
        origin=StoryOrigin.EDITOR,
        published_at=now,
        fetched_at=now,
        pinned=pin,
        hidden=False,
    )
    try:
        with session.begin_nested():  # a concurrent add of the same URL
            session.add(story)
    except IntegrityError:
        raise InputError(
            f"{clean_url} is already a story in {newsletter}", code="story.duplicate"
        ) from None
    return story


class StoryFilter(enum.StrEnum):
    """Which stories a listing shows (:func:`list_stories`)."""

    FRESH = "fresh"  # what the next edition picks from: in the window, not hidden, unused
    PINNED = "pinned"
    HIDDEN = "hidden"
    USED = "used"  # frozen into an edition of its newsletter already


def list_stories(
    session: Session,
    *,
    newsletter: str | None = None,
    include_hidden: bool = False,
    only: StoryFilter | None = None,
    settings: Settings | None = None,
    now: datetime | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Page[Story]:
    """Stories newest first (undated ones by when they were fetched); ``cursor`` continues.

    ``only`` narrows the listing: FRESH is what :func:`newsletter.content.editions.
    select_stories` would consider now (not hidden, inside the newsletter's freshness
    window, in no edition yet) and needs ``newsletter`` and ``settings``; HIDDEN lists
    hidden stories whatever ``include_hidden`` says; PINNED and USED respect it.
    Raises InputError (a bad cursor, FRESH without a newsletter) and NotFoundError
    (FRESH for an unknown newsletter).
    """
    newest = func.coalesce(Story.published_at, Story.fetched_at)
    q = select(Story).order_by(newest.desc(), Story.id.desc()).limit(limit + 1)
    if newsletter is not None:
        q = q.where(Story.newsletter == newsletter)
    if only is StoryFilter.HIDDEN:
        q = q.where(Story.hidden.is_(True))
    elif not include_hidden or only is StoryFilter.FRESH:
        q = q.where(Story.hidden.is_(False))
    used = exists().where(
        EditionStory.story_id == Story.id,
        EditionStory.edition_id == Edition.id,
        Edition.newsletter == Story.newsletter,
    )
    if only is StoryFilter.PINNED:
        q = q.where(Story.pinned.is_(True))
    elif only is StoryFilter.USED:
        q = q.where(used)
    elif only is StoryFilter.FRESH:
        if newsletter is None or settings is None:
            raise InputError("fresh stories are per newsletter: name one", code="story.fresh")
        hours = settings.newsletter(newsletter).freshness_hours
        at = now or utcnow()
        q = q.where(
            newest >= literal(at - timedelta(hours=hours), Story.fetched_at.type),
            newest <= literal(at + CLOCK_SKEW, Story.fetched_at.type),
            ~used,
        )
    if cursor is not None:
        when_text, id_text = cursor_parts(cursor, 2)
        try:
            when = datetime.fromisoformat(when_text)
        except ValueError:
            raise InputError(f"invalid page cursor {cursor!r}", code="input.cursor") from None
        last = cursor_int(id_text)
        at_cursor = literal(when, Story.fetched_at.type)
        q = q.where(or_(newest < at_cursor, and_(newest == at_cursor, Story.id < last)))
    found = list(session.scalars(q))
    rows = found[:limit]
    if len(found) <= limit:
        return Page(rows, None)
    tail = rows[-1]
    when = tail.published_at or tail.fetched_at
    return Page(rows, f"{when.isoformat()}|{tail.id}")


def _story(session: Session, story_id: int) -> Story:
    story = session.get(Story, story_id)
    if story is None:
        raise NotFoundError(
            f"no story with id {story_id}", code="story.not_found", story_id=story_id
        )
    return story


def hide_story(session: Session, *, story_id: int, hidden: bool = True) -> Story:
    """Hide a story from edition building (``hidden=False`` shows it again)."""
    story = _story(session, story_id)
    story.hidden = hidden
    return story


def unhide_story(session: Session, *, story_id: int) -> Story:
    """Make a hidden story eligible again."""
    return hide_story(session, story_id=story_id, hidden=False)


@dataclass(frozen=True)
class Pinned:
    """What :func:`pin_story` did: the story, and the editions of its newsletter that
    already sent it (an edition never repeats a story another one carried, so a pin
    does not bring it back)."""

    story: Story
    sent_in: tuple[int, ...] = ()


def pin_story(session: Session, *, story_id: int, pinned: bool = True) -> Pinned:
    """Pin a story so the edition builder puts it first (``pinned=False`` unpins).

    Returns the story with the ids of the editions that already sent it (sending
    started), oldest first. Raises NotFoundError."""
    story = _story(session, story_id)
    story.pinned = pinned
    sent = select(EditionStory.edition_id).join(Edition, Edition.id == EditionStory.edition_id)
    sent = sent.where(
        EditionStory.story_id == story.id,
        Edition.newsletter == story.newsletter,
        Edition.send_started_at.is_not(None),
    )
    return Pinned(story, tuple(session.scalars(sent.order_by(EditionStory.edition_id))))
