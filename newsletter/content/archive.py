"""The archive: the editions readers may read on the web, and their web versions.

Only editions whose send started appear (never a built, held or cancelled one).
A web version shows the edition's frozen stories, or a special edition's body, with
no per-recipient data: its links to leave or to change preferences go to pages that
ask for the link in one's own email, so no working token is ever published.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import nh3
from sqlalchemy import select
from sqlalchemy.orm import Session, defer, selectinload

from newsletter import urls
from newsletter.config import Settings
from newsletter.content import editions, render, types
from newsletter.db import Page
from newsletter.errors import NotFoundError
from newsletter.models import Edition, EditionKind

#: What a special edition's email HTML keeps on the web (no styles, scripts, forms).
_SPECIAL_TAGS = {
    "a", "b", "blockquote", "br", "div", "em", "h1", "h2", "h3", "h4", "hr", "i", "img",
    "li", "ol", "p", "strong", "ul",
}  # fmt: skip


@dataclass(frozen=True)
class ArchivedEdition:
    """One edition's web version."""

    id: int
    newsletter: str
    newsletter_name: str
    issue_date: date
    date_long: str
    subject: str
    stories: tuple[types.StoryView, ...]
    special_html: str | None  # a special edition's body, cleaned


def published(
    session: Session, *, slug: str, limit: int = 20, cursor: str | None = None
) -> Page[editions.EditionRow]:
    """A newsletter's published editions, newest first."""
    return editions.list_editions(session, slug=slug, limit=limit, cursor=cursor, published=True)


def latest(session: Session, *, slug: str) -> editions.EditionRow | None:
    """The newsletter's newest published edition, if any."""
    page = published(session, slug=slug, limit=1)
    return page.items[0] if page.items else None


def web_version(
    session: Session, *, settings: Settings, slug: str, issue_date: date
) -> ArchivedEdition:
    """The web version of ``slug``'s edition of ``issue_date`` (the regular one, else
    the newest special). Raises NotFoundError when none was published that day."""
    newsletter = settings.newsletter(slug)
    query = (
        select(Edition)
        .options(defer(Edition.text), defer(Edition.html), selectinload(Edition.items))
        .where(
            Edition.newsletter == slug,
            Edition.issue_date == issue_date,
            Edition.status.in_(editions.PUBLISHED),
            Edition.send_started_at.is_not(None),
        )
        .order_by((Edition.kind == EditionKind.REGULAR).desc(), Edition.id.desc())
        .limit(1)
    )
    edition = session.scalars(query).one_or_none()
    if edition is None:
        raise NotFoundError(
            f"no published edition of {slug} for {issue_date}",
            code="archive.not_found",
            slug=slug,
        )
    special = None
    if edition.kind is EditionKind.SPECIAL and edition.html:
        special = _clean_special(edition.html, settings)
    view = editions.edition_view(edition, settings) if edition.items else None
    return ArchivedEdition(
        id=edition.id,
        newsletter=slug,
        newsletter_name=newsletter.name,
        issue_date=edition.issue_date,
        date_long=render.format_date_long(edition.issue_date),
        subject=edition.subject,
        stories=view.stories if view else (),
        special_html=special,
    )


def _clean_special(html: str, settings: Settings) -> str:
    """A special edition's body for the web: its markup cleaned, its placeholders
    filled with values that name nobody and unsubscribe nobody."""
    base = settings.site.base_url
    body = html.split("<body", 1)[-1].split(">", 1)[-1].rsplit("</body>", 1)[0]
    values = {
        types.NAME: types.DEFAULT_NAME,
        types.UNSUBSCRIBE_URL: base + urls.UNSUBSCRIBE.rstrip("/"),
        types.PREFERENCES_URL: base + urls.PREFERENCES.rstrip("/"),
    }
    for placeholder, value in values.items():
        body = body.replace(placeholder, value)
    return str(
        nh3.clean(
            body,
            tags=_SPECIAL_TAGS,
            attributes={"a": {"href"}, "img": {"src", "alt"}},
            url_schemes={"http", "https", "mailto"},
        )
    )
