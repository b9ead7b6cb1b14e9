"""Reading feeds: download (or read) one, parse it with feedparser, turn its entries
into clean story candidates.

Feeds are untrusted input. feedparser reads every RSS/Atom dialect and never raises
on bad XML (it sets ``bozo``); :func:`load` decides per feed whether what it
recovered is usable and says why not. nh3 (through ``sanitise``) is the only HTML
sanitiser, and every link is made an absolute http(s) URL or dropped. Nothing here
touches the database, so a slow feed never holds a lock while it downloads.
"""

from __future__ import annotations

import calendar
import hashlib
import html
import io
import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import feedparser
import httpx

from newsletter import __version__
from newsletter.config import Settings
from newsletter.content.sanitise import (
    BAD_CHARS,
    canonical_url,
    clean_summary,
    collapse,
    plain_text,
    shorten,
    summary_text,
    url_problem,
)
from newsletter.errors import FeedError

log = logging.getLogger("newsletter.content.stories")

USER_AGENT = f"newsletter/{__version__} (feed fetcher; +https://news.example.com)"
FETCH_TIMEOUT = 20.0
MAX_FEED_BYTES = 10 * 1024 * 1024
TITLE_LIMIT, KICKER_LIMIT, SOURCE_LIMIT, GUID_LIMIT = 500, 100, 300, 1000


@dataclass
class Candidate:
    """One entry of a feed, cleaned, ready to be stored as a story."""

    guid: str | None
    url: str
    title: str
    summary: str
    kicker: str
    source: str
    published_at: datetime | None


@dataclass
class Loaded:
    """What one feed yielded: its candidates, how many entries were skipped, and why."""

    candidates: list[Candidate]
    skipped: int
    warnings: list[str]


def is_url(source: str) -> bool:
    return urlsplit(source).scheme.lower() in ("http", "https")


