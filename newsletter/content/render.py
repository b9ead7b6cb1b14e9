"""Pure rendering: an edition's data in, ``RenderedEdition(subject, html, text)`` out.

The HTML part is Jinja2 → MJML (mjml-python) → CSS inlining (css-inline); the text
part is its own Jinja2 template. Both are rendered once per edition and still carry
the per-recipient placeholders (:mod:`newsletter.content.types`), which the delivery
wing fills in for each subscriber (:mod:`newsletter.delivery.personalise`).

:func:`check_rendered` runs the pre-send checks (size, links, alt text,
unsubscribe link). Nothing here touches the database, the network or the clock.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, replace
from datetime import date
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import css_inline
import jinja2
from markupsafe import Markup
from mjml import mjml2html

from newsletter import urls
from newsletter.content.sanitise import html_to_text
from newsletter.content.types import (
    NAME,
    PLACEHOLDERS,
    PREFERENCES_URL,
    UNSUBSCRIBE_URL,
    Brand,
    EditionView,
    RecipientValues,
    RenderedEdition,
)
from newsletter.errors import CheckFailed, InputError, RenderError

#: Gmail clips messages over ~102 KB; we refuse to send anything over 90 KB.
MAX_HTML_BYTES = 90 * 1024
MAX_SUBJECT_CHARS = 150

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


# ----- data in and out -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _NewsletterContext:
    slug: str
    name: str
    description: str


@dataclass(frozen=True, slots=True)
class _EditionContext:
    id: int | None
    date: date
    date_long: str
    story_count: int
    archive_url: str  # its web version


# The templates see the placeholders as the recipient's values, so they flow
# through Jinja, MJML and css-inline untouched (they contain nothing to escape).
_PLACEHOLDER_RECIPIENT = RecipientValues(NAME, UNSUBSCRIBE_URL, PREFERENCES_URL)


# ----- rendering -------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _environment(templates_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("mjml.j2", "html.j2", "mjml", "html"),
            disabled_extensions=("txt.j2", "txt"),
            default_for_string=False,
            default=True,
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@functools.lru_cache(maxsize=64)
def _subject_template(templates_dir: Path, source: str) -> jinja2.Template:
    return _environment(templates_dir).from_string(source)


# Only the CSS of <mj-style inline="inline"> is inlined, as the reference MJML
# does; MJML's own head styles (resets, media queries) stay in <style> tags.
_INLINE_STYLE = re.compile(
    r"<mj-style\b[^>]*\binline\s*=\s*[\"']inline[\"'][^>]*>(.*?)</mj-style\s*>",
    re.DOTALL | re.IGNORECASE,
)


@functools.lru_cache(maxsize=16)
def _inliner(css: str) -> css_inline.CSSInliner:
    return css_inline.CSSInliner(
        inline_style_tags=False,
        keep_style_tags=True,
        load_remote_stylesheets=False,
        extra_css=css or None,
    )


def format_date_long(day: date) -> str:
    """``Tuesday, 24 November 2026`` (English, independent of the process locale)."""
    return f"{_DAYS[day.weekday()]}, {day.day} {_MONTHS[day.month - 1]} {day.year}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:-–—") + "…"


def _where(exc: BaseException, templates_dir: Path) -> str:
    """The innermost template file and line in a Jinja traceback, if any."""
    found = ""
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            try:
                filename = os.path.relpath(filename, templates_dir)
            except ValueError:
                pass
            found = f" ({filename}, line {tb.tb_lineno})"
        tb = tb.tb_next
    return found


def _jinja_error(what: str, exc: jinja2.TemplateError, templates_dir: Path) -> RenderError:
    if isinstance(exc, jinja2.TemplateSyntaxError):
        where = f" ({exc.name or exc.filename or 'template'}, line {exc.lineno})"
        problem = f"syntax error: {exc.message}"
    elif isinstance(exc, jinja2.TemplateNotFound):
        where = ""
        problem = f"template {exc.name!r} not found in {templates_dir}"
    else:
        where = _where(exc, templates_dir)
        problem = exc.message or type(exc).__name__
    return RenderError(_one_line(f"error in {what}{where}: {problem}"))


def _context(view: EditionView, brand: Brand) -> dict[str, Any]:
    if not view.stories:
        raise RenderError(f"cannot render edition {view.id}: it has no stories")
    stories = tuple(replace(s, summary_html=Markup(s.summary_html)) for s in view.stories)
    return {
        "newsletter": _NewsletterContext(
            slug=view.newsletter_slug,
            name=view.newsletter_name,
            description=view.newsletter_description,
        ),
        "edition": _EditionContext(
            id=view.id,
            date=view.issue_date,
            date_long=format_date_long(view.issue_date),
            story_count=len(stories),
            archive_url=urls.archive(brand.base_url, view.newsletter_slug, view.issue_date),
        ),
        "lead": stories[0],
        "stories": stories,
        "more": stories[1:],
        "brand": brand,
        "recipient": _PLACEHOLDER_RECIPIENT,
        "year": view.issue_date.year,
    }


def render_edition(
    view: EditionView,
    *,
    brand: Brand,
    subject_template: str,
    template: str,
    templates_dir: Path,
) -> RenderedEdition:
    """Render an edition's subject, HTML (``{template}.mjml.j2``) and text (``.txt.j2``).

    The subject template sees ``newsletter``, ``edition``, ``lead`` and ``stories``;
    the result is one line of plain text, at most 150 characters. The body templates
    also see ``brand``, ``recipient`` (placeholders), ``more`` and ``year``.
    Raises RenderError (one line, naming the template) on any template or MJML error.
    """
    templates_dir = Path(templates_dir)
    ctx = _context(view, brand)
    subject = _subject(ctx, subject_template, templates_dir)
    html = _compile_mjml(_render_file(f"{template}.mjml.j2", ctx, templates_dir), template)
    text = _render_file(f"{template}.txt.j2", ctx, templates_dir)
    return RenderedEdition(subject=subject, html=html, text=_tidy_text(text))


def render_subject(
    view: EditionView, *, brand: Brand, subject_template: str, templates_dir: Path
) -> str:
    """Just the subject :func:`render_edition` would give (cheap: no MJML), so a built
    edition can show its subject before its content is rendered. Raises RenderError."""
    templates_dir = Path(templates_dir)
    return _subject(_context(view, brand), subject_template, templates_dir)


def _subject(ctx: dict[str, Any], subject_template: str, templates_dir: Path) -> str:
    try:
        subject_ctx = {k: ctx[k] for k in ("newsletter", "edition", "lead", "stories")}
        raw_subject = _subject_template(templates_dir, subject_template).render(subject_ctx)
    except jinja2.TemplateError as exc:
        raise _jinja_error(f"subject template {subject_template!r}", exc, templates_dir) from None
    return _shorten(_one_line(raw_subject), MAX_SUBJECT_CHARS)


def _special_context(
    *, subject: str, slug: str, name: str, issue_date: date, brand: Brand
) -> dict[str, Any]:
    return {
        "newsletter": _NewsletterContext(slug=slug, name=name, description=""),
        "subject": subject,
        "brand": brand,
        "recipient": _PLACEHOLDER_RECIPIENT,
        "year": issue_date.year,
    }


def render_special(
    *,
    subject: str,
    slug: str,
    name: str,
    issue_date: date,
    brand: Brand,
    templates_dir: Path,
    body_html: str | None = None,
    mjml: str | None = None,
    filename: str = "the document",
) -> RenderedEdition:
    """A special edition: sanitised ``body_html`` in ``special.mjml.j2``, or a whole
    ``mjml`` document closed with the standard footer; the same compile and CSS
    inlining as the briefing, the text part from ``special.txt.j2`` with the body's
    text (the one HTML-to-text conversion). Raises RenderError, InputError (an MJML
    document without ``</mj-body>``)."""
    templates_dir = Path(templates_dir)
    ctx = _special_context(
        subject=subject, slug=slug, name=name, issue_date=issue_date, brand=brand
    )
    if mjml is None:
        body = Markup(body_html or "")
        ctx["body_html"] = body
        html = _compile_mjml(_render_file("special.mjml.j2", ctx, templates_dir), "special")
        body_text = html_to_text(str(body), links=True)
    else:
        end = mjml.rfind("</mj-body>")
        if end < 0:
            raise InputError(
                f"{filename}: not an MJML document (no </mj-body>)", code="special.not_mjml"
            )
        footer = _render_file("partials/footer.mjml.j2", ctx, templates_dir)
        html = _compile_mjml(mjml[:end] + footer + mjml[end:], filename)
        body_text = html_to_text(_compile_mjml(mjml, filename), links=True)
    ctx["body_text"] = body_text
    text = _render_file("special.txt.j2", ctx, templates_dir)
    return RenderedEdition(subject=subject, html=html, text=_tidy_text(text))


def render_letter(
    template: str,
    *,
    subject: str,
    brand: Brand,
    templates_dir: Path,
    context: dict[str, Any],
) -> RenderedEdition:
    """A one-off message (a confirmation) from ``{template}.mjml.j2`` and ``.txt.j2``.

    ``context`` must hold only values we wrote (newsletter names, links), never a
    visitor's text. Raises RenderError.
    """
    templates_dir = Path(templates_dir)
    ctx = {**context, "subject": subject, "brand": brand}
    html = _compile_mjml(_render_file(f"{template}.mjml.j2", ctx, templates_dir), template)
    text = _render_file(f"{template}.txt.j2", ctx, templates_dir)
    return RenderedEdition(subject=subject, html=html, text=_tidy_text(text))


def render_mjml_source(
    view: EditionView, *, brand: Brand, template: str, templates_dir: Path
) -> str:
    """The MJML that ``{template}.mjml.j2`` renders to, before compiling (for validators)."""
    return _render_file(f"{template}.mjml.j2", _context(view, brand), Path(templates_dir))


def _render_file(name: str, ctx: dict[str, Any], templates_dir: Path) -> str:
    try:
        return _environment(templates_dir).get_template(name).render(ctx)
    except jinja2.TemplateError as exc:
        raise _jinja_error(name, exc, templates_dir) from None


def _compile_mjml(source: str, template: str) -> str:
    name = template if "." in template or " " in template else f"{template}.mjml.j2"
    inline_css = "\n".join(m.group(1) for m in _INLINE_STYLE.finditer(source))
    source = _INLINE_STYLE.sub("", source)
    try:
        compiled = mjml2html(source, disable_comments=True, fonts={})
    except ValueError as exc:
        raise RenderError(_one_line(f"MJML error in {name}: {exc}")) from None
    try:
        return _inliner(inline_css).inline(compiled)
    except ValueError as exc:
        raise RenderError(_one_line(f"CSS inlining failed for {name}: {exc}")) from None


def _tidy_text(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


# ----- pre-send checks -------------------------------------------------------

_PLACEHOLDER_AS_URL = "https://placeholder.invalid/"
_URL_ATTRIBUTES = {"href": True, "src": False, "background": False}  # name → mailto ok
_CONDITIONAL = re.compile(r"^\s*\[if [^\]]*\]>(.*?)<!\[endif\]\s*$", re.DOTALL)


def _is_absolute_url(value: str, *, allow_mailto: bool) -> bool:
    url = value.strip()
    for placeholder in PLACEHOLDERS:
        url = url.replace(placeholder, _PLACEHOLDER_AS_URL)
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return bool(parts.netloc)
    return allow_mailto and scheme == "mailto" and bool(parts.path)


class _Audit(HTMLParser):
    """Collects bad URLs, images without alt and unsubscribe links (stdlib parser)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.bad_urls: list[str] = []
        self.images_without_alt: list[str] = []
        self.unsubscribe_links = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for attr, allow_mailto in _URL_ATTRIBUTES.items():
            if attr in values:
                value = values[attr] or ""
                if not _is_absolute_url(value, allow_mailto=allow_mailto):
                    self.bad_urls.append(f"{tag} {attr}={value!r}")
        if tag == "img" and "alt" not in values:
            self.images_without_alt.append(f"src={values.get('src')!r}")
        if tag == "a" and (values.get("href") or "").strip() == UNSUBSCRIBE_URL:
            self.unsubscribe_links += 1

    def handle_comment(self, data: str) -> None:
        # Outlook-only markup hides in conditional comments; audit it too.
        match = _CONDITIONAL.match(data)
        if match:
            inner = _Audit()
            inner.feed(match.group(1))
            inner.close()
            self.bad_urls += inner.bad_urls
            self.images_without_alt += inner.images_without_alt
            self.unsubscribe_links += inner.unsubscribe_links


