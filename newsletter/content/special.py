"""Special editions: a one-off (breaking news) from a Markdown or MJML file.

A special edition is an ``Edition`` of kind ``special`` (any number per newsletter
and date) whose content is frozen when it is created, after the same pre-send
checks as a regular issue. It goes to the newsletter's audience through the normal
ledger: ``newsletter send --edition ID`` (or ``--at TIME``).

* Markdown (``.md``, ``.markdown``) is rendered with markdown-it-py with raw HTML
  disabled, then sanitised with nh3, and placed in a simple MJML layout; the text
  part is the Markdown source itself.
* MJML (``.mjml``) is compiled as written; the standard footer (unsubscribe and
  preferences links, postal address) is added before ``</mj-body>``, and the text
  part is taken from the compiled HTML.

Both get the footer every message must carry, so the pre-send checks pass without
the author having to know the placeholders.
"""

from __future__ import annotations

import html as html_lib
import re
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import nh3
from markdown_it import MarkdownIt
from mjml import mjml2html
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.content import render, types
from newsletter.content.editions import local_today
from newsletter.errors import InputError, RenderError
from newsletter.models import Edition, EditionKind, EditionStatus, utcnow

MARKDOWN_SUFFIXES = (".md", ".markdown")
MJML_SUFFIXES = (".mjml",)
MAX_SOURCE_BYTES = 512 * 1024

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "em", "h1", "h2", "h3", "h4", "hr", "i",
    "img", "li", "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title", "width", "height"}}

_LAYOUT = """<mjml lang="en">
  <mj-head>
    <mj-title>{title}</mj-title>
    <mj-attributes>
      <mj-all font-family="Georgia, 'Times New Roman', Times, serif" />
      <mj-text color="#1f2328" font-size="17px" line-height="1.6" padding="0px 32px" />
    </mj-attributes>
  </mj-head>
  <mj-body background-color="#f4f1ea" width="600px">
    <mj-section background-color="#ffffff" padding="28px 0px 20px 0px"
                border-top="4px solid #a8321e">
      <mj-column>
        <mj-text font-size="13px" font-weight="bold" color="#a8321e"
                 padding="0px 32px 8px 32px">{name}</mj-text>
        <mj-text>{body}</mj-text>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>
"""

_META = 'font-size="13px" line-height="1.5" color="#5c6370" align="center"'
_LINK = 'style="color:#5c6370;"'
_FOOTER = f"""    <mj-section background-color="#f4f1ea" padding="28px 0px 36px 0px">
      <mj-column>
        <mj-text {_META} padding="0px 32px">You are receiving {{name}} because you
          subscribed at <a href="{{base}}" {_LINK}>{{site}}</a>.</mj-text>
        <mj-text {_META} padding="12px 32px 0px 32px"><a href="{{unsubscribe}}" {_LINK}
          >Unsubscribe</a> &#160;·&#160; <a href="{{preferences}}" {_LINK}
          >Manage your preferences</a></mj-text>
        <mj-text {_META} padding="12px 32px 0px 32px">{{address}}</mj-text>
      </mj-column>
    </mj-section>
"""

_TEXT_FOOTER = """
------------------------------------------------------------------------
You are receiving {name} because you subscribed at {site}.

Unsubscribe: {unsubscribe}
Preferences: {preferences}

{address}
"""


class _Text(HTMLParser):
    """Readable text from compiled HTML: skips head, style and script; blocks → lines."""

    _SKIP = {"head", "style", "script", "title"}
    _BLOCK = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "table", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        self._href = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")
        if tag == "a" and not self._skipping:
            self._href = dict(attrs).get("href") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href.startswith(("http://", "https://")):
            self.parts.append(f" <{self._href}>")
            self._href = ""
        if tag in self._SKIP:
            self._skipping = max(self._skipping - 1, 0)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = (line.strip() for line in "".join(self.parts).splitlines())
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def _footer_values(settings: Settings, name: str) -> dict[str, str]:
    base = settings.site.base_url
    return {
        "name": name,
        "base": base,
        "site": base.split("//", 1)[-1],
        "unsubscribe": types.UNSUBSCRIBE_URL,
        "preferences": types.PREFERENCES_URL,
        "address": settings.sender.postal_address,
    }


def _compile(source: str, filename: str) -> str:
    try:
        return str(mjml2html(source, disable_comments=True, fonts={}))
    except ValueError as exc:
        raise RenderError(" ".join(f"MJML error in {filename}: {exc}".split())) from None


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


def render_markdown(
    source: str, *, settings: Settings, newsletter_name: str, subject: str
) -> types.RenderedEdition:
    """A Markdown document as a complete email (subject, HTML, text) with the footer."""
    escaped = {
        k: html_lib.escape(v, quote=True)
        for k, v in _footer_values(settings, newsletter_name).items()
    }
    layout = _LAYOUT.format(
        title=html_lib.escape(subject), name=escaped["name"], body=markdown_to_html(source)
    )
    mjml = layout.replace("  </mj-body>", _FOOTER.format(**escaped) + "  </mj-body>")
    html = _compile(mjml, "the Markdown layout")
    text = source.strip() + "\n" + _TEXT_FOOTER.format(**_footer_values(settings, newsletter_name))
    return types.RenderedEdition(subject=subject, html=html, text=text)


def render_mjml(
    source: str, *, filename: str, settings: Settings, newsletter_name: str, subject: str
) -> types.RenderedEdition:
    """An MJML document compiled as written, with the standard footer added."""
    end = source.rfind("</mj-body>")
    if end < 0:
        raise InputError(f"{filename}: not an MJML document (no </mj-body>)")
    values = _footer_values(settings, newsletter_name)
    escaped = {k: html_lib.escape(v, quote=True) for k, v in values.items()}
    html = _compile(source[:end] + _FOOTER.format(**escaped) + source[end:], filename)
    parser = _Text()
    parser.feed(html)
    parser.close()
    footer_start = parser.text().rfind("You are receiving")
    body = parser.text()[:footer_start].strip() if footer_start > 0 else parser.text()
    text = body + "\n" + _TEXT_FOOTER.format(**values)
    return types.RenderedEdition(subject=subject, html=html, text=text)


def load_special(
    path: Path, *, settings: Settings, slug: str, subject: str
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
    if suffix in MARKDOWN_SUFFIXES:
        content = render_markdown(
            source, settings=settings, newsletter_name=newsletter.name, subject=subject
        )
    else:
        content = render_mjml(
            source,
            filename=path.name,
            settings=settings,
            newsletter_name=newsletter.name,
            subject=subject,
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
    content = load_special(path, settings=settings, slug=slug, subject=subject)
    edition = Edition(
        newsletter=slug,
        issue_date=local_today(settings.newsletter(slug), now or utcnow()),
        kind=EditionKind.SPECIAL,
        status=EditionStatus.BUILT,
        subject=content.subject,
        html=content.html,
        text=content.text,
    )
    session.add(edition)
    session.flush()
    return edition
