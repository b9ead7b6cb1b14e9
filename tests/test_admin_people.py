"""The console's Stories and Subscribers pages and their API, over real databases:
filters and keyset pages, the actions and what they change, CSRF, roles, CSV import
and export, and hostile names escaped everywhere."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import markupsafe
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter.audience import subscribers as svc
from newsletter.audience import suppression
from newsletter.audience.subscribers import _after
from newsletter.config import Settings
from newsletter.content import editions, stories
from newsletter.content.stories import StoryFilter
from newsletter.delivery import runner
from newsletter.delivery.providers.files import OutboxProvider
from newsletter.errors import InputError, NotFoundError, StateError
from newsletter.models import (
    Edition,
    StaffRole,
    Story,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    SuppressionReason,
    utcnow,
)
from newsletter.staff import accounts, api_tokens
from newsletter.web.admin import subscribers as admin_subscribers
from newsletter.web.app import create_app
from tests import factories
from tests.test_authorization import guarded_routes

PASSWORD = "correct horse battery"
XSS = '<script>alert("x")</script>'
SLUG = "daily-briefing"

Login = Callable[[StaffRole], TestClient]


@pytest.fixture
def login(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[Login]:
    """A console client signed in with the given role (one account per role)."""
    opened: list[TestClient] = []

    def sign_in(role: StaffRole) -> TestClient:
        with sessions.begin() as s:
            email = f"{role.value}{len(opened)}@example.org"
            accounts.add(s, email=email, role=role, password=PASSWORD)
        client = TestClient(create_app(settings), base_url="https://testserver")
        client.__enter__()
        opened.append(client)
        data = {"email": email, "password": PASSWORD, "csrf": _csrf(client, "/admin/login")}
        assert client.post("/admin/login", data=data, follow_redirects=False).status_code == 303
        return client

    yield sign_in
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def token(sessions: sessionmaker[Session]) -> Callable[[StaffRole], dict[str, str]]:
    """The Authorization header of a new API token of the given role."""
    made: list[str] = []

    def make(role: StaffRole) -> dict[str, str]:
        with sessions.begin() as s:
            _, value = api_tokens.create(s, name=f"{role.value}-{len(made)}", role=role)
        made.append(value)
        return {"Authorization": f"Bearer {value}"}

    return make


def escape(text: str) -> str:
    """``text`` as the pages' autoescaping writes it."""
    return str(markupsafe.escape(text))


