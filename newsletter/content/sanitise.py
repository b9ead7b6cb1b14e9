"""Sanitising untrusted feed text: safe summary HTML, plain text, canonical URLs.

nh3 is the only HTML sanitiser; every link it lets through is an absolute http(s)
URL without tracking parameters (``canonical_url``). Used by the stories stage on
the way in and by the edition builder again when freezing (``clean_summary`` is
idempotent).
"""

from __future__ import annotations

import functools
import html
import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

import nh3

SUMMARY_TEXT_LIMIT = 600
URL_LIMIT = 2000
# Raw HTML beyond this is never shown; cutting first bounds sanitiser work.
SUMMARY_INPUT_LIMIT = 100_000

SUMMARY_TAGS = {"p", "br", "a", "strong", "b", "em", "i", "ul", "ol", "li", "blockquote"}
# Tags whose *content* is dropped too, not only the tag (code, styles, embedded docs).
DROP_CONTENT_TAGS = {
    "script", "style", "template", "noscript", "iframe", "object", "svg", "math",
    "title", "head", "textarea", "select",
}  # fmt: skip
TRACKING_PARAMS = {
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "igshid",
    "mc_cid", "mc_eid", "wt_mc", "wt_zmc", "_ga", "_gl", "_hsenc", "_hsmi", "mkt_tok",
    "ref", "ref_src", "ref_url", "cmpid", "ncid", "oly_anon_id", "oly_enc_id",
    "vero_id", "rb_clickid", "s_cid", "spm",
}  # fmt: skip
TRACKING_PREFIXES = ("utm_", "pk_", "mtm_")
# NUL and other C0 controls, lone surrogates, non-characters: PostgreSQL and the
# UTF-8 codecs reject them, and no reader needs them.
BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
SPACE = re.compile(r"\s+")


def collapse(text: str) -> str:
    return SPACE.sub(" ", BAD_CHARS.sub("", text)).strip()


