"""The stories stage against real feeds, hostile feeds, a real local HTTP server and
real databases (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.config import Settings, load_settings
from newsletter.content.sanitise import SUMMARY_TAGS
from newsletter.content.stories import (
    add_story,
    canonical_url,
    clean_summary,
    fetch_feed,
    fetch_newsletter,
    hide_story,
    list_stories,
    pin_story,
    summary_text,
    unhide_story,
)
from newsletter.errors import InputError, NotFoundError
from newsletter.models import Story, StoryOrigin
from tests.conftest import FIXTURES, ROOT, SHARED, CliRun, write_config

CORPUS = SHARED / "feeds-corpus"
HOSTILE = FIXTURES / "feeds"
NL = "daily-briefing"


def _corpus() -> list[tuple[str, str]]:
    expect = CORPUS / "EXPECT.tsv"
    if not expect.exists():
        return []
    rows = []
    for line in expect.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, verdict, *_ = line.split("\t")
            rows.append((name, verdict))
    return rows


CORPUS_ROWS = _corpus()
needs_corpus = pytest.mark.skipif(not CORPUS_ROWS, reason=f"feed corpus not found at {CORPUS}")


def _count(session: Session, newsletter: str = NL) -> int:
    return session.scalar(select(func.count()).where(Story.newsletter == newsletter)) or 0


def _stories(session: Session) -> list[Story]:
    session.expire_all()
    return list(session.scalars(select(Story).order_by(Story.id)))


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text += data


def text_length(summary: str) -> int:
    parser = _Markup()
    parser.feed(summary)
    parser.close()
    return len(parser.text)


def assert_safe(story: Story) -> None:
    """Only the allowed tags, only href/rel on links, only absolute http(s) URLs."""
    assert story.url.startswith(("http://", "https://")), story.url
    assert canonical_url(story.url) == story.url and "#" not in story.url
    for text in (story.summary, story.url, story.title, story.kicker, story.source):
        lowered = text.lower()
        for bad in ("<script", "javascript:", "vbscript:", "data:text", "<img", "<svg", "\x00"):
            assert bad not in lowered, (bad, text)
    parser = _Markup()
    parser.feed(story.summary)
    for tag, attrs in parser.tags:
        assert tag in SUMMARY_TAGS, (tag, story.summary)
        allowed = {"href", "rel"} if tag == "a" else set()
        assert set(attrs) <= allowed, (tag, attrs)
        if "href" in attrs:
            assert (attrs["href"] or "").startswith(("http://", "https://")), attrs
            assert attrs["rel"] == "noopener"


# ------------------------------------------------------------------ the corpus


@needs_corpus
@pytest.mark.parametrize(("name", "verdict"), CORPUS_ROWS or [("none", "any")])
def test_corpus_feed_through_cli(
    run_cli: CliRun, session: Session, name: str, verdict: str
) -> None:
    started = time.monotonic()
    result = run_cli("stories", "fetch", "--feed", str(CORPUS / name), expect=None)
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"{name} took {elapsed:.1f} s"
    added = _count(session)
    if verdict == "ok":
        assert result.exit_code == 0, result.output
        assert added >= 1
        assert f"{added} added" in result.output
    else:
        assert result.exit_code in (0, 1, 2), result.output
        if result.exit_code:
            # One clear line naming the reason, never a stack.
            error_lines = [line for line in result.output.splitlines() if "failed" in line]
            assert error_lines and all(len(line) < 400 for line in error_lines)
    for story in _stories(session):
        assert_safe(story)


@needs_corpus
def test_corpus_content_is_decoded_resolved_and_untracked(
    session: Session, settings: Settings
) -> None:
    for name, _ in CORPUS_ROWS:
        report = fetch_feed(session, newsletter=NL, source=str(CORPUS / name), settings=settings)
        assert report.error is None or report.added == 0
    session.flush()
    stories = _stories(session)
    by_title = {s.title: s for s in stories}
    urls = {s.url for s in stories}
    # Legacy encodings, declared and undeclared.
    assert "Цитата #17703" in by_title  # windows-1251
    assert "Mãe de utente é a nova presidente da Raríssimas" in by_title  # ISO-8859-1
    assert (
        "Ibope: Bolsonaro perde de Haddad, Ciro e Alckmin em simulações de 2º turno" in by_title
    )  # latin-1 bytes, no declaration
    # GitHub's relative entry links resolved against the feed's own link.
    assert "https://github.com/gulpjs/gulp/releases/tag/v3.9.0" in urls
    assert by_title["v3.9.0"].url == "https://github.com/gulpjs/gulp/releases/tag/v3.9.0"
    # heise's ?wt_mc= tracking parameter removed from every link.
    heise = [s for s in stories if s.source == "heise online News"]
    assert len(heise) == 60
    assert all("wt_mc" not in s.url and "?" not in s.url for s in heise)
    assert (
        "https://www.heise.de/newsticker/meldung/Mega-Deal-IBM-uebernimmt-Red-Hat-4205582.html"
        in urls
    )
    # Markup in titles becomes text (craigslist: CDATA with <sup> and &#x0024;).
    assert any(s.title.endswith("$1725 525ft2") for s in stories)
    # Undated and unparseable dates are None; parsed ones are aware UTC.
    assert by_title["The First Item"].published_at is None  # "03 Apr 02 1500 GMT"
    assert by_title["v3.9.0"].published_at == datetime(2015, 6, 1, 21, 49, 41, tzinfo=UTC)
    for story in stories:
        assert_safe(story)
        assert clean_summary(story.summary) == story.summary  # idempotent
        assert text_length(story.summary) <= 600


@needs_corpus
def test_malformed_feed_is_ingested_with_a_logged_reason(
    session: Session, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    source = str(CORPUS / "miniflux-cerclepsy-latin1-no-declaration.xml")
    with caplog.at_level(logging.WARNING, logger="newsletter.stories"):
        report = fetch_feed(session, newsletter=NL, source=source, settings=settings)
    assert report.error is None and report.added == 9 and report.skipped == 1
    assert any("CharacterEncodingOverride" in w for w in report.warnings)
    assert "CharacterEncodingOverride" in caplog.text
    assert "no link (1)" in caplog.text


# ------------------------------------------------------------------ hostile files


def test_xss_feed_stores_nothing_unsafe(session: Session, settings: Settings) -> None:
    report = fetch_feed(session, newsletter=NL, source=str(HOSTILE / "xss.xml"), settings=settings)
    assert (report.added, report.skipped, report.error) == (2, 2, None)
    assert "unsupported link scheme 'javascript' (1)" in report.warnings[0]
    assert "unsupported link scheme 'data' (1)" in report.warnings[0]
    session.flush()
    first, second = _stories(session)
    for story in (first, second):
        assert_safe(story)
        assert "<" not in story.title and "alert" not in story.title
    assert first.title == "Script in title"
    assert first.kicker == "Kicker"
    assert first.source == "Evil News"
    assert second.title == "Image title"
    # Safe text and the one good link survive, with tracking removed.
    assert "Hello" in first.summary and "world" in first.summary and "styled" in first.summary
    assert (
        '<a href="https://good.example.com/read?id=7" rel="noopener">good link</a>' in first.summary
    )
    # The relative link resolved against the feed's own <link>.
    assert 'href="https://evil.example.org/relative/path"' in first.summary
    for dropped in ("js link", "mixed case", "entity", "data", "vb"):
        assert f'<a rel="noopener">{dropped}</a>' in first.summary
    assert "alert" not in first.summary and "background" not in first.summary
    assert (
        second.summary
        == '<a href="https://evil.example.org/ok" rel="noopener">plain text</a> &amp; more'
    )


def test_control_characters_are_removed(session: Session, settings: Settings) -> None:
    report = fetch_feed(
        session, newsletter=NL, source=str(HOSTILE / "control-chars.xml"), settings=settings
    )
    assert report.added == 1, report
    session.flush()
    (story,) = _stories(session)
    assert story.title == "Bell and nul"
    assert story.url == "https://ctl.example.org/ab"
    assert story.guid == "ctl-1"
    assert story.source == "Controls"
    assert story.summary == "text with noise"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("not-a-feed.html", "not an RSS or Atom feed"),
        ("empty.xml", "empty document"),
        ("surrogate.xml", "cannot parse feed"),
        ("no-such-file.xml", "no such file"),
    ],
)
def test_unusable_files_fail_with_a_reason(
    session: Session, settings: Settings, name: str, reason: str
) -> None:
    report = fetch_feed(session, newsletter=NL, source=str(HOSTILE / name), settings=settings)
    assert report.error is not None and reason in report.error
    assert "\n" not in report.error
    assert (report.added, report.duplicates) == (0, 0)
    assert _count(session) == 0


def test_binary_file_and_directory_fail_cleanly(
    session: Session, settings: Settings, tmp_path: Path
) -> None:
    binary = tmp_path / "noise.bin"
    binary.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(200_000)))
    for source in (binary, tmp_path):
        report = fetch_feed(session, newsletter=NL, source=str(source), settings=settings)
        assert report.error, source
    assert _count(session) == 0


def test_oversized_file_is_refused(session: Session, settings: Settings) -> None:
    report = fetch_feed(
        session,
        newsletter=NL,
        source=str(ROOT / "feeds" / "world.xml"),
        settings=settings,
        max_bytes=1000,
    )
    assert report.error == "feed file is larger than 1000 bytes"


def _big_feed(path: Path, n: int) -> Path:
    items = "".join(
        f"<item><title>Story number {i}</title>"
        f"<link>https://big.example.com/{i}?utm_source=x</link><guid>big-{i}</guid>"
        f"<description>&lt;p&gt;Summary &lt;b&gt;{i}&lt;/b&gt; with "
        f"&lt;a href='/more/{i}'&gt;a link&lt;/a&gt;&lt;/p&gt;</description></item>"
        for i in range(n)
    )
    path.write_text(
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Big</title>'
        f"<link>https://big.example.com/</link>{items}</channel></rss>",
        encoding="utf-8",
    )
    return path


def test_five_thousand_entries_are_fast(
    session: Session, settings: Settings, tmp_path: Path
) -> None:
    source = str(_big_feed(tmp_path / "big.xml", 5000))
    started = time.monotonic()
    report = fetch_feed(session, newsletter=NL, source=source, settings=settings)
    first = time.monotonic() - started
    assert (report.added, report.duplicates, report.error) == (5000, 0, None)
    again = fetch_feed(session, newsletter=NL, source=source, settings=settings)
    assert (again.added, again.duplicates) == (0, 5000)
    assert first < 30, f"5000 entries took {first:.1f} s"
    story = session.scalars(select(Story).where(Story.guid == "big-42")).one()
    assert story.url == "https://big.example.com/42"
    assert 'href="https://big.example.com/more/42"' in story.summary


# ------------------------------------------------------------------ over HTTP

RELATIVE_FEED = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Local Wire</title><link>/</link>
<item><title>Absolute path link</title><link>/articles/1?utm_source=rss&amp;page=2</link>
<guid>local-1</guid><description>&lt;a href="more.html"&gt;more&lt;/a&gt;</description></item>
<item><title>Relative path link</title><link>articles/2</link><guid>local-2</guid></item>
</channel></rss>"""