def _csrf(client: TestClient, path: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert found, f"{path} has no CSRF field"
    return found.group(1)


def _post(client: TestClient, path: str, data: dict[str, object], *, csrf_from: str) -> Response:
    return client.post(
        path, data={**data, "csrf": _csrf(client, csrf_from)}, follow_redirects=False
    )


def _titles(html: str) -> set[str]:
    return set(re.findall(r'rel="noopener noreferrer">([^<]+)</a>', html))


def _picked(session: Session, settings: Settings) -> list[Story]:
    newsletter = settings.newsletter(SLUG)
    now = utcnow()
    return editions.select_stories(
        session,
        slug=SLUG,
        newsletter=newsletter,
        issue_date=editions.local_today(newsletter, now),
        now=now,
    )


# ----- the routes are all guarded -------------------------------------------------


def test_the_route_walk_finds_every_new_page_and_endpoint(login: Login) -> None:
    client = login(StaffRole.ADMIN)
    found = {(g.method, g.path): g.permission.value for g in guarded_routes(client)}
    for key, permission in {
        ("GET", "/admin/stories"): "stories",
        ("POST", "/admin/stories/{story_id}/pin"): "stories",
        ("POST", "/admin/stories/fetch"): "stories",
        ("GET", "/admin/subscribers"): "subscribers_read",
        ("GET", "/admin/subscribers/person"): "subscribers_read",
        ("GET", "/admin/subscribers/export"): "subscribers_read",
        ("POST", "/admin/subscribers/import"): "subscribers_write",
        ("POST", "/admin/subscribers/unsubscribe"): "subscribers_write",
        ("POST", "/admin/subscribers/suppress"): "suppression",
        ("POST", "/admin/subscribers/unsuppress"): "suppression",
        ("GET", "/api/v1/subscribers"): "subscribers_read",
        ("PATCH", "/api/v1/subscribers/{email:path}"): "subscribers_write",
        ("POST", "/api/v1/subscribers/{email:path}/unsubscribe"): "subscribers_write",
        ("POST", "/api/v1/stories/{story_id}/hide"): "stories",
    }.items():
        assert found.get(key) == permission, key


# ----- the services' additions ----------------------------------------------------


def test_list_stories_filters_fresh_pinned_hidden_used(
    session: Session, settings: Settings
) -> None:
    used = factories.story(session, title="Used")
    editions.build_edition(session, settings=settings, slug=SLUG)
    fresh = factories.story(session, title="Fresh")
    pinned = factories.story(session, title="Pinned", pinned=True)
    hidden = factories.story(session, title="Hidden", hidden=True)
    stale = factories.story(session, title="Stale", age=timedelta(hours=30))
    other = factories.story(session, newsletter="good-news", title="Other")

    def ids(only: StoryFilter | None, **kw: object) -> list[int]:
        page = stories.list_stories(
            session,
            newsletter=SLUG,
            only=only,
            settings=settings,
            **kw,  # type: ignore[arg-type]
        )
        return [s.id for s in page.items]

    assert ids(StoryFilter.FRESH) == [pinned.id, fresh.id]
    assert ids(StoryFilter.PINNED) == [pinned.id]
    assert ids(StoryFilter.HIDDEN) == [hidden.id]
    assert ids(StoryFilter.USED) == [used.id]
    assert ids(None) == [pinned.id, fresh.id, used.id, stale.id]
    assert hidden.id in ids(None, include_hidden=True) and other.id not in ids(None)
    with pytest.raises(InputError):
        stories.list_stories(session, only=StoryFilter.FRESH, settings=settings)
    with pytest.raises(NotFoundError):
        stories.list_stories(session, newsletter="nope", only=StoryFilter.FRESH, settings=settings)


def test_list_subscribers_by_address_prefix(session: Session) -> None:
    for address in ("amy@example.com", "amos@example.com", "am@example.com", "bob@example.com"):
        factories.subscriber(session, address)
    factories.subscriber(session, "ama@example.com", newsletters=("good-news",))

    def emails(prefix: str, **kw: object) -> list[str]:
        return [r.email for r in svc.list_subscribers(session, prefix=prefix, **kw).items]  # type: ignore[arg-type]

    assert emails("am") == [
        "amy@example.com",
        "amos@example.com",
        "am@example.com",
        "ama@example.com",
    ]
    assert emails(" AMo ") == ["amos@example.com"]
    assert emails("am", newsletter="good-news") == ["ama@example.com"]
    assert emails("zz") == [] and len(emails("")) == 5
    first = svc.list_subscribers(session, prefix="am", limit=3)
    rest = svc.list_subscribers(session, prefix="am", limit=3, cursor=first.cursor)
    assert [r.email for r in [*first.items, *rest.items]] == emails("am") and rest.cursor is None
    assert _after("ab") == "ac" and _after("a\ud7ff") == "a\ue000"
    assert _after("\U0010ffff") is None and _after("a\U0010ffff") == "b"


def test_get_and_update_a_subscriber(session: Session, settings: Settings) -> None:
    factories.subscriber(session, "kim@example.com", name="Kim", timezone="Europe/Paris")
    sub = svc.get_subscriber(session, email="KIM@example.com")
    with pytest.raises(NotFoundError):
        svc.get_subscriber(session, email="nobody@example.com")
    svc.update_subscriber(
        session, email="kim@example.com", settings=settings, name=" Kim  Lee ", timezone=""
    )
    assert (sub.name, sub.timezone) == ("Kim Lee", None)
    svc.update_subscriber(
        session, email="kim@example.com", settings=settings, newsletters=["good-news"], via="api"
    )
    status = {s.newsletter: (s.status, s.unsubscribed_via) for s in sub.subscriptions}
    assert status == {
        SLUG: (SubscriptionStatus.UNSUBSCRIBED, "api"),
        "good-news": (SubscriptionStatus.PENDING, None),
    }
    assert suppression.is_suppressed(session, email="kim@example.com") is None
    with pytest.raises(StateError):  # they left: only add_subscriber(resubscribe=True)
        svc.update_subscriber(
            session, email="kim@example.com", settings=settings, newsletters=[SLUG]
        )
    with pytest.raises(InputError):
        svc.update_subscriber(session, email="kim@example.com", settings=settings, newsletters=[])
    with pytest.raises(InputError):
        svc.update_subscriber(
            session, email="kim@example.com", settings=settings, timezone="Mars/Base"
        )
    assert sub.name == "Kim Lee"


# ----- Stories ----------------------------------------------------------------------


def test_the_stories_page_filters_and_pages(
    login: Login, sessions: sessionmaker[Session], settings: Settings
) -> None:
    with sessions.begin() as s:
        factories.story(s, title="Used one")
        editions.build_edition(s, settings=settings, slug=SLUG)
        factories.story(s, title="Fresh one")
        factories.story(s, title="Pinned one", pinned=True)
        factories.story(s, title="Hidden one", hidden=True)
        factories.story(s, title="Stale one", age=timedelta(days=3))
        factories.story(s, newsletter="good-news", title="Good one")
    client = login(StaffRole.EDITOR)

    def shown(show: str, newsletter: str = SLUG) -> set[str]:
        answer = client.get("/admin/stories", params={"newsletter": newsletter, "show": show})
        assert answer.status_code == 200
        return _titles(answer.text)

    assert shown("") == {"Used one", "Fresh one", "Pinned one", "Stale one"}
    assert shown("fresh") == {"Fresh one", "Pinned one"}
    assert shown("pinned") == {"Pinned one"}
    assert shown("hidden") == {"Hidden one"}
    assert shown("used") == {"Used one"}
    assert "Hidden one" in shown("all")
    assert shown("", "good-news") == {"Good one"}
    assert "Stories" in client.get("/admin").text  # the nav link
    bad = client.get("/admin/stories", params={"newsletter": "nope"})
    assert bad.status_code == 404 and escape("Unknown newsletter 'nope'") in bad.text
    assert client.get("/admin/stories", params={"show": "odd"}).status_code == 400
    assert "Invalid page cursor" in client.get("/admin/stories", params={"after": "x|y"}).text

    with sessions.begin() as s:
        for i in range(60):
            factories.story(s, title=f"Bulk {i:02d}", age=timedelta(minutes=i))
    seen: list[str] = []
    url = f"/admin/stories?newsletter={SLUG}"
    while url:
        answer = client.get(url)
        seen.extend(re.findall(r'rel="noopener noreferrer">(Bulk \d+)</a>', answer.text))
        more = re.search(r'<a href="([^"]+)">Older stories</a>', answer.text)
        url = more.group(1).replace("&amp;", "&") if more else ""
    assert seen == [f"Bulk {i:02d}" for i in range(60)]


def test_add_pin_and_hide_change_what_an_edition_would_pick(
    login: Login, sessions: sessionmaker[Session], settings: Settings
) -> None:
    with sessions.begin() as s:
        plain = factories.story(s, title="Plain story").id
    client = login(StaffRole.EDITOR)
    page = f"/admin/stories?newsletter={SLUG}"
    added = _post(
        client,
        "/admin/stories",
        {
            "newsletter": SLUG,
            "title": "Editor's pick",
            "url": "https://example.org/pick?utm_source=x",
            "summary": "<p>Read <script>x()</script>this</p>",
            "kicker": "Opinion",
            "pin": "yes",
        },
        csrf_from=page,
    )
    assert added.status_code == 303
    after = client.get(added.headers["location"])
    assert re.search(r"Added story \d+, pinned\.", after.text)
    with sessions() as s:
        pick = s.scalars(select(Story).where(Story.title == "Editor's pick")).one()
        assert pick.url == "https://example.org/pick" and "script" not in pick.summary
        assert [x.title for x in _picked(s, settings)] == ["Editor's pick", "Plain story"]

    hidden = _post(client, f"/admin/stories/{plain}/hide", {"hidden": "yes"}, csrf_from=page)
    assert hidden.status_code == 303
    assert f"Story {plain} hidden." in client.get(hidden.headers["location"]).text
    with sessions() as s:
        assert [x.title for x in _picked(s, settings)] == ["Editor's pick"]
    _post(client, f"/admin/stories/{plain}/hide", {"hidden": "no"}, csrf_from=page)
    _post(client, f"/admin/stories/{pick.id}/pin", {"pinned": "no"}, csrf_from=page)
    with sessions() as s:
        assert {x.title for x in _picked(s, settings)} == {"Editor's pick", "Plain story"}
        assert not s.get(Story, pick.id).pinned  # type: ignore[union-attr]

    # Pinning a story an edition already sent says it will not come back.
    with sessions.begin() as s:
        edition = editions.build_edition(s, settings=settings, slug=SLUG)[0]
        s.execute(update(Edition).values(send_started_at=utcnow()))
        eid = edition.id
    pinned = _post(client, f"/admin/stories/{plain}/pin", {"pinned": "yes"}, csrf_from=page)
    note = client.get(pinned.headers["location"]).text
    assert f"It was already sent in edition {eid}" in note

    refused = _post(
        client,
        "/admin/stories",
        {"newsletter": SLUG, "title": f"Title {XSS}", "url": "javascript:alert(1)"},
        csrf_from=page,
    )
    assert refused.status_code == 400
    assert "Invalid story URL" in refused.text and XSS not in refused.text
    assert escape(f"Title {XSS}") in refused.text  # kept in the form
    dup = _post(
        client,
        "/admin/stories",
        {"newsletter": SLUG, "title": "Again", "url": "https://example.org/pick"},
        csrf_from=page,
    )
    assert dup.status_code == 400 and f"is already story {pick.id}" in dup.text
    missing = _post(client, "/admin/stories/999999/pin", {"pinned": "yes"}, csrf_from=page)
    assert missing.status_code == 404 and "No story with id 999999" in missing.text


def test_a_forged_notice_says_nothing(login: Login) -> None:
    client = login(StaffRole.EDITOR)
    answer = client.get("/admin/stories", params={"notice": "Wire money to x.1.2"})
    assert answer.status_code == 200 and "Wire money" not in answer.text


def test_fetch_now_stores_the_sample_feeds_items(
    login: Login, sessions: sessionmaker[Session], settings: Settings
) -> None:
    client = login(StaffRole.EDITOR)
    done = _post(client, "/admin/stories/fetch", {"newsletter": SLUG}, csrf_from="/admin/stories")
    assert done.status_code == 303
    report = client.get(done.headers["location"]).text
    added = [int(n) for n in re.findall(r"\.xml: (\d+) added, 0 duplicates", report)]
    assert len(added) == 3 and all(n > 0 for n in added)
    with sessions() as s:
        count = s.scalar(select(func.count()).select_from(Story).where(Story.newsletter == SLUG))
    assert count == sum(added)
    again = _post(client, "/admin/stories/fetch", {"newsletter": SLUG}, csrf_from="/admin/stories")
    assert "0 added" in client.get(again.headers["location"]).text


def test_stories_need_the_stories_role_and_csrf(
    login: Login, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as s:
        sid = factories.story(s).id
    operator = login(StaffRole.OPERATOR)
    assert operator.get("/admin/stories").status_code == 403
    assert "/admin/stories" not in operator.get("/admin").text
    editor = login(StaffRole.EDITOR)
    editor.get("/admin/stories")  # has the CSRF cookie now
    for path, data in (
        (f"/admin/stories/{sid}/pin", {"pinned": "yes"}),
        (f"/admin/stories/{sid}/hide", {"hidden": "yes"}),
        ("/admin/stories/fetch", {"newsletter": SLUG}),
        ("/admin/stories", {"newsletter": SLUG, "title": "T", "url": "https://example.org/t"}),
    ):
        for csrf in ("", "forged.value"):
            answer = editor.post(path, data={**data, "csrf": csrf}, follow_redirects=False)
            assert answer.status_code == 403, (path, csrf)
    with sessions() as s:
        story = s.get(Story, sid)
        assert story is not None and not story.pinned and not story.hidden
        assert s.scalar(select(func.count()).select_from(Story)) == 1


# ----- Subscribers ------------------------------------------------------------------


def test_search_by_prefix_newsletter_and_status_with_pages(
    login: Login, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as s:
        factories.subscriber(s, "anna@example.com", name="Anna")
        factories.subscriber(
            s, "anton@example.com", newsletters=("good-news",), status=SubscriptionStatus.PENDING
        )
        factories.subscriber(s, "bert@example.com")
        factories.subscribers(s, 120)
    client = login(StaffRole.OPERATOR)

    def found(**params: str) -> list[str]:
        answer = client.get("/admin/subscribers", params=params)
        assert answer.status_code == 200
        return re.findall(r'person\?email=[^"]+">([^<]+)</a>', answer.text)

    assert found(q="an") == ["anna@example.com", "anton@example.com"]
    assert found(q="AN", newsletter="good-news") == ["anton@example.com"]
    assert found(q="an", status="confirmed") == ["anna@example.com"]
    assert found(q="b", status="pending") == []
    answer = client.get("/admin/subscribers", params={"status": "odd"})
    assert answer.status_code == 400 and escape("Unknown status 'odd'") in answer.text
    assert client.get("/admin/subscribers", params={"newsletter": "nope"}).status_code == 404
    # Keyset pages: 100 a page, every bulk subscriber once.
    seen: list[str] = []
    url = "/admin/subscribers?q=bulk"
    while url:
        answer = client.get(url)
        seen.extend(re.findall(r'">(bulk\d+@example\.com)</a>', answer.text))
        more = re.search(r'<a href="([^"]+)">More subscribers</a>', answer.text)
        url = more.group(1).replace("&amp;", "&") if more else ""
    assert len(seen) == 120 == len(set(seen))
    assert "import" not in answer.text.lower().split("files-heading")[1]  # read-only role


def test_a_persons_page_shows_subscriptions_and_the_whole_timeline(
    login: Login, sessions: sessionmaker[Session], settings: Settings
) -> None:
    with sessions.begin() as s:
        factories.subscriber(s, "tess@example.com", name="Tess", timezone="Asia/Tokyo")
        factories.story(s)
        eid = editions.build_edition(s, settings=settings, slug=SLUG)[0].id
    runner.send_edition(
        sessions, settings=settings, edition_id=eid, provider=OutboxProvider(settings.outbox_path)
    )
    client = login(StaffRole.OPERATOR)
    page = client.get("/admin/subscribers/person", params={"email": "Tess@Example.com"})
    assert page.status_code == 200
    text = page.text
    assert "tess@example.com" in text and "Tess" in text and "Asia/Tokyo" in text
    assert "The Daily Ledger" in text and "first known" in text
    assert f"edition {eid} ({SLUG}" in text and "in the audience" in text and "sent at" in text
    # An operator reads; the buttons that change things are not there for them.
    assert (
        "/admin/subscribers/unsubscribe" not in text and "/admin/subscribers/suppress" not in text
    )
    unknown = client.get("/admin/subscribers/person", params={"email": "who@example.com"})
    assert unknown.status_code == 404 and "No subscriber who@example.com." in unknown.text
    invalid = client.get("/admin/subscribers/person", params={"email": "not an address"})
    assert invalid.status_code == 400 and "Invalid email address" in invalid.text
    assert client.get("/admin/subscribers/person").status_code == 400


def test_unsubscribe_suppress_and_unsuppress_change_the_state_and_need_the_role(
    login: Login, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as s:
        factories.subscriber(s, "uma@example.com", newsletters=(SLUG, "good-news"))
        factories.subscriber(s, "vic@example.com")
    person = "/admin/subscribers/person?email=uma%40example.com"
    for role in (StaffRole.OPERATOR, StaffRole.EDITOR):
        other = login(role)
        for path, data in (
            ("/admin/subscribers/unsubscribe", {"email": "uma@example.com", "newsletter": SLUG}),
            ("/admin/subscribers/suppress", {"email": "uma@example.com", "reason": "manual"}),
            ("/admin/subscribers/unsuppress", {"email": "uma@example.com", "reason": "asked"}),
        ):
            other.get("/admin/login")
            answer = other.post(path, data=data, follow_redirects=False)
            assert answer.status_code == 403, (role, path)
    admin = login(StaffRole.ADMIN)

    def states(address: str) -> dict[str, SubscriptionStatus]:
        with sessions() as s:
            return {
                x.newsletter: x.status for x in svc.get_subscriber(s, email=address).subscriptions
            }

    assert states("uma@example.com") == {
        SLUG: SubscriptionStatus.CONFIRMED,
        "good-news": SubscriptionStatus.CONFIRMED,
    }
    one = _post(
        admin,
        "/admin/subscribers/unsubscribe",
        {"email": "UMA@example.com", "newsletter": SLUG},
        csrf_from=person,
    )
    assert one.status_code == 303
    assert "Unsubscribed from The Daily Ledger." in admin.get(one.headers["location"]).text
    assert states("uma@example.com")[SLUG] is SubscriptionStatus.UNSUBSCRIBED
    assert states("uma@example.com")["good-news"] is SubscriptionStatus.CONFIRMED
    again = _post(
        admin,
        "/admin/subscribers/unsubscribe",
        {"email": "uma@example.com", "newsletter": SLUG},
        csrf_from=person,
    )
    assert "Nothing to change" in admin.get(again.headers["location"]).text
    everything = _post(
        admin,
        "/admin/subscribers/unsubscribe",
        {"email": "uma@example.com", "everything": "yes"},
        csrf_from=person,
    )
    page = admin.get(everything.headers["location"]).text
    assert (
        "Unsubscribed from every newsletter" in page
        and "unsubscribed from good-news (console)" in page
    )
    assert set(states("uma@example.com").values()) == {SubscriptionStatus.UNSUBSCRIBED}
    with sessions() as s:
        assert (
            suppression.is_suppressed(s, email="uma@example.com") is SuppressionReason.UNSUBSCRIBED
        )

    vic = "/admin/subscribers/person?email=vic%40example.com"
    done = _post(
        admin,
        "/admin/subscribers/suppress",
        {"email": "vic@example.com", "reason": "complained", "detail": "phoned us"},
        csrf_from=vic,
    )
    assert done.status_code == 303
    page = admin.get(done.headers["location"]).text
    assert "The address is suppressed" in page and "complained" in page and "phoned us" in page
    no_reason = _post(
        admin, "/admin/subscribers/unsuppress", {"email": "vic@example.com"}, csrf_from=vic
    )
    assert no_reason.status_code == 400
    assert "Say why the address may be mailed again" in no_reason.text
    lifted = _post(
        admin,
        "/admin/subscribers/unsuppress",
        {"email": "vic@example.com", "reason": "they wrote to us"},
        csrf_from=vic,
    )
    page = admin.get(lifted.headers["location"]).text
    assert "The suppression is lifted" in page and "re-enabled by staff: they wrote to us" in page
    with sessions() as s:
        assert suppression.is_suppressed(s, email="vic@example.com") is None
    bad = _post(
        admin,
        "/admin/subscribers/suppress",
        {"email": "vic@example.com", "reason": "forgotten"},
        csrf_from=vic,
    )
    assert bad.status_code == 400
    missing = _post(
        admin,
        "/admin/subscribers/unsubscribe",
        {"email": "vic@example.com", "newsletter": "good-news"},
        csrf_from=vic,
    )
    assert missing.status_code == 404
    assert "Vic@example.com is not subscribed to good-news" in missing.text


def test_subscriber_forms_without_csrf_are_refused(
    login: Login, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    with sessions.begin() as s:
        factories.subscriber(s, "wes@example.com")
    admin = login(StaffRole.ADMIN)
    admin.get("/admin/subscribers")
    for path, data in (
        ("/admin/subscribers/unsubscribe", {"email": "wes@example.com", "everything": "yes"}),
        ("/admin/subscribers/suppress", {"email": "wes@example.com", "reason": "manual"}),
        ("/admin/subscribers/unsuppress", {"email": "wes@example.com", "reason": "x"}),
    ):
        assert admin.post(path, data=data, follow_redirects=False).status_code == 403, path
    upload = admin.post(
        "/admin/subscribers/import",
        data={"newsletters": SLUG},
        files={"file": ("new.csv", b"email\nnew@example.com\n", "text/csv")},
    )
    assert upload.status_code == 403
    with sessions() as s:
        assert suppression.is_suppressed(s, email="wes@example.com") is None
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 1


def test_import_reports_each_bad_row_and_imports_the_good_ones(
    login: Login, sessions: sessionmaker[Session]
) -> None:
    body = (
        "email,name,newsletters\n"
        "good@example.com,Good One,daily-briefing\n"
        f'"<b>bad</b>@@example.com","{XSS}",daily-briefing\n'
        "other@example.com,Other,no-such-letter\n"
        "GOOD@example.com,Twice,daily-briefing\n"
        "extra@example.com,Extra,daily-briefing,surplus\n"
        "fine@example.com,,\n"
    ).encode()
    admin = login(StaffRole.ADMIN)
    form = admin.get("/admin/subscribers/import").text
    assert 'enctype="multipart/form-data"' in form
    assert (
        "at most about 100 MB" in form
    )  # the import's own limit: this path may pass web.max_body_bytes
    answer = admin.post(
        "/admin/subscribers/import",
        data={
            "newsletters": "good-news",
            "status": "confirmed",
            "csrf": _csrf(admin, "/admin/subscribers/import"),
        },
        files={"file": ("../../members list.csv", body, "text/csv")},
    )
    assert answer.status_code == 200
    text = answer.text
    assert "members_list.csv: 6 rows" in text and "4 of 6 rows were refused" in text
    refused = dict(
        re.findall(r'<th scope="row" class="num">(\d+)</th><td>[^<]*</td><td>([^<]+)</td>', text)
    )
    assert set(refused) == {"3", "4", "5", "6"}
    assert "invalid address" in refused["3"]
    assert "unknown newsletter &#39;no-such-letter&#39;" in refused["4"]
    assert "duplicate of line 2" in refused["5"]
    assert "too many fields" in refused["6"]
    assert XSS not in text and "<b>bad</b>" not in text and escape("<b>bad</b>") in text
    with sessions() as s:
        subs = {
            sub.email: {x.newsletter: x.status for x in sub.subscriptions}
            for sub in s.scalars(select(Subscriber))
        }
    assert subs == {
        "good@example.com": {SLUG: SubscriptionStatus.CONFIRMED},
        "fine@example.com": {"good-news": SubscriptionStatus.CONFIRMED},
    }


def test_import_refuses_a_file_it_cannot_read_or_too_large(
    login: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = login(StaffRole.ADMIN)
    csrf = _csrf(admin, "/admin/subscribers/import")

    def send(content: bytes) -> Response:
        return admin.post(
            "/admin/subscribers/import",
            data={"newsletters": SLUG, "csrf": csrf},
            files={"file": ("list.csv", content, "text/csv")},
        )

    latin = send("email,name\nzoe@example.com,Zoë\n".encode("latin-1"))
    assert latin.status_code == 400 and "List.csv is not UTF-8 text" in latin.text
    assert "Traceback" not in latin.text
    no_email = send(b"name\nZoe\n")
    assert no_email.status_code == 400 and "has no email column" in no_email.text
    monkeypatch.setattr(admin_subscribers, "MAX_UPLOAD_BYTES", 100)
    big = send(b"email\n" + b"".join(b"r%03d@example.com\n" % i for i in range(20)))
    assert big.status_code == 400 and "List.csv is larger than 100 bytes" in big.text


def test_export_is_a_formula_safe_csv_that_re_imports(
    login: Login, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as s:
        factories.subscriber(s, "xena@example.com", name='=HYPERLINK("http://evil.example")')
        factories.subscriber(s, "yuri@example.com", name="+1 Yuri", newsletters=(SLUG, "good-news"))
        factories.subscriber(s, "gone@example.com")
        suppression.suppress(s, email="gone@example.com", reason=SuppressionReason.BOUNCED)
    operator = login(StaffRole.OPERATOR)
    answer = operator.get("/admin/subscribers/export")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"] == 'attachment; filename="subscribers.csv"'
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["email"] for r in rows] == ["xena@example.com", "yuri@example.com"]
    assert rows[0]["name"] == '\'=HYPERLINK("http://evil.example")'
    assert rows[1]["name"] == "'+1 Yuri" and rows[1]["newsletters"] == f"{SLUG};good-news"
    for row in rows:
        for cell in row.values():
            assert cell[:1] not in ("=", "+", "-", "@"), cell
    only = operator.get("/admin/subscribers/export", params={"newsletter": "good-news"})
    assert [r["email"] for r in csv.DictReader(io.StringIO(only.text))] == ["yuri@example.com"]
    assert 'filename="subscribers-good-news.csv"' in only.headers["content-disposition"]
    unknown = operator.get("/admin/subscribers/export", params={"newsletter": "x"})
    assert unknown.status_code == 404 and escape("Unknown newsletter 'x'") in unknown.text
    admin = login(StaffRole.ADMIN)
    again = admin.post(
        "/admin/subscribers/import",
        data={"csrf": _csrf(admin, "/admin/subscribers/import")},
        files={"file": ("subscribers.csv", answer.content, "text/csv")},
    )
    assert "2 rows" in again.text and "Every row was imported." in again.text
    assert re.search(r"Unchanged</th><td class=\"num\">2<", again.text)
    with sessions() as s:
        xena = svc.get_subscriber(s, email="xena@example.com")
        assert xena.name == '=HYPERLINK("http://evil.example")'
    editor = login(StaffRole.EDITOR)
    assert editor.get("/admin/subscribers/export").status_code == 403


def test_a_hostile_name_is_escaped_on_every_page(
    login: Login, sessions: sessionmaker[Session], settings: Settings
) -> None:
    with sessions.begin() as s:
        factories.subscriber(s, "xss@example.com", name=XSS)
        factories.story(s, title=f"Story {XSS}", kicker=XSS)
    admin = login(StaffRole.ADMIN)
    for path in (
        "/admin/subscribers",
        "/admin/subscribers?q=xss",
        "/admin/subscribers/person?email=xss%40example.com",
        "/admin/stories",
    ):
        text = admin.get(path).text
        assert XSS not in text, path
        assert escape(XSS) in text, path
    reflected = admin.get("/admin/subscribers", params={"q": XSS}).text
    assert XSS not in reflected and escape(XSS) in reflected


# ----- the API ----------------------------------------------------------------------


@pytest.fixture
def api(settings: Settings, engine: object) -> Iterator[TestClient]:
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        yield client


def test_api_subscribers_list_get_and_timeline(
    api: TestClient, sessions: sessionmaker[Session], token: Callable[[StaffRole], dict[str, str]]
) -> None:
    with sessions.begin() as s:
        factories.subscriber(s, "amy@example.com", name="Amy")
        factories.subscriber(s, "a/b@example.com", newsletters=("good-news",))
        factories.subscriber(s, "bo@example.com", status=SubscriptionStatus.PENDING)
        suppression.suppress(s, email="bo@example.com", reason=SuppressionReason.MANUAL)
    read = token(StaffRole.OPERATOR)
    listed = api.get("/api/v1/subscribers", params={"prefix": "A"}, headers=read).json()
    assert [i["email"] for i in listed["items"]] == ["amy@example.com", "a/b@example.com"]
    assert listed["next"] is None and listed["items"][0]["status"] == "confirmed"
    first = api.get("/api/v1/subscribers", params={"limit": 1}, headers=read).json()
    second = api.get(
        "/api/v1/subscribers", params={"limit": 1, "after": first["next"]}, headers=read
    ).json()
    assert [first["items"][0]["email"], second["items"][0]["email"]] == [
        "amy@example.com",
        "a/b@example.com",
    ]
    pending = api.get("/api/v1/subscribers", params={"status": "pending"}, headers=read).json()
    assert [(i["email"], i["suppressed"]) for i in pending["items"]] == [
        ("bo@example.com", "manual")
    ]
    news = api.get("/api/v1/subscribers", params={"newsletter": "good-news"}, headers=read)
    assert [i["email"] for i in news.json()["items"]] == ["a/b@example.com"]
    unknown = api.get("/api/v1/subscribers", params={"newsletter": "nope"}, headers=read)
    assert unknown.status_code == 404 and unknown.json()["code"] == "newsletter.unknown"

    one = api.get("/api/v1/subscribers/AMY@example.com", headers=read).json()
    assert one["email"] == "amy@example.com" and one["name"] == "Amy"
    assert [s["newsletter"] for s in one["subscriptions"]] == [SLUG] and one["suppressed"] is None
    slash = api.get("/api/v1/subscribers/a/b@example.com", headers=read)
    assert slash.status_code == 200 and slash.json()["email"] == "a/b@example.com"
    assert (
        api.get("/api/v1/subscribers/bo@example.com", headers=read).json()["suppressed"] == "manual"
    )
    missing = api.get("/api/v1/subscribers/no@example.com", headers=read)
    assert missing.status_code == 404 and missing.json()["code"] == "subscriber.not_found"
    invalid = api.get("/api/v1/subscribers/nonsense", headers=read)
    assert invalid.status_code == 400 and invalid.json()["code"] == "input.invalid"
    history = api.get("/api/v1/subscribers/bo@example.com/timeline", headers=read).json()
    whats = [e["what"] for e in history["timeline"]]
    assert "first known" in whats and any(w.startswith("suppressed (manual)") for w in whats)

    editor = token(StaffRole.EDITOR)
    for path in ("/api/v1/subscribers", "/api/v1/subscribers/amy@example.com"):
        refused = api.get(path, headers=editor)
        assert refused.status_code == 403 and refused.json()["code"] == "auth.forbidden"


def test_api_subscribers_create_update_and_unsubscribe(
    api: TestClient, sessions: sessionmaker[Session], token: Callable[[StaffRole], dict[str, str]]
) -> None:
    admin = token(StaffRole.ADMIN)
    operator = token(StaffRole.OPERATOR)
    new = {
        "email": "Nia@Example.com",
        "name": XSS,
        "timezone": "europe/paris",
        "newsletters": [SLUG],
    }
    assert api.post("/api/v1/subscribers", json=new, headers=operator).status_code == 403
    made = api.post("/api/v1/subscribers", json={**new, "status": "confirmed"}, headers=admin)
    assert made.status_code == 201
    body = made.json()
    assert (body["email"], body["name"], body["timezone"]) == (
        "nia@example.com",
        XSS,
        "Europe/Paris",
    )
    assert body["subscriptions"][0]["status"] == "confirmed"
    assert body["subscriptions"][0]["source"] == "api"
    bad = api.post("/api/v1/subscribers", json={**new, "email": "nope"}, headers=admin)
    assert bad.status_code == 400 and bad.json()["code"] == "input.invalid"
    assert (
        api.post("/api/v1/subscribers", json={**new, "newsletters": []}, headers=admin).status_code
        == 422
    )
    wrong = api.post("/api/v1/subscribers", json={**new, "newsletters": ["x"]}, headers=admin)
    assert wrong.status_code == 404
    with sessions.begin() as s:
        suppression.suppress(s, email="block@example.com", reason=SuppressionReason.BOUNCED)
    blocked = api.post(
        "/api/v1/subscribers", json={**new, "email": "block@example.com"}, headers=admin
    )
    assert blocked.status_code == 409 and blocked.json()["code"] == "subscriber.suppressed"

    change = {"name": "Nia", "timezone": "", "newsletters": [SLUG, "good-news"]}
    assert (
        api.patch("/api/v1/subscribers/nia@example.com", json=change, headers=operator).status_code
        == 403
    )
    updated = api.patch("/api/v1/subscribers/nia@example.com", json=change, headers=admin).json()
    assert (updated["name"], updated["timezone"]) == ("Nia", None)
    assert {s["newsletter"]: s["status"] for s in updated["subscriptions"]} == {
        SLUG: "confirmed",
        "good-news": "pending",
    }
    odd = api.patch(
        "/api/v1/subscribers/nia@example.com", json={"timezone": "Mars/Base"}, headers=admin
    )
    assert odd.status_code == 400
    absent = api.patch("/api/v1/subscribers/x@example.com", json={"name": "X"}, headers=admin)
    assert absent.status_code == 404

    path = "/api/v1/subscribers/nia@example.com/unsubscribe"
    assert api.post(path, json={"newsletter": SLUG}, headers=operator).status_code == 403
    assert api.post(path, headers=admin).status_code == 422  # the choice is never implicit
    one = api.post(path, json={"newsletter": SLUG}, headers=admin).json()
    assert one == {"email": "nia@example.com", "unsubscribed": [SLUG], "suppressed": False}
    everything = api.post(path, json={"newsletter": None}, headers=admin).json()
    assert everything == {
        "email": "nia@example.com",
        "unsubscribed": ["good-news"],
        "suppressed": True,
    }
    with sessions() as s:
        sub = svc.get_subscriber(s, email="nia@example.com")
        assert {x.status for x in sub.subscriptions} == {SubscriptionStatus.UNSUBSCRIBED}
        assert {x.unsubscribed_via for x in sub.subscriptions} == {"api"}
        assert s.scalar(select(func.count()).select_from(Subscription)) == 2


def test_api_stories_list_add_pin_hide(
    api: TestClient,
    sessions: sessionmaker[Session],
    settings: Settings,
    token: Callable[[StaffRole], dict[str, str]],
) -> None:
    with sessions.begin() as s:
        old = factories.story(s, title="Old", age=timedelta(days=3)).id
        used = factories.story(s, title="Used").id
        eid = editions.build_edition(s, settings=settings, slug=SLUG)[0].id
        s.execute(update(Edition).values(send_started_at=utcnow()))
    editor = token(StaffRole.EDITOR)
    made = api.post(
        "/api/v1/stories",
        json={"newsletter": SLUG, "title": "Pick", "url": "https://example.org/p", "pin": True},
        headers=editor,
    )
    assert made.status_code == 201
    pick = made.json()
    assert pick["pinned"] and pick["origin"] == "editor" and pick["source"] == "example.org"
    dup = api.post(
        "/api/v1/stories",
        json={"newsletter": SLUG, "title": "Again", "url": "https://example.org/p"},
        headers=editor,
    )
    assert dup.status_code == 400 and dup.json()["code"] == "story.duplicate"

    def ids(**params: object) -> list[int]:
        answer = api.get("/api/v1/stories", params=params, headers=editor)  # type: ignore[arg-type]
        assert answer.status_code == 200, answer.text
        return [i["id"] for i in answer.json()["items"]]

    assert ids(newsletter=SLUG) == [pick["id"], used, old]
    assert ids(newsletter=SLUG, only="fresh") == [pick["id"]]
    assert ids(newsletter=SLUG, only="used") == [used]
    assert ids(only="pinned") == [pick["id"]]
    page = api.get("/api/v1/stories", params={"limit": 2}, headers=editor).json()
    rest = api.get("/api/v1/stories", params={"limit": 2, "after": page["next"]}, headers=editor)
    assert [i["id"] for i in page["items"] + rest.json()["items"]] == [pick["id"], used, old]
    fresh_all = api.get("/api/v1/stories", params={"only": "fresh"}, headers=editor)
    assert fresh_all.status_code == 400 and fresh_all.json()["code"] == "story.fresh"

    pinned = api.post(f"/api/v1/stories/{used}/pin", headers=editor).json()
    assert pinned["pinned"] and pinned["sent_in"] == [eid]
    unpinned = api.post(f"/api/v1/stories/{used}/pin", json={"pinned": False}, headers=editor)
    assert unpinned.json()["pinned"] is False
    hidden = api.post(f"/api/v1/stories/{old}/hide", headers=editor).json()
    assert hidden["hidden"] is True
    assert ids(newsletter=SLUG, only="hidden") == [old] and old not in ids(newsletter=SLUG)
    shown = api.post(f"/api/v1/stories/{old}/hide", json={"hidden": False}, headers=editor)
    assert shown.json()["hidden"] is False
    missing = api.post("/api/v1/stories/999999/hide", headers=editor)
    assert missing.status_code == 404 and missing.json()["code"] == "story.not_found"

    operator = token(StaffRole.OPERATOR)
    for method, path in (
        ("GET", "/api/v1/stories"),
        ("POST", "/api/v1/stories"),
        ("POST", f"/api/v1/stories/{old}/pin"),
        ("POST", f"/api/v1/stories/{old}/hide"),
    ):
        answer = api.request(method, path, headers=operator, json={})
        assert answer.status_code == 403, (method, path)
    with sessions() as s:
        story = s.get(Story, old)
        assert story is not None and not story.pinned and not story.hidden


def test_the_openapi_document_has_the_new_endpoints(api: TestClient) -> None:
    doc = api.get("/api/v1/openapi.json").json()
    assert {"/subscribers", "/subscribers/{email}", "/subscribers/{email}/unsubscribe"} <= set(
        doc["paths"]
    )
    assert {"/stories", "/stories/{story_id}/pin", "/stories/{story_id}/hide"} <= set(doc["paths"])
    assert "SubscriberIn" in doc["components"]["schemas"]
