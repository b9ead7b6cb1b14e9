"""Special editions: a one-off (breaking news) from a Markdown or MJML file.

A special edition is an ``Edition`` of kind ``special`` (any number per newsletter
and date) whose content is frozen when it is created, after the same pre-send
checks as a regular issue. It goes to the newsletter's audience through the normal
ledger: ``newsletter send --edition ID`` (or ``--at TIME``).

* Markdown (``.md``, ``.markdown``) is rendered with markdown-it-py with raw HTML
  disabled, sanitised with nh3, and placed in ``templates/special.mjml.j2``.
* MJML (``.mjml``) is compiled as written, closed with the standard footer
  (``templates/partials/footer.mjml.j2``) before ``</mj-body>``.

Both go through the renderer's path (:func:`newsletter.content.render.render_special`):
the same MJML compile and CSS inlining as the briefing, and a text part from
``templates/special.txt.j2`` with the body's text (the one HTML-to-text conversion).

Both get the footer every message must carry, so the pre-send checks pass without
the author having to know the placeholders.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import nh3
from markdown_it import MarkdownIt
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.content import render, types
from newsletter.content.editions import local_today
from newsletter.errors import InputError
from newsletter.models import Edition, EditionKind, EditionStatus, utcnow

MARKDOWN_SUFFIXES = (".md", ".markdown")
MJML_SUFFIXES = (".mjml",)
MAX_SOURCE_BYTES = 512 * 1024

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "em", "h1", "h2", "h3", "h4", "hr", "i",
    "img", "li", "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title", "width", "height"}}


def markdown_to_html(source: str) -> str:
    """Markdown → sanitised HTML (raw HTML in the source is escaped, then nh3 cleans)."""
    rendered = MarkdownIt("commonmark", {"html": False}).enable("table").render(source)
    return nh3.clean(
        rendered,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel=None,
    )


def load_special(
    path: Path, *, settings: Settings, slug: str, subject: str, now: datetime | None = None
) -> types.RenderedEdition:
    """Read and render a Markdown or MJML file, then run the pre-send checks.

    Raises InputError (unreadable, wrong type, empty subject), RenderError (MJML
    syntax, one line naming the file), CheckFailed (relative links, missing alt…).
    """
    newsletter = settings.newsletter(slug)
    subject = " ".join(subject.split())
    if not subject:
        raise InputError("the subject must not be empty", code="special.no_subject")
    suffix = path.suffix.lower()
    if suffix not in MARKDOWN_SUFFIXES + MJML_SUFFIXES:
        raise InputError(f"{path}: expected a Markdown (.md) or MJML (.mjml) file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_SOURCE_BYTES:
        raise InputError(f"{path} is over {MAX_SOURCE_BYTES // 1024} KB")
    try:
        source = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None
    if not source.strip():
        raise InputError(f"{path} is empty")
    markdown = suffix in MARKDOWN_SUFFIXES
    content = render.render_special(
        subject=subject,
        slug=slug,
        name=newsletter.name,
        issue_date=local_today(newsletter, now),
        brand=types.Brand.from_settings(settings),
        templates_dir=settings.templates_path,
        body_html=markdown_to_html(source) if markdown else None,
        mjml=None if markdown else source,
        filename=path.name,
    )
    render.check_or_raise(content)
    return content


def create_special_edition(
    session: Session,
    *,
    settings: Settings,
    slug: str,
    path: Path,
    subject: str,
    now: datetime | None = None,
) -> Edition:
    """Create a special edition of ``slug`` from ``path`` with its content frozen."""
    now = now or utcnow()
    content = load_special(path, settings=settings, slug=slug, subject=subject, now=now)
    edition = Edition(
        newsletter=slug,
        issue_date=local_today(settings.newsletter(slug), now),
        kind=EditionKind.SPECIAL,
        status=EditionStatus.BUILT,
        subject=content.subject,
        html=content.html,
        text=content.text,
    )
    session.add(edition)
    session.flush()
    return edition