def _listed(label: str, items: list[str], limit: int = 5) -> list[str]:
    unique = list(dict.fromkeys(items))
    shown = [f"{label}: {item}" for item in unique[:limit]]
    if len(unique) > limit:
        shown.append(f"{label}: … and {len(unique) - limit} more")
    return shown


def check_rendered(rendered: RenderedEdition) -> list[str]:
    """Return the pre-send problems of a rendered edition (an empty list means ok).

    Checks: HTML size ≤ 90 KB, every href/src/background an absolute http(s) URL
    (mailto: for href; the placeholders count as https URLs), alt on every image,
    a non-empty subject, and the unsubscribe placeholder in both parts.
    """
    problems: list[str] = []
    if not rendered.subject.strip():
        problems.append("subject is empty")
    size = len(rendered.html.encode("utf-8"))
    if size > MAX_HTML_BYTES:
        problems.append(
            f"HTML is {size / 1024:.1f} KB ({size} bytes), over the "
            f"{MAX_HTML_BYTES // 1024} KB limit (Gmail clips messages over ~102 KB)"
        )
    audit = _Audit()
    audit.feed(rendered.html)
    audit.close()
    problems += _listed("not an absolute http(s) URL", audit.bad_urls)
    problems += _listed("image without alt attribute", audit.images_without_alt)
    if audit.unsubscribe_links == 0:
        problems.append(f'HTML has no unsubscribe link (<a href="{UNSUBSCRIBE_URL}">)')
    if UNSUBSCRIBE_URL not in rendered.text:
        problems.append(f"text part has no unsubscribe URL ({UNSUBSCRIBE_URL})")
    return problems


def check_or_raise(rendered: RenderedEdition, *, edition_id: int | None = None) -> None:
    """Run :func:`check_rendered`; raise CheckFailed listing the problems, if any."""
    problems = check_rendered(rendered)
    if problems:
        raise CheckFailed(problems, edition_id=edition_id)
