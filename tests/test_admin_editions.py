"""The console's Editions pages and the API's edition actions, through the framework's
test client on a real database and the real `outbox` provider: build, preview (its own
sandboxing policy), checks, a test copy, send now after a confirmation that states the
audience (the send runs on in the server and its progress reaches the end), send at a
time, hold and release, pause, resume and cancel, special editions from an uploaded
file, and what hostile input gets."""

from __future__ import annotations

import email
import re
from collections.abc import Iterator
from datetime import timedelta
from email.message import Message
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions
from newsletter.delivery import sender
from newsletter.models import (
    Delivery,
    Edition,
    EditionStatus,
    StaffRole,
    SubscriptionStatus,
    utcnow,
)
from newsletter.staff import accounts, api_tokens
from newsletter.web.admin.editions import PREVIEW_HEADERS
from newsletter.web.app import create_app
from newsletter.web.background import background
from newsletter.web.security import CSP
from tests import factories
from tests.waiting import wait_until

PASSWORD = "correct horse battery"
EDITOR = "ed@example.org"
OPERATOR = "op@example.org"
LEAD = "Harbour reopens after the storm"
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
SANDBOX = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; "
    "frame-ancestors 'self'; sandbox"
)


@pytest.fixture
def client(settings: Settings, engine: object) -> Iterator[TestClient]:
    with TestClient(create_app(settings), base_url="https://testserver") as c:
        yield c


@pytest.fixture
def staff(sessions: sessionmaker[Session]) -> dict[str, str]:
    """An editor and an operator, with an API token each."""
    tokens = {}
    with sessions.begin() as s:
        for address, role in ((EDITOR, StaffRole.EDITOR), (OPERATOR, StaffRole.OPERATOR)):
            accounts.add(s, email=address, role=role, password=PASSWORD)
            _, tokens[role.value] = api_tokens.create(s, name=role.value, role=role)
    return tokens


