"""The readers' web pages through the framework's test client, on a real database and
the real `outbox` provider: sign up, confirm, one-click unsubscribe (RFC 8058),
preferences, data, erasure, archive and its Atom feed, and what abuse gets."""

from __future__ import annotations

import email
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from email.message import Message
from pathlib import Path

import feedparser
import pytest
import time_machine
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.audience import suppression
from newsletter.config import Settings
from newsletter.content import editions
from newsletter.delivery import links, runner
from newsletter.delivery.providers.files import OutboxProvider
from newsletter.models import (
    Subscriber,
    Subscription,
    SubscriptionStatus,
    SuppressionReason,
    utcnow,
)
from newsletter.web.app import create_app
from newsletter.web.security import redact
from tests import factories

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def client(settings: Settings, engine: object) -> Iterator[TestClient]:
    # The test site's public URL is https (behind a TLS proxy), as the client is.
    with TestClient(create_app(settings), base_url="https://testserver") as c:
        yield c


def _csrf(client: TestClient, path: str = "/") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert found, "the page has no CSRF field"
    return found.group(1)


def _confirmations(settings: Settings) -> list[Message]:
    folder = settings.outbox_path / "single" / "confirm"
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(folder.glob("*.eml"))]


def _text(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode()
    raise AssertionError("no text part")


def _html(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/html":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode()
    raise AssertionError("no html part")


def _confirm_path(msg: Message) -> str:
    found = re.search(r"https://news\.example\.com(/confirm/\S+)", _text(msg))
    assert found
    return found.group(1)


def _signup(client: TestClient, address: str, *letters: str, **extra: str) -> Response:
    data = {
        "csrf": _csrf(client),
        "email": address,
        "newsletters": list(letters) or ["daily-briefing"],
        **extra,
    }
    return client.post("/subscribe", data=data)


def test_the_signup_page_lists_every_newsletter_with_its_cadence(client: TestClient) -> None:
    page = client.get("/").text
    assert "Sign up for our free newsletters" in page
    assert 'value="daily-briefing"' in page and 'value="good-news"' in page
    assert "The Daily Ledger" in page and "Good News Weekly" in page
    assert "Saturdays at 08:00 London time" in page
    assert client.get("/subscribe").text == page or "Sign up" in client.get("/subscribe").text


def test_sign_up_confirm_and_the_welcome(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    answer = _signup(
        client, "Ana@Example.org", "daily-briefing", "good-news", name=XSS, timezone="Europe/Lisbon"
    )
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    [mail] = _confirmations(settings)
    assert mail["To"] == "ana@example.org"
    for part in (_text(mail), _html(mail), str(mail)):
        assert "alert(" not in part and "onerror" not in part and "<script" not in part
    assert "The Daily Ledger" in _text(mail) and "Good News Weekly" in _text(mail)
    assert mail["List-Unsubscribe"] is None  # a confirmation is not list mail
    path = _confirm_path(mail)
    with sessions() as s:  # pending until the mailbox's owner confirms
        statuses = set(s.scalars(select(Subscription.status)))
        assert statuses == {SubscriptionStatus.PENDING}
    shown = client.get(path)  # a link scanner's GET changes nothing
    assert shown.status_code == 200 and "<button" in shown.text
    with sessions() as s:
        assert set(s.scalars(select(Subscription.status))) == {SubscriptionStatus.PENDING}
    csrf = re.search(r'name="csrf" value="([^"]+)"', shown.text)
    assert csrf
    done = client.post(path, data={"csrf": csrf.group(1)})
    assert done.status_code == 200 and "Welcome" in done.text
    with sessions() as s:
        assert set(s.scalars(select(Subscription.status))) == {SubscriptionStatus.CONFIRMED}
        sub = s.scalars(select(Subscriber)).one()
        assert sub.timezone == "Europe/Lisbon"
        assert "<script>" in sub.name  # stored as typed, only ever shown escaped
    again = client.post(path, data={"csrf": csrf.group(1)})
    assert again.status_code == 200 and "already subscribed" in again.text


@pytest.mark.parametrize(
    "state", ["new", "pending", "confirmed", "unsubscribed", "suppressed", "bounced"]
)
def test_the_answer_is_the_same_whoever_the_address_is(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], state: str
) -> None:
    address = "who@example.org"
    with sessions.begin() as s:
        if state in ("pending", "confirmed", "unsubscribed"):
            factories.subscriber(s, address, status=SubscriptionStatus(state))
        if state in ("suppressed", "bounced"):
            reason = (
                SuppressionReason.UNSUBSCRIBED
                if state == "suppressed"
                else SuppressionReason.BOUNCED
            )
            suppression.add_entry(s, address=address, reason=reason, detail="test")
    body = _signup(client, address).text
    normal = _signup(client, "someone.else@example.org").text
    assert re.sub(r'value="[^"]+"', "", body) == re.sub(r'value="[^"]+"', "", normal)
    mailed = [m["To"] for m in _confirmations(settings)]
    assert (address in mailed) == (state in ("new", "pending", "unsubscribed"))


def test_fifty_sign_ups_for_one_address_mail_it_once(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    for i in range(50):
        letters = ["daily-briefing"] if i % 2 else ["good-news"]
        assert _signup(client, "target@example.org", *letters).status_code in (200, 429)
    assert [m["To"] for m in _confirmations(settings)] == ["target@example.org"]


def test_one_confirmation_per_address_per_window_and_the_link_covers_both(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    _signup(client, "both@example.org", "daily-briefing")
    _signup(client, "both@example.org", "good-news")  # within the day: no second email
    [mail] = _confirmations(settings)
    path = _confirm_path(mail)
    page = client.get(path).text
    assert "The Daily Ledger" in page and "Good News Weekly" in page
    client.post(path, data={"csrf": _csrf(client, path)})
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Subscription)) == 2
        assert set(s.scalars(select(Subscription.status))) == {SubscriptionStatus.CONFIRMED}
    later = utcnow() + timedelta(hours=settings.web.confirm_every_hours + 1)
    with sessions.begin() as s:
        s.query(Subscription).delete()
    with time_machine.travel(later, tick=False):
        _signup(client, "both@example.org", "daily-briefing")
    assert len(_confirmations(settings)) == 2


def test_the_per_ip_limit_answers_429(client: TestClient, settings: Settings) -> None:
    codes = [_signup(client, f"r{i}@example.org").status_code for i in range(30)]
    limit = settings.web.subscribe_per_ip_per_hour
    assert codes[:limit] == [200] * limit and set(codes[limit:]) == {429}
    assert "Too many sign-ups" in _signup(client, "late@example.org").text
    assert len(_confirmations(settings)) == limit


def test_the_honeypot_mails_nobody(client: TestClient, settings: Settings) -> None:
    answer = _signup(client, "bot.target@example.org", website="https://spam.example")
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    assert _confirmations(settings) == []


def test_the_csrf_cookie_is_secure_when_the_site_is_https(client: TestClient) -> None:
    cookie = client.get("/").headers["set-cookie"]
    assert cookie.startswith("nl_csrf=") and "Secure" in cookie and "HttpOnly" in cookie


def test_forms_without_their_csrf_token_are_refused(client: TestClient, settings: Settings) -> None:
    answer = client.post(
        "/subscribe", data={"email": "a@example.org", "newsletters": ["good-news"]}
    )
    assert answer.status_code == 403 and _confirmations(settings) == []
    forged = client.post(
        "/subscribe", data={"csrf": "x.y", "email": "a@example.org", "newsletters": ["good-news"]}
    )
    assert forged.status_code == 403


def test_bad_input_is_a_plain_page_and_echoes_escaped(client: TestClient) -> None:
    answer = _signup(client, XSS)
    assert answer.status_code == 400 and "Invalid email address" in answer.text
    assert "<script>" not in answer.text and "&lt;script&gt;" in answer.text
    none = client.post("/subscribe", data={"csrf": _csrf(client), "email": "a@example.org"})
    assert none.status_code == 400 and "Choose at least one newsletter" in none.text


def _sent_edition(sessions: sessionmaker[Session], settings: Settings, readers: int = 2) -> int:
    with sessions.begin() as s:
        for i in range(readers):
            factories.subscriber(
                s, f"reader{i}@example.org", newsletters=("daily-briefing", "good-news")
            )
        factories.story(s, title=f"Headline {XSS}")
        eid = editions.build_edition(s, settings=settings, slug="daily-briefing")[0].id
    runner.send_edition(
        sessions, settings=settings, edition_id=eid, provider=OutboxProvider(settings.outbox_path)
    )
    return eid


def _list_unsubscribe(settings: Settings, eid: int) -> tuple[str, Path]:
    [first, *_] = sorted((settings.outbox_path / "daily-briefing" / f"edition-{eid}").glob("*.eml"))
    msg = email.message_from_bytes(first.read_bytes())
    https = str(msg["List-Unsubscribe"]).split(",")[0].strip(" <>")
    assert https.startswith("https://news.example.com/unsubscribe/")
    return https.removeprefix("https://news.example.com"), first


def test_one_click_unsubscribe_as_a_mail_provider_sends_it(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    eid = _sent_edition(sessions, settings)
    path, _ = _list_unsubscribe(settings, eid)
    fresh = TestClient(client.app)  # no cookie, no CSRF token, no JavaScript
    for _ in range(2):  # idempotent
        answer = fresh.post(
            path,
            content="List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert answer.status_code == 200 and "unsubscribed" in answer.text
    with sessions() as s:
        sub = s.scalars(select(Subscriber).where(Subscriber.email == "reader0@example.org")).one()
        status = {x.newsletter: (x.status, x.unsubscribed_via) for x in sub.subscriptions}
    assert status["daily-briefing"] == (SubscriptionStatus.UNSUBSCRIBED, "one-click")
    assert status["good-news"][0] is SubscriptionStatus.CONFIRMED  # only that newsletter


def test_the_unsubscribe_page_asks_first_and_its_button_needs_the_form(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    eid = _sent_edition(sessions, settings)
    path, _ = _list_unsubscribe(settings, eid)
    page = client.get(path)
    assert page.status_code == 200 and "Unsubscribe from The Daily Ledger?" in page.text
    assert "/preferences/" in page.text
    no_body = TestClient(client.app).post(path)  # not One-Click, no token: refused
    assert no_body.status_code == 403
    with sessions() as s:
        assert SubscriptionStatus.UNSUBSCRIBED not in set(s.scalars(select(Subscription.status)))
    button = client.post(path, data={"csrf": _csrf(client, path)})
    assert button.status_code == 200 and "You are unsubscribed" in button.text


@pytest.mark.parametrize("route", ["unsubscribe", "preferences", "confirm"])
def test_bad_and_tampered_tokens_get_a_plain_4xx_page(
    client: TestClient, settings: Settings, route: str
) -> None:
    good = links.recipient(
        settings, delivery_id=None, email="x@example.org", name="", key="k" * 32, newsletter=""
    ).unsubscribe_url.rsplit("/", 1)[1]
    for token in ("nonsense", good[:-2] + "xx", "a" * 3000):
        get = client.get(f"/{route}/{token}")
        post = client.post(
            f"/{route}/{token}",
            content="List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        for answer in (get, post):
            assert 400 <= answer.status_code < 500, (route, token[:10], answer.status_code)
            assert "Traceback" not in answer.text and token not in answer.text


def test_an_expired_confirmation_link_says_so(client: TestClient, settings: Settings) -> None:
    _signup(client, "slow@example.org")
    path = _confirm_path(_confirmations(settings)[0])
    with time_machine.travel(utcnow() + timedelta(days=settings.web.confirm_days + 1)):
        answer = client.get(path)
    assert answer.status_code == 410 and "expired" in answer.text


def test_preferences_on_off_name_timezone_data_and_erasure(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    eid = _sent_edition(sessions, settings, readers=1)
    unsub, _ = _list_unsubscribe(settings, eid)
    path = unsub.replace("/unsubscribe/", "/preferences/")
    page = client.get(path)
    assert page.status_code == 200 and "reader0@example.org" in page.text
    assert page.headers["cache-control"] == "no-store"
    csrf = _csrf(client, path)
    saved = client.post(
        path,
        data={"csrf": csrf, "newsletters": ["good-news"], "name": XSS, "timezone": "Asia/Tokyo"},
    )
    assert saved.status_code == 200 and "Saved." in saved.text and "<script>" not in saved.text
    with sessions() as s:
        sub = s.scalars(select(Subscriber)).one()
        status = {x.newsletter: x.status for x in sub.subscriptions}
        assert status == {
            "daily-briefing": SubscriptionStatus.UNSUBSCRIBED,
            "good-news": SubscriptionStatus.CONFIRMED,
        }
        assert sub.timezone == "Asia/Tokyo"
    back = client.post(path, data={"csrf": csrf, "newsletters": ["daily-briefing", "good-news"]})
    assert back.status_code == 200
    data = client.get(path + "/data.json")
    assert data.headers["content-type"].startswith("application/json")
    held = json.loads(data.text)
    assert held["email"] == "reader0@example.org" and held["deliveries"][0]["status"] == "sent"
    assert {x["newsletter"] for x in held["subscriptions"]} == {"daily-briefing", "good-news"}
    left = client.post(path, data={"csrf": csrf, "action": "leave"})
    assert "unsubscribed from everything" in left.text
    ask = client.post(path, data={"csrf": csrf, "action": "delete"})
    assert "Delete everything about reader0@example.org?" in ask.text
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 1  # not yet
    gone = client.post(path, data={"csrf": csrf, "action": "erase"})
    assert "Your data is deleted" in gone.text
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 0
    assert client.get(path).status_code == 404


def test_the_archive_shows_only_sent_editions_with_no_reader_data(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    eid = _sent_edition(sessions, settings)
    with sessions.begin() as s:
        factories.story(s, newsletter="good-news")
        held = editions.build_edition(s, settings=settings, slug="good-news")[0]
        editions.hold_edition(s, edition_id=held.id)
        day = editions.get_edition(s, eid).issue_date
    index = client.get("/archive").text
    assert "The Daily Ledger" in index and f"/archive/daily-briefing/{day}" in index
    assert "/archive/good-news/" + str(day) not in index  # held: never shown
    listing = client.get("/archive/daily-briefing").text
    assert f"/archive/daily-briefing/{day}" in listing
    page = client.get(f"/archive/daily-briefing/{day}")
    assert page.status_code == 200 and "Headline" in page.text
    assert "<script>" not in page.text and "<img src=x" not in page.text  # escaped
    assert "&lt;script&gt;" in page.text
    assert "reader0" not in page.text and "%%" not in page.text
    assert "/unsubscribe/" not in page.text and "/preferences/" not in page.text
    assert client.get(f"/archive/good-news/{day}").status_code == 404
    assert client.get("/archive/nope").status_code == 404
    assert client.get("/archive/daily-briefing/2026-99-99").status_code == 404
    feed = client.get("/archive/daily-briefing/feed.xml")
    parsed = feedparser.parse(feed.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert [e.link for e in parsed.entries] == [
        f"https://news.example.com/archive/daily-briefing/{day}"
    ]


def test_an_edition_page_is_kept_a_minute_and_a_missing_one_is_not(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    day = editions.local_today(settings.newsletter("daily-briefing"))  # built now
    assert client.get(f"/archive/daily-briefing/{day}").status_code == 404
    eid = _sent_edition(sessions, settings)
    first = client.get(f"/archive/daily-briefing/{day}")
    assert first.status_code == 200, "a 404 must not be kept"
    with sessions.begin() as s:
        editions.get_edition(s, eid).subject = "Changed after it was read"
    assert client.get(f"/archive/daily-briefing/{day}").text == first.text
    assert "set-cookie" not in first.headers  # no form, no CSRF cookie
    with time_machine.travel(utcnow() + timedelta(seconds=61)):
        assert "Changed after it was read" in client.get(f"/archive/daily-briefing/{day}").text


def test_every_email_links_its_web_version(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    eid = _sent_edition(sessions, settings)
    _, eml = _list_unsubscribe(settings, eid)
    msg = email.message_from_bytes(eml.read_bytes())
    with sessions() as s:
        day = editions.get_edition(s, eid).issue_date
    url = f"https://news.example.com/archive/daily-briefing/{day}"
    assert url in _html(msg) and url in _text(msg)
    assert client.get(url.removeprefix("https://news.example.com")).status_code == 200


def test_security_headers_on_every_page_and_a_body_limit(client: TestClient) -> None:
    for path in ("/", "/archive", "/unsubscribe/x", "/nowhere", "/static/site.css"):
        answer = client.get(path)
        csp = answer.headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
    big = client.post("/subscribe", content=b"x" * 200_000)
    assert big.status_code == 413
    assert "style=" not in client.get("/").text  # no inline styles for the CSP to block


def test_tokens_never_reach_the_access_log() -> None:
    line = '127.0.0.1:5 - "POST /unsubscribe/abc.DEF-_:ghi HTTP/1.1" 200'
    assert redact(line) == '127.0.0.1:5 - "POST /unsubscribe/[token] HTTP/1.1" 200'
    assert redact("/preferences/t0k3n/data.json") == "/preferences/[token]/data.json"
    assert redact("/confirm/x.y.z?a=1") == "/confirm/[token]?a=1"
