"""`newsletter stories` commands: fetch feeds, add editor's picks, list, hide, pin."""

from __future__ import annotations

from pathlib import Path

import click

from newsletter.cli.common import (
    ROW_ID,
    App,
    after_option,
    emit_rows,
    format_option,
    more_hint,
    pass_app,
)
from newsletter.config import Settings
from newsletter.content import stories
from newsletter.content.stories import FetchReport
from newsletter.errors import FeedError, InputError

DEFAULT_NEWSLETTER = "daily-briefing"
TABLE_COLUMNS = ("id", "newsletter", "kicker", "title", "source", "pinned", "hidden")
LIST_COLUMNS = (
    "id", "newsletter", "published_at", "kicker", "title", "source", "url",
    "origin", "pinned", "hidden",
)  # fmt: skip


def _newsletter_or_default(settings: Settings, slug: str | None) -> str:
    """The given newsletter (checked), else daily-briefing, else the first configured."""
    if slug is not None:
        settings.newsletter(slug)  # NotFoundError names the configured ones
        return slug
    if DEFAULT_NEWSLETTER in settings.newsletters:
        return DEFAULT_NEWSLETTER
    if not settings.newsletters:
        raise InputError("no newsletters are configured; pass --newsletter")
    return next(iter(settings.newsletters))


def _echo_report(prefix: str, report: FetchReport) -> None:
    if report.error:
        click.echo(f"{prefix}{report.feed}: failed: {report.error}", err=True)
    else:
        click.echo(
            f"{prefix}{report.feed}: {report.added} added, {report.duplicates} duplicates, "
            f"{report.skipped} skipped"
        )


@click.group("stories")
def group() -> None:
    """Fetch stories from feeds, add editor's picks, and curate them."""


@group.command("fetch")
@click.option("--newsletter", "slug", help="Only this newsletter (default: all).")
@click.option(
    "--feed",
    help="Fetch just this feed URL or file (relative to the current directory) into "
    f"one newsletter (--newsletter, default {DEFAULT_NEWSLETTER}).",
)
@pass_app
def fetch(app: App, slug: str | None, feed: str | None) -> None:
    """Fetch feeds and store new stories; exits 1 only when every feed failed."""
    settings = app.settings
    reports: list[FetchReport] = []
    if feed is not None:
        target = _newsletter_or_default(settings, slug)
        if "://" not in feed:  # a path typed on the command line is relative to the cwd
            feed = str(Path(feed).absolute())
        with app.transaction() as session:
            report = stories.fetch_feed(session, newsletter=target, source=feed, settings=settings)
        _echo_report("", report)
        reports.append(report)
    else:
        slugs = [slug] if slug is not None else list(settings.newsletters)
        for name in slugs:
            settings.newsletter(name)
            # One transaction per newsletter: a database error loses only its stories.
            with app.transaction() as session:
                done = stories.fetch_newsletter(session, newsletter=name, settings=settings)
            for report in done:
                _echo_report(f"{name}: ", report)
            if not done:
                click.echo(f"{name}: no feeds configured")
            reports.extend(done)
    if reports and all(r.error for r in reports):
        raise FeedError(f"all {len(reports)} feed(s) failed")


@group.command("add")
@click.option("--title", required=True, help="Headline.")
@click.option("--url", required=True, help="Absolute http(s) link to the story.")
@click.option("--summary", default="", help="Short summary (HTML allowed; sanitised).")
@click.option("--kicker", default="", help="Section label shown above the title.")
@click.option("--newsletter", "slug", help=f"Newsletter (default {DEFAULT_NEWSLETTER}).")
@click.option("--pin", is_flag=True, help="Put it first in the next edition.")
@pass_app
def add(
    app: App, title: str, url: str, summary: str, kicker: str, slug: str | None, pin: bool
) -> None:
    """Add an editor's pick; prints its id. A URL already stored is refused."""
    target = _newsletter_or_default(app.settings, slug)
    with app.transaction() as session:
        story = stories.add_story(
            session,
            newsletter=target,
            title=title,
            url=url,
            summary=summary,
            kicker=kicker,
            pin=pin,
        )
        session.flush()
        story_id = story.id
    click.echo(story_id)


@group.command("list")
@click.option("--newsletter", "slug", help="Only this newsletter.")
@click.option("--all", "include_hidden", is_flag=True, help="Include hidden stories.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@after_option
@format_option("table", "json", "csv")
@pass_app
def list_(
    app: App, slug: str | None, include_hidden: bool, limit: int, after: str | None, fmt: str
) -> None:
    """List stories, newest first."""
    if slug is not None:
        app.settings.newsletter(slug)
    with app.transaction() as session:
        page = stories.list_stories(
            session, newsletter=slug, include_hidden=include_hidden, limit=limit, cursor=after
        )
        rows = [{c: getattr(s, c) for c in LIST_COLUMNS} for s in page.items]
    emit_rows(rows, TABLE_COLUMNS if fmt == "table" else LIST_COLUMNS, fmt, title="Stories")
    more_hint(page.cursor)


def _toggle(app: App, story_id: int, action: str) -> None:
    sent_in: tuple[int, ...] = ()
    with app.transaction() as session:
        if action == "hidden":
            stories.hide_story(session, story_id=story_id)
        elif action == "shown":
            stories.unhide_story(session, story_id=story_id)
        else:
            pinned = stories.pin_story(session, story_id=story_id, pinned=action == "pinned")
            sent_in = pinned.sent_in
    click.echo(f"story {story_id} {action}")
    if sent_in and action == "pinned":
        which = ("edition " if len(sent_in) == 1 else "editions ") + ", ".join(map(str, sent_in))
        click.echo(
            f"note: story {story_id} was already sent in {which}; editions never repeat a "
            "story, so it will not be in the next one",
            err=True,
        )


@group.command("hide")
@click.argument("story_id", type=ROW_ID)
@pass_app
def hide(app: App, story_id: int) -> None:
    """Hide a story so no edition picks it."""
    _toggle(app, story_id, "hidden")


@group.command("unhide")
@click.argument("story_id", type=ROW_ID)
@pass_app
def unhide(app: App, story_id: int) -> None:
    """Make a hidden story eligible again."""
    _toggle(app, story_id, "shown")


@group.command("pin")
@click.argument("story_id", type=ROW_ID)
@click.option("--off", is_flag=True, help="Unpin instead.")
@pass_app
def pin(app: App, story_id: int, off: bool) -> None:
    """Pin a story to the top of the next edition (--off to unpin)."""
    _toggle(app, story_id, "unpinned" if off else "pinned")