def _csrf(client: TestClient, path: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert found, f"{path} has no CSRF field"
    return found.group(1)


def _login(client: TestClient, address: str) -> None:
    data = {"email": address, "password": PASSWORD, "csrf": _csrf(client, "/admin/login")}
    assert client.post("/admin/login", data=data, follow_redirects=False).status_code == 303


def _news(sessions: sessionmaker[Session], readers: int = 3) -> None:
    """Today's stories (the lead is the newest) and confirmed readers of the daily."""
    with sessions.begin() as s:
        factories.story(s, title=LEAD, age=timedelta(minutes=20))
        for n in range(3):
            factories.story(s, title=f"Second story {n}", age=timedelta(hours=2 + n))
        for n in range(readers):
            factories.subscriber(s, f"reader{n}@example.com")
        factories.subscriber(s, "pending@example.com", status=SubscriptionStatus.PENDING)


def _build(client: TestClient, **form: str) -> int:
    data = {"newsletter": "daily-briefing", "csrf": _csrf(client, "/admin/editions"), **form}
    answer = client.post("/admin/editions/build", data=data, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    found = re.fullmatch(
        r"/admin/editions/(\d+)\?done=(built|existing)", answer.headers["location"]
    )
    assert found, answer.headers["location"]
    return int(found.group(1))


def _post(client: TestClient, path: str, **form: str) -> Any:
    page = path.rsplit("/", 1)[0]  # the edition's page carries the forms' token
    data = {"csrf": _csrf(client, page), **form}
    return client.post(path, data=data, follow_redirects=False)


def _status(sessions: sessionmaker[Session], edition_id: int) -> EditionStatus:
    with sessions() as s:
        return editions.edition_status(s, edition_id)


def _progress(client: TestClient, edition_id: int) -> dict[str, Any]:
    answer = client.get(f"/admin/editions/{edition_id}/progress.json")
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    data: dict[str, Any] = answer.json()
    return data


def _wait_sent(client: TestClient, edition_id: int) -> dict[str, Any]:
    """The counts once the edition is sent and this server's runner has finished."""

    def done() -> bool:
        now = _progress(client, edition_id)
        return bool(now["status"] == "sent" and not now["running_here"])

    wait_until(done, timeout=30, what=f"edition {edition_id} to be sent")
    return _progress(client, edition_id)


def _runs_here(client: TestClient, edition_id: int) -> bool:
    """Whether the app's own thread is still on the edition (the API has no page)."""
    return background(client.app.state.web).running(edition_id)  # type: ignore[attr-defined]


def _start_without_runner(settings: Settings, sessions: sessionmaker[Session], eid: int) -> None:
    """Freeze an edition's audience and mark it sending, with nobody sending it."""
    with sessions.begin() as s:
        sender.start_send(s, settings=settings, edition_id=eid, now=utcnow())


def _emls(settings: Settings, edition_id: int) -> list[Message]:
    folder = settings.outbox_path / "daily-briefing" / f"edition-{edition_id}"
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(folder.glob("*.eml"))]


class _Tags(HTMLParser):
    """Every element a browser would build from a page, and every attribute name."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.attributes: set[str] = set()
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)
        self.attributes.update(name for name, _ in attrs)


def _no_inline_code(html: str) -> None:
    """The console's CSP forbids inline scripts and styles: the pages have none."""
    assert not re.search(r"<script(?![^>]*\ssrc=)", html), "an inline script"
    assert "<style" not in html and " style=" not in html, "an inline style"


# ----- the console ------------------------------------------------------------------


def test_build_preview_check_and_a_test_copy_to_the_editor(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings, staff: object
) -> None:
    _news(sessions)
    _login(client, EDITOR)
    listing = client.get("/admin/editions")
    assert listing.status_code == 200 and 'href="/admin/editions">Editions</a>' in listing.text
    assert "No edition yet." in listing.text
    eid = _build(client)
    page = client.get(f"/admin/editions/{eid}?done=built")
    assert page.status_code == 200 and "Edition built." in page.text
    assert LEAD in page.text and "All checks passed." in page.text
    assert page.headers["content-security-policy"] == CSP + "; frame-src 'self'"
    _no_inline_code(page.text)
    assert '<script src="/static/admin-editions.js" defer></script>' in page.text
    frames = re.findall(r'<iframe src="([^"]+)" width="(\d+)"', page.text)
    assert [w for _, w in frames] == ["600", "375"]
    for src, _ in frames:
        shown = client.get(src)
        assert shown.status_code == 200 and shown.headers["content-type"].startswith("text/html")
        # The subject's parts: the newsletter's name (the title) and the lead story.
        assert "<title>The Daily Ledger" in shown.text and LEAD in shown.text
        assert (
            shown.headers["content-security-policy"]
            == SANDBOX
            == PREVIEW_HEADERS["content-security-policy"]
        )
        assert shown.headers["x-frame-options"] == "SAMEORIGIN"
        assert shown.headers["x-content-type-options"] == "nosniff"  # the rest still added
    text = client.get(f"/admin/editions/{eid}/preview?part=text")
    assert text.headers["content-type"].startswith("text/plain") and LEAD in text.text
    assert re.search(r'<pre class="preview-text"[^>]*>[^<]*' + re.escape(LEAD), page.text)
    assert "audience 3 (as of now)" in page.text
    assert client.get("/static/admin-editions.js").status_code == 200
    # The list shows it; building the same day again returns it unchanged.
    assert f'href="/admin/editions/{eid}">#{eid}</a>' in client.get("/admin/editions").text
    again = client.post(
        "/admin/editions/build",
        data={"newsletter": "daily-briefing", "csrf": _csrf(client, "/admin/editions")},
        follow_redirects=False,
    )
    assert again.headers["location"] == f"/admin/editions/{eid}?done=existing"
    # A test copy goes to the signed-in editor only, outside the ledger.
    assert client.post(f"/admin/editions/{eid}/test", follow_redirects=False).status_code == 403
    sent = _post(client, f"/admin/editions/{eid}/test")
    assert sent.status_code == 303 and sent.headers["location"].endswith("?done=test")
    [copy] = _emls(settings, eid)
    assert copy["To"] == EDITOR and copy["Subject"] == f"[TEST] The Daily Ledger: {LEAD}"
    assert list(settings.outbox_path.rglob("*.eml")) == [
        settings.outbox_path / "daily-briefing" / f"edition-{eid}" / f"test-{EDITOR}.eml"
    ]
    with sessions() as s:
        assert s.scalar(select(func.count(Delivery.id))) == 0
    assert _status(sessions, eid) is EditionStatus.BUILT


def test_send_now_states_the_audience_then_runs_to_the_end(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings, staff: object
) -> None:
    _news(sessions, readers=5)
    _login(client, EDITOR)
    eid = _build(client)
    confirm = client.get(f"/admin/editions/{eid}/send")
    assert confirm.status_code == 200
    assert re.search(r'<strong data-field="audience">5</strong> subscribers', confirm.text)
    assert "Send to 5 subscribers" in confirm.text
    _no_inline_code(confirm.text)
    bare = client.post(f"/admin/editions/{eid}/send", follow_redirects=False)
    assert bare.status_code == 403 and "This form has expired" in bare.text
    assert _status(sessions, eid) is EditionStatus.BUILT
    started = _post(client, f"/admin/editions/{eid}/send")
    assert started.status_code == 303
    assert started.headers["location"] == f"/admin/editions/{eid}?done=sending"
    done = _wait_sent(client, eid)
    assert done["audience"] == done["handled"] == done["sent"] == 5
    assert done["failed"] == done["uncertain"] == done["waiting"] == 0
    assert done["live"] is False and done["error"] == ""
    assert sorted(m["To"] for m in _emls(settings, eid)) == [
        f"reader{n}@example.com" for n in range(5)
    ]
    page = client.get(f"/admin/editions/{eid}")
    assert 'data-live="false"' in page.text and '<progress max="5" value="5"' in page.text
    assert "Send now" not in page.text  # sent: nothing to start


def test_hold_release_and_send_at_a_time(
    client: TestClient, sessions: sessionmaker[Session], staff: object
) -> None:
    _news(sessions)
    _login(client, EDITOR)
    eid = _build(client)
    held = _post(client, f"/admin/editions/{eid}/hold", reason="legal wants a look")
    assert held.headers["location"].endswith("?done=held")
    assert _status(sessions, eid) is EditionStatus.HELD
    page = client.get(f"/admin/editions/{eid}")
    assert "legal wants a look" in page.text and "/release" in page.text
    refused = client.get(f"/admin/editions/{eid}/send")
    assert "it is held for review; release it first" in refused.text
    assert 'action="/admin/editions/{eid}/send"' not in refused.text
    bad = _post(client, f"/admin/editions/{eid}/schedule", at="25:99")
    assert bad.status_code == 400
    assert "Send time &#39;25:99&#39; is not a time" in bad.text
    at = (utcnow() + timedelta(days=2)).strftime("%Y-%m-%dT06:30")
    scheduled = _post(client, f"/admin/editions/{eid}/schedule", at=at)
    assert scheduled.headers["location"].endswith("?done=scheduled")
    page = client.get(f"/admin/editions/{eid}?done=scheduled")
    assert "Send scheduled." in page.text and f"{at[:10]} 06:30 E" in page.text
    assert "No scheduler is running now" in page.text
    released = _post(client, f"/admin/editions/{eid}/release")
    assert released.status_code == 303 and _status(sessions, eid) is EditionStatus.BUILT
    twice = _post(client, f"/admin/editions/{eid}/release")
    assert twice.status_code == 409 and f"Edition {eid} is built, not held" in twice.text
    # Pausing is an operator's: an editor may not, even on the edition's own page.
    assert _post(client, f"/admin/editions/{eid}/pause").status_code == 403


def test_an_operator_pauses_resumes_and_cancels(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings, staff: object
) -> None:
    _news(sessions, readers=4)
    with sessions.begin() as s:
        factories.story(s, newsletter="good-news")
        factories.subscriber(s, "glad@example.com", newsletters=("good-news",))
        eid = editions.build_edition(s, settings=settings, slug="daily-briefing")[0].id
        other = editions.build_edition(s, settings=settings, slug="good-news")[0].id
    _start_without_runner(settings, sessions, eid)
    _login(client, OPERATOR)
    page = client.get(f"/admin/editions/{eid}")
    assert page.status_code == 200 and "Pause the send" in page.text
    assert "No runner in this web server is working on it" in page.text
    assert "<iframe" not in page.text and "/test" not in page.text  # previews are editors'
    assert 'data-live="true"' in page.text and _progress(client, eid)["waiting"] == 4
    assert client.get(f"/admin/editions/{eid}/preview").status_code == 403
    assert client.get("/admin/editions").status_code == 403
    bare = client.post(f"/admin/editions/{eid}/pause", follow_redirects=False)
    assert bare.status_code == 403 and _status(sessions, eid) is EditionStatus.SENDING
    paused = _post(client, f"/admin/editions/{eid}/pause")
    assert paused.headers["location"].endswith("?done=paused")
    assert _status(sessions, eid) is EditionStatus.PAUSED
    assert _progress(client, eid)["live"] is False
    assert "Resume the send" in client.get(f"/admin/editions/{eid}").text
    resumed = _post(client, f"/admin/editions/{eid}/resume")
    assert resumed.headers["location"].endswith("?done=resumed")
    done = _wait_sent(client, eid)
    assert done["sent"] == done["audience"] == 4 and len(_emls(settings, eid)) == 4
    again = _post(client, f"/admin/editions/{eid}/resume")
    assert again.status_code == 409 and f"Edition {eid} is sent, not paused" in again.text
    # Cancel, after a confirmation that says what it stops.
    _start_without_runner(settings, sessions, other)
    confirm = client.get(f"/admin/editions/{other}/cancel")
    assert "the <strong>1</strong> deliveries not yet handed" in confirm.text
    assert "cannot be undone" in confirm.text
    cancelled = _post(client, f"/admin/editions/{other}/cancel")
    assert cancelled.headers["location"].endswith("?done=cancelled")
    assert _status(sessions, other) is EditionStatus.CANCELLED
    counts = _progress(client, other)
    assert counts["failed"] == counts["handled"] == 1 and counts["sent"] == 0
    late = _post(client, f"/admin/editions/{other}/pause")
    assert late.status_code == 409 and "error" in late.text and "Traceback" not in late.text


def _sending_rows(sessions: sessionmaker[Session], eid: int) -> dict[str, int]:
    with sessions() as s:
        rows = s.execute(
            select(Delivery.status, func.count())
            .where(Delivery.edition_id == eid)
            .group_by(Delivery.status)
        )
        return {status.value: int(n) for status, n in rows}


def test_a_slow_send_is_followed_paused_resumed_and_outlives_a_restart(
    settings: Settings, engine: object, sessions: sessionmaker[Session]
) -> None:
    """One recipient per batch at 5 a second: the page follows it, an admin pauses and
    resumes it, the server stops mid-send (the batch in flight ends, the rest wait),
    and the next server continues it; nobody gets it twice."""
    slow = settings.model_copy(
        update={
            "delivery": settings.delivery.model_copy(
                update={"rate_per_second": 5.0, "batch_size": 1}
            )
        }
    )
    _news(sessions, readers=12)
    with sessions.begin() as s:
        accounts.add(s, email="admin@example.org", role=StaffRole.ADMIN, password=PASSWORD)
    with TestClient(create_app(slow), base_url="https://testserver") as client:
        _login(client, "admin@example.org")
        eid = _build(client)
        assert _post(client, f"/admin/editions/{eid}/send").status_code == 303
        wait_until(lambda: _progress(client, eid)["sent"] >= 1, what="the first batch")
        now = _progress(client, eid)
        assert now["live"] and now["running_here"] and now["audience"] == 12
        page = client.get(f"/admin/editions/{eid}")
        assert "This web server is sending it now." in page.text and "Send now" not in page.text
        assert "already sending it" in client.get(f"/admin/editions/{eid}/send").text
        busy = _post(client, f"/admin/editions/{eid}/send")
        assert busy.status_code == 409 and "already sending from this web server" in busy.text
        assert _post(client, f"/admin/editions/{eid}/pause").status_code == 303
        wait_until(lambda: not _progress(client, eid)["running_here"], what="the runner to stop")
        paused = _progress(client, eid)
        assert paused["status"] == "paused" and paused["sent"] < 12 and paused["error"] == ""
        assert "sending" not in _sending_rows(sessions, eid)  # the batch in flight ended
        assert _post(client, f"/admin/editions/{eid}/resume").status_code == 303
        wait_until(lambda: _progress(client, eid)["sent"] > paused["sent"], what="the resumed send")
    # The server stopped mid-send: its runner finished the batch in flight and left.
    left = _sending_rows(sessions, eid)
    assert _status(sessions, eid) is EditionStatus.SENDING
    assert left.get("queued", 0) > 0 and "sending" not in left and "uncertain" not in left
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        _login(client, "admin@example.org")
        page = client.get(f"/admin/editions/{eid}")
        assert "No runner in this web server is working on it" in page.text
        assert "Continue sending…" in page.text
        confirm = client.get(f"/admin/editions/{eid}/send")
        assert f"<strong>{left['queued']}</strong> of them still wait" in confirm.text
        assert _post(client, f"/admin/editions/{eid}/send").status_code == 303
        done = _wait_sent(client, eid)
    assert done["sent"] == 12 and _sending_rows(sessions, eid) == {"sent": 12}
    assert len(_emls(settings, eid)) == 12
    with sessions() as s:
        attempts = s.scalars(select(Delivery.attempts).where(Delivery.edition_id == eid)).all()
    assert set(attempts) == {1}  # each reader was handed to the provider once


def test_a_special_edition_from_an_uploaded_markdown_file(
    client: TestClient, sessions: sessionmaker[Session], staff: object
) -> None:
    _login(client, EDITOR)
    form = client.get("/admin/editions/special")
    assert form.status_code == 200 and 'enctype="multipart/form-data"' in form.text
    body = b"# Bridge closed\n\nUntil further notice. <script>alert(1)</script>\n"
    subject = f"Breaking {XSS}"

    def upload(name: str, data: bytes, csrf: bool = True) -> Any:
        fields = {"newsletter": "daily-briefing", "subject": subject}
        if csrf:
            fields["csrf"] = _csrf(client, "/admin/editions/special")
        return client.post(
            "/admin/editions/special",
            data=fields,
            files={"source": (name, data, "text/markdown")},
            follow_redirects=False,
        )

    assert upload("brief.md", body, csrf=False).status_code == 403
    wrong = upload("brief.txt", body)
    assert wrong.status_code == 400
    assert "Brief.txt: expected a Markdown (.md) or MJML (.mjml) file" in wrong.text
    assert "/tmp" not in wrong.text and "newsletter-special-" not in wrong.text
    empty = upload("../../etc/brief.md", b"  \n")
    assert empty.status_code == 400 and "Brief.md is empty" in empty.text
    made = upload("brief.md", body)
    assert made.status_code == 303, made.text
    found = re.fullmatch(r"/admin/editions/(\d+)\?done=special", made.headers["location"])
    assert found
    eid = int(found.group(1))
    with sessions() as s:
        edition = s.get(Edition, eid)
        assert edition is not None and edition.kind.value == "special"
    page = client.get(f"/admin/editions/{eid}?done=special")
    assert page.status_code == 200 and "special edition" in page.text
    assert XSS not in page.text and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
    shown = client.get(f"/admin/editions/{eid}/preview")
    assert "Bridge closed" in shown.text
    tags = _Tags(shown.text)
    assert "script" not in tags.names and "img" not in tags.names  # neither ran nor loaded
    assert not [a for a in tags.attributes if a.startswith("on")]
    assert shown.headers["content-security-policy"] == SANDBOX


def test_hostile_input_gets_a_plain_answer(
    client: TestClient, sessions: sessionmaker[Session], staff: object
) -> None:
    _news(sessions)
    _login(client, EDITOR)
    bad_date = client.post(
        "/admin/editions/build",
        data={
            "newsletter": "daily-briefing",
            "issue_date": f"2026-02-30{XSS}",
            "csrf": _csrf(client, "/admin/editions"),
        },
    )
    assert bad_date.status_code == 400 and "is not a date (use YYYY-MM-DD)" in bad_date.text
    assert XSS not in bad_date.text and "Traceback" not in bad_date.text
    unknown = client.post(
        "/admin/editions/build",
        data={"newsletter": "nope", "csrf": _csrf(client, "/admin/editions")},
    )
    assert unknown.status_code == 404 and "Unknown newsletter &#39;nope&#39;" in unknown.text
    for path in (
        "/admin/editions/999",
        "/admin/editions/abc",
        "/admin/editions/99999999999999999999",
        "/admin/editions/999/preview",
        "/admin/editions/999/send",
    ):
        missing = client.get(path)
        assert missing.status_code == 404 and "No such edition" in missing.text, path
    assert client.get("/admin/editions/999/progress.json").json()["code"] == "edition.not_found"
    assert _post(client, "/admin/editions/999/hold").status_code == 404
    assert client.get("/admin/editions?after=garbage").status_code == 400
    eid = _build(client)
    assert client.get(f"/admin/editions/{eid}/preview?part=pdf").status_code == 400


# ----- the API ----------------------------------------------------------------------------


def _api(client: TestClient, token: str, method: str, path: str, **kw: Any) -> Any:
    return client.request(
        method, "/api/v1" + path, headers={"Authorization": f"Bearer {token}"}, **kw
    )


def test_the_api_builds_previews_checks_holds_schedules_and_sends(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings, staff: dict[str, str]
) -> None:
    _news(sessions, readers=2)
    editor, operator = staff["editor"], staff["operator"]
    built = _api(client, editor, "POST", "/editions", json={"newsletter": "daily-briefing"})
    assert built.status_code == 201 and built.json()["created"] is True
    eid = built.json()["edition"]["id"]
    assert built.json()["edition"]["stories"] == 4
    same = _api(client, editor, "POST", "/editions", json={"newsletter": "daily-briefing"})
    assert same.status_code == 200 and same.json()["created"] is False
    none = _api(client, editor, "POST", "/editions", json={"newsletter": "good-news"})
    assert none.status_code == 409 and none.json()["code"] == "edition.no_stories"
    bad = _api(client, editor, "POST", "/editions", json={"newsletter": "nope"})
    assert bad.status_code == 404 and bad.json()["code"] == "newsletter.unknown"
    html = _api(client, editor, "GET", f"/editions/{eid}/preview")
    assert html.status_code == 200 and LEAD in html.json()["content"]
    assert html.json()["subject"] == f"The Daily Ledger: {LEAD}"
    text = _api(client, editor, "GET", f"/editions/{eid}/preview", params={"part": "text"})
    assert text.json()["part"] == "text" and "<" not in text.json()["content"].split("\n")[0]
    assert _api(client, editor, "GET", f"/editions/{eid}/preview?part=pdf").status_code == 422
    check = _api(client, editor, "GET", f"/editions/{eid}/check").json()
    assert check["passed"] and check["sendable"] and check["audience"] == 2
    assert check["problems"] == [] and check["frozen"] is False
    held = _api(client, editor, "POST", f"/editions/{eid}/hold", json={"reason": "wait"})
    assert held.json()["status"] == "held" and held.json()["status_reason"] == "wait"
    blocked = _api(client, editor, "POST", f"/editions/{eid}/send")
    assert blocked.status_code == 409 and blocked.json()["code"] == "edition.held"
    assert _api(client, editor, "POST", f"/editions/{eid}/release").json()["status"] == "built"
    again = _api(client, editor, "POST", f"/editions/{eid}/release")
    assert again.status_code == 409 and again.json()["code"] == "edition.not_held"
    when = _api(client, editor, "POST", f"/editions/{eid}/schedule", json={"at": "soon"})
    assert when.status_code == 400 and when.json()["code"] == "send_time.invalid"
    at = (utcnow() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M+00:00")
    one = _api(client, editor, "POST", f"/editions/{eid}/schedule", json={"at": at})
    assert one.status_code == 201 and one.json()["job_id"].startswith("send:")
    assert one.json()["timezone"] == "America/New_York" and one.json()["scheduler_running"] is False
    # An operator may not build, preview, check, hold, release, schedule or send.
    for method, path, body in (
        ("POST", "/editions", {"newsletter": "daily-briefing"}),
        ("GET", f"/editions/{eid}/preview", None),
        ("GET", f"/editions/{eid}/check", None),
        ("POST", f"/editions/{eid}/hold", None),
        ("POST", f"/editions/{eid}/release", None),
        ("POST", f"/editions/{eid}/schedule", {"at": at}),
        ("POST", f"/editions/{eid}/send", None),
    ):
        refused = _api(client, operator, method, path, json=body)
        assert refused.status_code == 403, (path, refused.status_code)
        assert refused.json()["code"] == "auth.forbidden"
    sending = _api(client, editor, "POST", f"/editions/{eid}/send")
    assert sending.status_code == 202 and sending.json()["audience"] == 2
    wait_until(
        lambda: (
            _api(client, editor, "GET", f"/editions/{eid}").json()["status"] == "sent"
            and not _runs_here(client, eid)
        ),
        timeout=30,
        what="the API's send to finish",
    )
    figures = _api(client, editor, "GET", f"/editions/{eid}").json()
    assert figures["sent"] == 2 and figures["waiting"] == 0 and len(_emls(settings, eid)) == 2
    missing = _api(client, editor, "GET", "/editions/999/check")
    assert missing.status_code == 404 and missing.json()["code"] == "edition.not_found"


def test_the_api_lets_an_operator_pause_resume_and_cancel(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings, staff: dict[str, str]
) -> None:
    _news(sessions, readers=3)
    with sessions.begin() as s:
        eid = editions.build_edition(s, settings=settings, slug="daily-briefing")[0].id
        factories.story(s, newsletter="good-news")
        other = editions.build_edition(s, settings=settings, slug="good-news")[0].id
    _start_without_runner(settings, sessions, eid)
    editor, operator = staff["editor"], staff["operator"]
    for action in ("pause", "resume", "cancel"):
        refused = _api(client, editor, "POST", f"/editions/{eid}/{action}")
        assert refused.status_code == 403, action
    paused = _api(client, operator, "POST", f"/editions/{eid}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert paused.json()["waiting"] == 3
    resumed = _api(client, operator, "POST", f"/editions/{eid}/resume")
    assert resumed.status_code == 202
    wait_until(
        lambda: _status(sessions, eid) is EditionStatus.SENT and not _runs_here(client, eid),
        timeout=30,
        what="the resumed send to finish",
    )
    assert len(_emls(settings, eid)) == 3
    twice = _api(client, operator, "POST", f"/editions/{eid}/resume")
    assert twice.status_code == 409 and twice.json()["code"] == "edition.not_paused"
    cancelled = _api(client, operator, "POST", f"/editions/{other}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    late = _api(client, operator, "POST", f"/editions/{other}/pause")
    assert late.status_code == 409 and late.json()["code"].startswith("edition.")


# ----- in a real browser, on `newsletter serve` alone -----------------------------------


@pytest.mark.timeout(180)
def test_in_a_browser_the_edition_page_follows_a_send_on_newsletter_serve_alone(
    tmp_path: Path,
) -> None:
    """Chromium on `newsletter serve` (SQLite, the outbox, no scheduler): build, the
    framed previews load under the page's policy, send after the confirmation, and the
    page's script follows the counts to the end with nobody clicking Refresh."""
    from playwright.sync_api import expect

    from newsletter import db
    from tests.browser import SCREENSHOTS, Pages, Site, chromium, emls, serving

    # 12 readers, one a batch, 1.5 a second: the send takes about 8 s (4 polls).
    site = Site.create(
        tmp_path,
        NEWSLETTER_DELIVERY__RATE_PER_SECOND="1.5",
        NEWSLETTER_DELIVERY__BATCH_SIZE="1",
    )
    engine = db.make_engine(f"sqlite:///{site.database}")
    try:
        _news(db.session_factory(engine), readers=12)
        with db.session_factory(engine).begin() as s:
            accounts.add(s, email="admin@example.org", role=StaffRole.ADMIN, password=PASSWORD)
    finally:
        engine.dispose()
    pages = Pages("editions")
    errors: list[str] = []
    with serving(site) as server, chromium() as browser:
        context = browser.new_context(base_url=server, viewport={"width": 1280, "height": 800})
        context.set_default_timeout(15_000)
        outside: list[str] = []

        def block(route: Any) -> None:  # nothing leaves 127.0.0.1
            outside.append(route.request.url)
            route.abort()

        def console_error(message: Any) -> None:  # a CSP violation, a script error
            if message.type == "error":
                errors.append(message.text)

        context.route(lambda url: not url.startswith(server + "/"), block)
        page = context.new_page()
        page.on("console", console_error)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto("/admin/login")
        page.get_by_label("Email address").fill("admin@example.org")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("navigation", name="Console").get_by_role("link", name="Editions").click()
        expect(page.locator("h1")).to_have_text("Editions")
        pages.check(page, "list")
        page.get_by_role("button", name="Build").click()
        expect(page.get_by_role("status")).to_have_text("Edition built.")
        expect(page.locator("h1")).to_contain_text(LEAD)
        for frame in page.frames[1:]:  # both previews render inside the sandbox
            frame.wait_for_load_state()
            assert LEAD in frame.content()
        assert len(page.frames) == 3
        pages.check(page, "edition")
        page.get_by_role("link", name="Send now…").click()
        expect(page.locator("strong[data-field=audience]")).to_have_text("12")
        pages.check(page, "confirm")
        page.get_by_role("button", name="Send to 12 subscribers").click()
        expect(page.get_by_role("status")).to_have_text(
            "Sending started. The counts below follow it."
        )
        # The script reloads the page once the audience is frozen (the status changed),
        # then moves the counts on in place while it stays "sending".
        expect(page.locator("[data-field=status]")).to_have_text("sending")
        first = int(page.locator("[data-field=handled]").inner_text())
        page.wait_for_function(
            "n => Number(document.querySelector('[data-field=handled]').textContent) > n"
            " && document.querySelector('[data-field=status]').textContent === 'sending'",
            arg=first,
        )
        # At the end it reloads once, so the actions match the state.
        expect(page.locator("[data-field=status]")).to_have_text("sent", timeout=30_000)
        expect(page.locator("[data-field=sent]")).to_have_text("12")
        expect(page.locator("progress")).to_have_attribute("value", "12")
        pages.check(page, "sent")
        # Last (scrolling to a frame can leave clicks going to it in headless chromium):
        # each preview on its own, as a full-page shot may not paint the frames.
        for n, width in enumerate(("600", "375")):
            shot = page.locator("iframe").nth(n)
            shot.scroll_into_view_if_needed()
            shot.screenshot(path=str(SCREENSHOTS / f"editions-preview-{width}.png"))
        context.close()
    [folder] = (site.outbox / "daily-briefing").glob("edition-*")
    assert len(emls(folder)) == 12
    assert outside == [] and errors == [], (outside, errors)
    pages.assert_accessible()