@dataclass
class FeedServer:
    base: str
    agents: list[str] = field(default_factory=list)


@pytest.fixture
def feed_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FeedServer]:
    """A real HTTP server on 127.0.0.1 serving feeds, errors, redirects and stalls."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    release = threading.Event()
    agents: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key.replace("_", "-"), value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            agents.append(self.headers.get("User-Agent", ""))
            try:
                if self.path in ("/feed.xml", "/sub/feed.xml"):
                    self._send(200, RELATIVE_FEED, Content_Type="application/rss+xml")
                elif self.path == "/moved":
                    self._send(302, Location="/sub/feed.xml")
                elif self.path == "/loop":
                    self._send(302, Location="/loop")
                elif self.path == "/broken":
                    self._send(500, b"<h1>oops</h1>")
                elif self.path == "/slow":
                    release.wait(10)
                    self._send(200, RELATIVE_FEED)
                elif self.path == "/huge":
                    self.send_response(200)
                    self.end_headers()
                    for _ in range(64):
                        self.wfile.write(b"<!-- padding -->" * 4096)
                else:
                    self._send(404, b"not found")
            except OSError:
                pass  # the client gave up (timeout, size cap): expected

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FeedServer(f"http://127.0.0.1:{server.server_address[1]}", agents)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_feed_resolves_links_against_the_feed_url(
    session: Session, settings: Settings, feed_server: FeedServer
) -> None:
    report = fetch_feed(
        session, newsletter=NL, source=f"{feed_server.base}/moved", settings=settings
    )
    assert (report.added, report.error) == (2, None)
    session.flush()
    one, two = _stories(session)
    base = feed_server.base
    # Redirected to /sub/feed.xml: links resolve against the final URL.
    assert one.url == f"{base}/articles/1?page=2"
    assert two.url == f"{base}/sub/articles/2"
    assert one.summary == f'<a href="{base}/sub/more.html" rel="noopener">more</a>'
    assert one.source == "Local Wire"
    assert feed_server.agents and all(a.startswith("newsletter/") for a in feed_server.agents)


@pytest.mark.parametrize(
    ("path", "reason"),
    [("/missing", "HTTP 404"), ("/broken", "HTTP 500"), ("/loop", "too many redirects")],
)
def test_http_errors_are_reported(
    session: Session, settings: Settings, feed_server: FeedServer, path: str, reason: str
) -> None:
    report = fetch_feed(session, newsletter=NL, source=feed_server.base + path, settings=settings)
    assert report.error is not None and report.error.startswith(reason), report.error
    assert _count(session) == 0


def test_slow_server_times_out(
    session: Session, settings: Settings, feed_server: FeedServer
) -> None:
    started = time.monotonic()
    report = fetch_feed(
        session, newsletter=NL, source=f"{feed_server.base}/slow", settings=settings, timeout=0.5
    )
    assert report.error == "timed out after 0.5 s"
    assert time.monotonic() - started < 5


def test_body_over_the_cap_is_refused(
    session: Session, settings: Settings, feed_server: FeedServer
) -> None:
    report = fetch_feed(
        session,
        newsletter=NL,
        source=f"{feed_server.base}/huge",
        settings=settings,
        max_bytes=100_000,
    )
    assert report.error == "feed is larger than 100000 B"


def test_unreachable_host_and_bad_scheme(session: Session, settings: Settings) -> None:
    closed = fetch_feed(
        session, newsletter=NL, source="http://127.0.0.1:9/feed.xml", settings=settings, timeout=2
    )
    assert closed.error is not None and closed.error.startswith("cannot fetch")
    ftp = fetch_feed(session, newsletter=NL, source="ftp://example.com/f.xml", settings=settings)
    assert ftp.error is not None and "unsupported feed URL scheme" in ftp.error


def test_cli_fetches_over_http(run_cli: CliRun, feed_server: FeedServer) -> None:
    result = run_cli("stories", "fetch", "--feed", f"{feed_server.base}/feed.xml")
    assert "2 added, 0 duplicates, 0 skipped" in result.output
    missing = run_cli("stories", "fetch", "--feed", f"{feed_server.base}/missing", expect=1)
    assert "failed: HTTP 404" in missing.output


# ------------------------------------------------------------------ de-duplication


def test_dedup_across_feeds_by_guid_and_canonical_url(session: Session, settings: Settings) -> None:
    a = fetch_feed(session, newsletter=NL, source=str(HOSTILE / "dup-a.xml"), settings=settings)
    b = fetch_feed(session, newsletter=NL, source=str(HOSTILE / "dup-b.xml"), settings=settings)
    assert (a.added, a.duplicates) == (3, 0)
    # shared guid, same canonical URL, and its own story listed twice.
    assert (b.added, b.duplicates) == (1, 3)
    titles = {s.title for s in _stories(session)}
    assert titles == {
        "Same guid, wire A's URL",
        "Same canonical URL, wire A's tracking",
        "Only in wire A",
        "Only in wire B",
    }
    # Another newsletter keeps its own copy.
    other = fetch_feed(
        session, newsletter="good-news", source=str(HOSTILE / "dup-b.xml"), settings=settings
    )
    assert (other.added, other.duplicates) == (3, 1)


def test_existing_rows_are_left_alone(session: Session, settings: Settings) -> None:
    source = str(HOSTILE / "dup-a.xml")
    fetch_feed(session, newsletter=NL, source=source, settings=settings)
    story = session.scalars(select(Story).where(Story.guid == "wire-a-3")).one()
    story.title, story.hidden, story.pinned = "Edited by a human", True, True
    session.flush()
    again = fetch_feed(session, newsletter=NL, source=source, settings=settings)
    assert (again.added, again.duplicates) == (0, 3)
    session.refresh(story)
    assert (story.title, story.hidden, story.pinned) == ("Edited by a human", True, True)


def test_fetch_newsletter_survives_a_failing_feed(
    session: Session, db_url: str, tmp_path: Path
) -> None:
    feeds = ", ".join(
        f'"{p}"' for p in (HOSTILE / "empty.xml", ROOT / "feeds" / "world.xml", "https://bad host/")
    )
    settings = load_settings(write_config(tmp_path / "other.toml", db_url, feeds=feeds))
    reports = fetch_newsletter(session, newsletter=NL, settings=settings)
    assert [r.feed for r in reports] == settings.newsletter(NL).feeds
    empty, world, bad = reports
    assert empty.error and bad.error and world.error is None
    assert world.added == 6
    assert _count(session) == 6
    with pytest.raises(NotFoundError):
        fetch_newsletter(session, newsletter="nope", settings=settings)


def test_dates(session: Session, settings: Settings) -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    fetch_feed(
        session, newsletter=NL, source=str(HOSTILE / "dated.xml"), settings=settings, now=now
    )
    session.flush()
    good, bad, future = _stories(session)
    assert good.published_at == datetime(2024, 3, 5, 13, 30, tzinfo=UTC)
    assert bad.published_at is None
    assert future.published_at == now  # a feed cannot claim to be from the future
    assert all(s.fetched_at == now for s in (good, bad, future))


def test_sample_feeds(session: Session, settings: Settings) -> None:
    reports = fetch_newsletter(session, newsletter=NL, settings=settings)
    assert [(r.added, r.error) for r in reports] == [(6, None), (6, None), (7, None)]
    good = fetch_newsletter(session, newsletter="good-news", settings=settings)
    assert good[0].added == 5
    stories = _stories(session)
    # Undated on purpose, so the quick start always has fresh stories.
    assert all(s.published_at is None for s in stories)
    assert all(s.kicker for s in stories)
    assert "https://news.example.com/world/2024/storm-surge-warning-network" in {
        s.url for s in stories
    }
    for story in stories:
        assert_safe(story)


# ------------------------------------------------------------------ pure functions


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        (
            "https://Example.COM:443/a?utm_source=x&id=1&fbclid=y#frag",
            None,
            "https://example.com/a?id=1",
        ),
        ("http://example.com:80", None, "http://example.com/"),
        (
            "http://example.com:8080/x?ref=tw&REF_SRC=a&q=ref",
            None,
            "http://example.com:8080/x?q=ref",
        ),
        (
            "https://e.com/x?gclid=1&mc_cid=2&mc_eid=3&_ga=4&wt_mc=5&utm_Medium=6",
            None,
            "https://e.com/x",
        ),
        ("https://e.com/a b?q=x%20y&flag", None, "https://e.com/a%20b?q=x%20y&flag"),
        ("/path?utm_term=z", "https://site.example/feed/", "https://site.example/path"),
        ("item/3", "https://site.example/feed/", "https://site.example/feed/item/3"),
        ("//cdn.example/x", "https://site.example/", "https://cdn.example/x"),
        ("/relative", None, None),
        ("javascript:alert(1)", "https://site.example/", None),
        (" JAVASCRIPT:alert(1)", None, None),
        ("java\tscript:alert(1)", None, None),
        ("data:text/html,<script>", None, None),
        ("mailto:a@example.com", None, None),
        ("ftp://example.com/f", None, None),
        ("https://user:pw@example.com/", None, None),
        ("https://example.com:99999/", None, None),
        ("https://", None, None),
        ("", "https://site.example/", None),
        ("https://example.com/" + "x" * 3000, None, None),
        ("https://bücher.example/ä", None, "https://xn--bcher-kva.example/%C3%A4"),
    ],
)
def test_canonical_url(url: str, base: str | None, expected: str | None) -> None:
    assert canonical_url(url, base=base) == expected
    if expected:
        assert canonical_url(expected) == expected


HOSTILE_HTML = [
    '<p onclick="x()">a <script>alert(1)</script><img src=x onerror=alert(1)>b</p>',
    '<a href="javascript:alert(1)">j</a><a href="data:text/html,x">d</a><svg onload=alert(1)>',
    '<style>*{}</style><div style="x">in div</div><table><tr><td>cell</td></tr></table>',
    "<ul><li>one<li>two</ul><blockquote>quote<p>nested</blockquote>",
    "unclosed <b>bold <i>italic <a href='https://e.com/?utm_source=1'>link",
    "&lt;script&gt; stays text &amp; &nbsp; entities",
    "<p>" + "word " * 400 + "</p>",
    "<b>" + "x" * 2000 + "</b>",
    "<p>" + "a" * 600 + "</p><p>more words here</p>",
    "<b>" + "x" * 599 + "</b> tail words",
]


@pytest.mark.parametrize("raw", HOSTILE_HTML)
def test_clean_summary_is_safe_short_and_idempotent(raw: str) -> None:
    once = clean_summary(raw, base_url="https://base.example/")
    assert clean_summary(once) == once
    assert clean_summary(once, base_url="https://other.example/") == once
    assert text_length(once) <= 600
    story = Story(url="https://e.com/", title="t", summary=once, kicker="", source="")
    assert_safe(story)


def test_clean_summary_details() -> None:
    assert clean_summary('<a href="/x">x</a>', base_url="https://b.example/f/") == (
        '<a href="https://b.example/x" rel="noopener">x</a>'
    )
    assert clean_summary('<a href="/x">x</a>') == '<a rel="noopener">x</a>'
    long = clean_summary("<p>" + "word " * 400 + "</p>")
    assert long.startswith("<p>word word") and long.endswith("word…</p>")
    assert "  " not in clean_summary("<p>a\n\n   b</p>")
    assert clean_summary("<b>bold <i>x</b>") == "<b>bold <i>x</i></b>"


def test_summary_text() -> None:
    html = (
        "<p>First <strong>para</strong> &amp; more.</p><p>Second<br>line</p>"
        '<ul><li>one</li><li><a href="https://e.com/">two</a></li></ul>'
    )
    assert summary_text(html) == "First para & more.\n\nSecond\nline\n\n- one\n- two"
    assert summary_text("") == ""


# ------------------------------------------------------------------ editor operations


def test_add_list_hide_pin(session: Session) -> None:
    now = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    story = add_story(
        session,
        newsletter=NL,
        title="  Editor's <b>pick</b>  ",
        url="https://news.example.com/pick?utm_source=x",
        summary="<p>Read <script>x</script>this</p>",
        kicker="Opinion",
        pin=True,
        now=now,
    )
    session.flush()
    assert story.id is not None
    assert (story.title, story.url, story.summary) == (
        "Editor's pick",
        "https://news.example.com/pick",
        "<p>Read this</p>",
    )
    assert story.origin is StoryOrigin.EDITOR and story.pinned and story.published_at == now
    assert story.source == "news.example.com"
    with pytest.raises(InputError, match=f"already story {story.id}"):
        add_story(session, newsletter=NL, title="Again", url="https://news.example.com/pick#x")
    with pytest.raises(InputError, match="invalid story URL"):
        add_story(session, newsletter=NL, title="Bad", url="javascript:alert(1)")
    with pytest.raises(InputError, match="needs a title"):
        add_story(session, newsletter=NL, title="<script>x</script>", url="https://e.com/")
    older = add_story(
        session,
        newsletter="good-news",
        title="Older",
        url="https://news.example.com/older",
        now=datetime(2020, 1, 1, tzinfo=UTC),
    )
    session.flush()
    assert [s.id for s in list_stories(session).items] == [story.id, older.id]
    assert [s.id for s in list_stories(session, newsletter="good-news").items] == [older.id]
    first = list_stories(session, limit=1)
    assert [s.id for s in first.items] == [story.id] and first.cursor
    rest = list_stories(session, limit=1, cursor=first.cursor)
    assert [s.id for s in rest.items] == [older.id] and rest.cursor is None
    assert hide_story(session, story_id=story.id).hidden
    assert [s.id for s in list_stories(session).items] == [older.id]
    assert len(list_stories(session, include_hidden=True).items) == 2
    assert not unhide_story(session, story_id=story.id).hidden
    assert not pin_story(session, story_id=story.id, pinned=False).story.pinned
    with pytest.raises(NotFoundError, match="no story with id 9999"):
        hide_story(session, story_id=9999)


# ------------------------------------------------------------------ CLI


def test_cli_fetch_all_newsletters(run_cli: CliRun) -> None:
    first = run_cli("stories", "fetch")
    assert f"{NL}: {ROOT / 'feeds' / 'world.xml'}: 6 added, 0 duplicates, 0 skipped" in (
        first.output
    )
    assert "good-news: " in first.output and "5 added" in first.output
    again = run_cli("stories", "fetch", "--newsletter", "good-news")
    assert "0 added, 5 duplicates, 0 skipped" in again.output
    assert NL not in again.output


def test_cli_fetch_exit_codes(run_cli: CliRun) -> None:
    failed = run_cli("stories", "fetch", "--feed", str(HOSTILE / "empty.xml"), expect=1)
    assert "failed: empty document" in failed.output
    assert "Error: all 1 feed(s) failed" in failed.output
    # A valid feed with nothing new is not a failure.
    run_cli("stories", "fetch", "--feed", str(HOSTILE / "dup-a.xml"))
    nothing_new = run_cli("stories", "fetch", "--feed", str(HOSTILE / "dup-a.xml"))
    assert "0 added, 3 duplicates" in nothing_new.output


def test_cli_add_list_hide(run_cli: CliRun) -> None:
    added = run_cli(
        "stories", "add", "--title", "Pick", "--url", "https://news.example.com/p?fbclid=1",
        "--kicker", "Editors", "--summary", "<p>Why it matters</p>", "--pin",
    )  # fmt: skip
    story_id = int(added.output.strip())
    rows = json.loads(run_cli("stories", "list", "--format", "json").output)
    assert [(r["id"], r["url"], r["pinned"], r["origin"]) for r in rows] == [
        (story_id, "https://news.example.com/p", True, "editor")
    ]
    assert rows[0]["newsletter"] == NL and rows[0]["kicker"] == "Editors"
    assert run_cli("stories", "hide", str(story_id)).output.strip() == f"story {story_id} hidden"
    assert json.loads(run_cli("stories", "list", "--format", "json").output) == []
    hidden = json.loads(run_cli("stories", "list", "--all", "--format", "json").output)
    assert hidden[0]["hidden"] is True
    run_cli("stories", "unhide", str(story_id))
    run_cli("stories", "pin", str(story_id), "--off")
    (row,) = json.loads(run_cli("stories", "list", "--format", "json").output)
    assert (row["hidden"], row["pinned"]) == (False, False)
    table = run_cli("stories", "list", "--newsletter", NL).output
    assert "Pick" in table
    dup = run_cli("stories", "add", "--title", "X", "--url", "https://news.example.com/p", expect=2)
    assert f"already story {story_id}" in dup.output


def test_cli_user_errors(run_cli: CliRun) -> None:
    bad = run_cli("stories", "add", "--title", "T", "--url", "javascript:alert(1)", expect=2)
    assert "Error: invalid story URL 'javascript:alert(1)'" in bad.output
    relative = run_cli("stories", "add", "--title", "T", "--url", "/only/a/path", expect=2)
    assert "invalid story URL" in relative.output
    for args in (
        ("fetch", "--newsletter", "nope"),
        ("fetch", "--newsletter", "nope", "--feed", str(HOSTILE / "dup-a.xml")),
        ("add", "--title", "T", "--url", "https://e.com/", "--newsletter", "nope"),
        ("list", "--newsletter", "nope"),
    ):
        result = run_cli("stories", *args, expect=2)
        assert "unknown newsletter 'nope'" in result.output
        assert len(result.output.strip().splitlines()) == 1
    missing = run_cli("stories", "hide", "404", expect=2)
    assert missing.output.strip() == "Error: no story with id 404"