def _download(url: str, *, timeout: float, max_bytes: int) -> tuple[bytes, str, str]:
    """GET ``url`` (redirects followed); returns (body, final URL, content type)."""
    limit = f"{max_bytes // (1024 * 1024)} MB" if max_bytes >= 1024 * 1024 else f"{max_bytes} B"
    try:
        with (
            httpx.Client(
                timeout=timeout,
                follow_redirects=True,
                max_redirects=5,
                headers={
                    "User-Agent": USER_AGENT,
                    "Accept": "application/rss+xml, "
                    "application/atom+xml, application/xml;q=0.9, */*;q=0.5",
                },
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 400:
                raise FeedError(f"HTTP {response.status_code} {response.reason_phrase}".strip())
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise FeedError(f"feed is larger than {limit}")
            body = bytearray()
            # iter_bytes decompresses, so the cap also stops gzip bombs.
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise FeedError(f"feed is larger than {limit}")
            return bytes(body), str(response.url), response.headers.get("content-type", "")
    except httpx.TimeoutException:
        raise FeedError(f"timed out after {timeout:g} s") from None
    except httpx.TooManyRedirects:
        raise FeedError("too many redirects") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise FeedError(f"cannot fetch: {collapse(str(exc)) or type(exc).__name__}") from None


def _read_file(path: Path, *, max_bytes: int) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise FeedError(f"no such file: {path}") from None
    except OSError as exc:
        raise FeedError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise FeedError(f"feed file is larger than {max_bytes} bytes")
    return data


def _published(entry: Any, now: datetime) -> datetime | None:
    stamp = entry.get("published_parsed") or entry.get("updated_parsed")
    if not stamp:
        return None
    try:
        when = datetime.fromtimestamp(calendar.timegm(stamp), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    # A feed claiming a future date would sit on top of every edition.
    return min(when, now)


def _guid(entry: Any) -> str | None:
    raw = entry.get("id")
    guid = BAD_CHARS.sub("", raw).strip() if isinstance(raw, str) else ""
    if not guid:
        return None
    if len(guid) > GUID_LIMIT:  # keep it unique rather than cutting it
        return "sha256:" + hashlib.sha256(guid.encode("utf-8", "replace")).hexdigest()
    return guid


def _summary_html(entry: Any) -> str:
    """The entry's summary as HTML: an HTML summary, else HTML content, else plain text.

    Plain text is unescaped before escaping because many feeds put entities such as
    &nbsp; into "text" summaries.
    """
    parts = [entry.get("summary_detail") or {}, *(entry.get("content") or [])]
    texts = [(p.get("value"), p.get("type") or "text/html") for p in parts]
    texts = [(v, t) for v, t in texts if isinstance(v, str) and v.strip()]
    for value, kind in texts:
        if kind != "text/plain":
            return str(value)
    return html.escape(html.unescape(texts[0][0])) if texts else ""


def _candidate(entry: Any, *, base: str | None, source: str, now: datetime) -> Candidate | str:
    """A storable story from a feedparser entry, or the reason to skip it."""
    link = entry.get("link") if isinstance(entry.get("link"), str) else ""
    url = canonical_url(link, base=base)
    if url is None:
        return url_problem(link, base)
    summary = clean_summary(_summary_html(entry), base_url=base)
    title = plain_text(entry.get("title"), TITLE_LIMIT) or shorten(
        collapse(summary_text(summary)), 120
    )
    if not title:
        return "no title"
    tags = entry.get("tags") or []
    kicker = next(
        (k for t in tags if (k := plain_text(t.get("term") or t.get("label"), KICKER_LIMIT))), ""
    )
    return Candidate(_guid(entry), url, title, summary, kicker, source, _published(entry, now))


def _bozo_reason(parsed: Any) -> str:
    exc = parsed.get("bozo_exception")
    text = collapse(f"{type(exc).__name__}: {exc}") if exc is not None else "malformed feed"
    return shorten(text, 200)


def load(
    source: str, *, settings: Settings, now: datetime, timeout: float, max_bytes: int
) -> Loaded:
    """Fetch or read one feed and turn its entries into candidates; FeedError if unusable."""
    if is_url(source):
        data, base, ctype = _download(source, timeout=timeout, max_bytes=max_bytes)
        headers = {"content-location": base, "content-type": ctype or "application/xml"}
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", source):
        raise FeedError(f"unsupported feed URL scheme in {source!r} (use http, https or a path)")
    else:
        data, base, headers = _read_file(settings.path(source), max_bytes=max_bytes), "", {}
    if not data.strip():
        raise FeedError("empty document")
    # A BytesIO, never bare bytes: feedparser would try bytes as a file name first.
    try:
        parsed = feedparser.parse(io.BytesIO(data), response_headers=headers, sanitize_html=False)
    except Exception as exc:
        # feedparser does raise on some hostile input (a surrogate character
        # reference crashes its loose parser); a bad feed must never stop a run.
        raise FeedError(
            f"cannot parse feed ({type(exc).__name__}: {collapse(str(exc))[:150]})"
        ) from None
    feed = parsed.get("feed") or {}
    if not base:  # a local file: only the feed's own absolute <link> may anchor links
        feed_link = feed.get("link")
        base = (canonical_url(feed_link) if isinstance(feed_link, str) else None) or ""
    entries = parsed.get("entries") or []
    warnings: list[str] = []
    if not entries:
        if parsed.get("bozo"):
            raise FeedError(f"not a readable feed ({_bozo_reason(parsed)})")
        if not parsed.get("version"):
            raise FeedError("not an RSS or Atom feed")
        warnings.append("feed has no entries")
    elif parsed.get("bozo"):
        warnings.append(f"malformed feed, ingested what could be read ({_bozo_reason(parsed)})")
    name = (
        plain_text(feed.get("title"), SOURCE_LIMIT)
        or urlsplit(base or source).hostname
        or Path(source).stem
    )
    candidates: list[Candidate] = []
    reasons: Counter[str] = Counter()
    for entry in entries:
        result = _candidate(entry, base=base or None, source=name[:SOURCE_LIMIT], now=now)
        if isinstance(result, str):
            reasons[result] += 1
            # Per entry at debug level; the feed's warning below sums the reasons up.
            log.debug("%s: skipped %r: %s", source, entry.get("id") or entry.get("title"), result)
        else:
            candidates.append(result)
    skipped = sum(reasons.values())
    if skipped:
        detail = ", ".join(f"{why} ({n})" for why, n in reasons.most_common())
        if not candidates:
            raise FeedError(f"no usable entries: {detail}")
        warnings.append(f"skipped {skipped} entries: {detail}")
    return Loaded(candidates, skipped, warnings)


# ---------------------------------------------------------------- storing