def shorten(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters at a word boundary, with an ellipsis."""
    if len(text) <= limit:
        return text
    if limit < 1:
        return ""
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


def canonical_url(url: str, *, base: str | None = None) -> str | None:
    """Return ``url`` as an absolute http(s) URL without tracking parameters or fragment.

    A relative URL is resolved against ``base`` (itself absolute http(s)); without a
    base it is unusable. Returns None for anything an email must not link to:
    javascript:, data:, mailto:, credentials in the URL, bad ports, overlong URLs.
    """
    try:
        url = BAD_CHARS.sub("", url or "").strip()
        if not url:
            return None
        if base and urlsplit(base).scheme.lower() in ("http", "https"):
            url = urljoin(base, url)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            return None
        host = parts.hostname.encode("idna").decode("ascii")
        port = parts.port
        netloc = host if port in (None, 80 if scheme == "http" else 443) else f"{host}:{port}"
        # Keep untouched query pieces byte for byte; re-encoding would change URLs
        # that sites treat as distinct.
        kept = [
            piece
            for piece in parts.query.split("&")
            if piece and not _is_tracking(unquote(piece.split("=", 1)[0]))
        ]
        path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
        query = quote("&".join(kept), safe="/%:@!$&'()*+,;=-._~?")
        result = urlunsplit((scheme, netloc, path, query, ""))
    except (ValueError, UnicodeError):  # bad port, bad IDNA label, ...
        return None
    return result if len(result) <= URL_LIMIT else None


def _is_tracking(name: str) -> bool:
    name = name.strip().lower()
    return name in TRACKING_PARAMS or name.startswith(TRACKING_PREFIXES)


def url_problem(link: str, base: str | None) -> str:
    """Why ``canonical_url`` refused ``link`` (for the skip log)."""
    scheme = urlsplit(link.strip()).scheme.lower() if link.strip() else ""
    if not link.strip():
        return "no link"
    if not scheme and not base:
        return "relative link and no base URL"
    if scheme and scheme not in ("http", "https"):
        return f"unsupported link scheme {scheme!r}"
    return "invalid link"


# ---------------------------------------------------------------- HTML


def _href_filter(base: str | None) -> Any:
    def keep(tag: str, attr: str, value: str) -> str | None:
        if tag == "a" and attr == "href":
            # nh3 swallows exceptions from callbacks into sys.unraisablehook;
            # canonical_url itself never raises, so no guard is needed here.
            return canonical_url(value, base=base)
        return value

    return keep


@functools.lru_cache(maxsize=32)  # one per feed base URL, reused for every entry
def _cleaner(base: str | None) -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=SUMMARY_TAGS,
        clean_content_tags=DROP_CONTENT_TAGS,
        attributes={"a": {"href"}, "*": set()},  # "*" also drops nh3's default title/lang
        attribute_filter=_href_filter(base),
        link_rel="noopener",
        url_schemes={"http", "https"},
        url_relative="pass_through",  # "deny" would drop links before href_filter resolves them
    )


_TEXT_CLEANER = nh3.Cleaner(
    tags=set(), clean_content_tags=DROP_CONTENT_TAGS, attributes={"*": set()}
)


class _Truncator(HTMLParser):
    """Re-emits sanitised HTML with whitespace collapsed, stopping after ``limit`` text chars."""

    def __init__(self, limit: int) -> None:
        super().__init__(convert_charrefs=True)
        self.room = limit
        self.out: list[str] = []
        self.done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self.done:
            self.out.append(self.get_starttag_text() or "")

    def handle_endtag(self, tag: str) -> None:
        if not self.done:
            self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if self.done:
            return
        data = SPACE.sub(" ", data)
        if len(data) > self.room:
            data = shorten(data, self.room)
            self.done = True
        self.room -= len(data)
        self.out.append(html.escape(data, quote=False))


def clean_summary(html_text: str, *, base_url: str | None = None) -> str:
    """Sanitise feed or editor HTML to the small subset an email may carry.

    Keeps p, br, a[href], strong, b, em, i, ul, ol, li, blockquote; links become
    absolute http(s) (relative ones resolved against ``base_url`` or dropped) with
    rel="noopener" and no tracking parameters. Text is cut to about 600 characters
    at a word boundary. Idempotent: ``clean_summary(clean_summary(x)) == clean_summary(x)``.
    """
    cleaner = _cleaner(base_url or None)
    first = cleaner.clean(BAD_CHARS.sub("", html_text[:SUMMARY_INPUT_LIMIT]))
    truncator = _Truncator(SUMMARY_TEXT_LIMIT)
    truncator.feed(first)
    truncator.close()
    # A second pass closes tags left open by truncation and normalises markup.
    return str(_cleaner(None).clean("".join(truncator.out))).strip()


class _TextExtractor(HTMLParser):
    """Readable text from HTML: blocks become paragraphs, list items "- " lines."""

    _SKIP = {"head", "style", "script", "title"}
    _BLOCK = {"p", "blockquote", "ul", "ol", "div", "table", "tr", "h1", "h2", "h3", "h4", "hr"}

    def __init__(self, *, links: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.links = links
        self._skipping = 0
        self._href = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in self._BLOCK:
            self.parts.append("\n\n")
        elif tag == "br":
            self.parts.append("\n")
        if tag == "a" and self.links and not self._skipping:
            self._href = dict(attrs).get("href") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href.startswith(("http://", "https://")):
            self.parts.append(f" <{self._href}>")
        if tag == "a":
            self._href = ""
        if tag in self._SKIP:
            self._skipping = max(self._skipping - 1, 0)
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(SPACE.sub(" ", data))


def html_to_text(html_text: str, *, links: bool = False) -> str:
    """Plain text of HTML: paragraphs separated by blank lines, "- " list items, and
    with ``links`` each link's URL after its text. The one HTML-to-text conversion
    (story summaries, special editions)."""
    parser = _TextExtractor(links=links)
    parser.feed(html_text)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def summary_text(html_text: str) -> str:
    """Plain text of a cleaned summary: paragraphs separated by blank lines, "- " items."""
    return html_to_text(html_text)


def plain_text(value: Any, limit: int) -> str:
    """Plain text from a possibly-HTML feed string (titles, tags, feed names)."""
    if not isinstance(value, str) or not value:
        return ""
    # Strip markup even from "text/plain" titles: renderers must never meet a tag.
    text = html.unescape(_TEXT_CLEANER.clean(BAD_CHARS.sub("", value[:10_000])))
    return shorten(collapse(text), limit)
