"""The console's dashboard, delivery log and charts, over a real sent edition."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from xml.etree import ElementTree

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions
from newsletter.delivery import runner
from newsletter.delivery.providers.files import OutboxProvider
from newsletter.models import Delivery, DeliveryStatus, StaffRole, utcnow
from newsletter.staff import accounts, api_tokens, overview
from newsletter.web.app import create_app
from tests import factories

PASSWORD = "correct horse battery"
XSS = '<script>alert("x")</script>'


@pytest.fixture
def sent(settings: Settings, sessions: sessionmaker[Session]) -> int:
    """An edition sent to five readers: two delivered, one opened, one bounced."""
    with sessions.begin() as s:
        for i in range(5):
            factories.subscriber(s, f"reader{i}@example.org")
        factories.story(s, title=f"Headline {XSS}")
        eid = editions.build_edition(s, settings=settings, slug="daily-briefing")[0].id
    runner.send_edition(
        sessions, settings=settings, edition_id=eid, provider=OutboxProvider(settings.outbox_path)
    )
    moves = {
        "reader0@example.org": DeliveryStatus.DELIVERED,
        "reader1@example.org": DeliveryStatus.OPENED,
        "reader2@example.org": DeliveryStatus.BOUNCED,
    }
    with sessions.begin() as s:
        for address, status in moves.items():
            s.execute(update(Delivery).where(Delivery.email == address).values(status=status))
    return eid


def _client(settings: Settings, sessions: sessionmaker[Session], role: StaffRole) -> TestClient:
    with sessions.begin() as s:
        accounts.add(s, email=f"{role.value}@example.org", role=role, password=PASSWORD)
    client = TestClient(create_app(settings), base_url="https://testserver")
    client.__enter__()
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/admin/login").text)
    assert found
    data = {"email": f"{role.value}@example.org", "password": PASSWORD, "csrf": found.group(1)}
    assert client.post("/admin/login", data=data, follow_redirects=False).status_code == 303
    return client


@pytest.fixture
def operator(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    client = _client(settings, sessions, StaffRole.OPERATOR)
    yield client
    client.__exit__(None, None, None)


def _ids(text: str) -> list[str]:
    return re.findall(r'<th scope="row">(\d+)</th>', text)


def test_an_empty_dashboard_says_so(operator: TestClient) -> None:
    page = operator.get("/admin")
    assert page.status_code == 200
    assert "No edition has been built yet." in page.text and "No send is under way." in page.text
    assert "/admin/charts/funnel/" not in page.text


def test_the_dashboard_shows_the_latest_editions_figures(operator: TestClient, sent: int) -> None:
    page = operator.get("/admin")
    assert page.status_code == 200
    row = re.search(rf'<a href="/admin/editions/{sent}">#{sent}</a>(.*?)</tr>', page.text, re.S)
    assert row, page.text
    assert f'href="/admin/deliveries?edition={sent}"' in row.group(1)  # an operator reads its log
    numbers = re.findall(r'<td class="num">([\d,]+)</td>', row.group(1))
    assert numbers == ["5", "5", "2", "1", "1"]  # audience, sent, delivered, bounced, opened
    assert "<script>alert" not in page.text  # the subject is escaped
    assert f"/admin/charts/funnel/{sent}.svg" in page.text
    assert "audience 5, accepted 5, delivered 2, opened 1, clicked 0" in page.text
    assert "No send is under way." in page.text


def test_charts_are_svg_images_without_script(operator: TestClient, sent: int) -> None:
    funnel = operator.get(f"/admin/charts/funnel/{sent}.svg")
    assert funnel.status_code == 200 and funnel.headers["content-type"] == "image/svg+xml"
    assert "script-src" not in funnel.headers["content-security-policy"]
    tree = ElementTree.fromstring(funnel.content)
    assert tree.tag.endswith("svg")
    assert not [e for e in tree.iter() if e.tag.endswith("script")]
    values = [e.text for e in tree.iter() if e.tag.endswith("text") and e.text]
    assert "audience" in values and "delivered" in values and "5" in values and "2" in values
    activity = operator.get("/admin/charts/activity.svg?days=7")
    assert activity.status_code == 200
    ElementTree.fromstring(activity.content)
    assert operator.get("/admin/charts/activity.svg?days=0").status_code == 400
    assert operator.get("/admin/charts/funnel/999.svg").status_code == 404


def test_activity_counts_sends_and_bounces_by_day(session: Session, sent: int) -> None:
    days = overview.activity(session, days=3, now=utcnow())
    assert len(days) == 3 and days[-1].day == utcnow().date()
    assert (days[-1].sent, days[-1].bounced) == (5, 1)
    assert all((d.sent, d.bounced) == (0, 0) for d in days[:-1])
    later = overview.activity(session, days=3, now=utcnow() + timedelta(days=5))
    assert all((d.sent, d.bounced) == (0, 0) for d in later)


def test_the_delivery_log_filters_by_provider_and_day_in_the_console_and_the_api(
    operator: TestClient, sent: int, sessions: sessionmaker[Session]
) -> None:
    """Two rows sent three days ago, one of them by SendGrid; one row never sent."""
    day = (utcnow() - timedelta(days=3)).replace(hour=23, minute=59)
    with sessions.begin() as s:
        s.execute(
            update(Delivery)
            .where(Delivery.email.in_(["reader3@example.org", "reader4@example.org"]))
            .values(sent_at=day)
        )
        s.execute(
            update(Delivery)
            .where(Delivery.email == "reader4@example.org")
            .values(provider="sendgrid")
        )
        _, token = api_tokens.create(s, name="ops-script", role=StaffRole.OPERATOR)
    on_the_day = {"since": day.date().isoformat(), "until": day.date().isoformat()}
    page = operator.get("/admin/deliveries", params=on_the_day).text
    assert sorted(re.findall(r"reader\d@example.org", page)) == [
        "reader3@example.org",
        "reader4@example.org",
    ]
    page = operator.get("/admin/deliveries", params={"provider": "sendgrid"}).text
    assert re.findall(r"reader\d@example.org", page) == ["reader4@example.org"]
    after = operator.get("/admin/deliveries", params={"since": utcnow().date().isoformat()}).text
    assert "reader0@example.org" in after and "reader3@example.org" not in after
    bad = operator.get("/admin/deliveries", params={"since": "yesterday"})
    assert bad.status_code == 200 and "The from date is a day like" in bad.text
    assert (
        "There is no provider &#39;pigeon&#39;"
        in operator.get("/admin/deliveries?provider=pigeon").text
    )

    api = {"Authorization": f"Bearer {token}"}
    found = operator.get(
        "/api/v1/deliveries", params={**on_the_day, "provider": "sendgrid"}, headers=api
    )
    assert found.status_code == 200
    assert [d["email"] for d in found.json()["items"]] == ["reader4@example.org"]
    refused = operator.get("/api/v1/deliveries", params={"until": "2026-13-01"}, headers=api)
    assert refused.status_code == 422
    assert operator.get("/api/v1/deliveries?provider=pigeon", headers=api).status_code == 422


def test_the_delivery_log_filters_pages_and_answers_why(
    operator: TestClient, sent: int, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as s:
        factories.subscriber(s, "late@example.org")
    page = operator.get(f"/admin/deliveries?edition={sent}&status=bounced")
    assert page.status_code == 200 and "reader2@example.org" in page.text
    assert "reader0@example.org" not in page.text
    everyone = operator.get(f"/admin/deliveries?edition={sent}").text
    assert all(f"reader{i}@example.org" in everyone for i in range(5))
    assert "Older deliveries" not in everyone
    with sessions.begin() as s:
        factories.subscribers(s, 150)
        factories.story(s, title="Tomorrow's story")
        eid = editions.build_edition(
            s, settings=settings, slug="daily-briefing", issue_date=utcnow().date() + timedelta(1)
        )[0].id
    runner.send_edition(
        sessions, settings=settings, edition_id=eid, provider=OutboxProvider(settings.outbox_path)
    )
    first = operator.get(f"/admin/deliveries?edition={eid}").text
    more = re.search(r'href="(/admin/deliveries\?[^"]+)">Older deliveries', first)
    assert more, "a second page is offered"
    second = operator.get(more.group(1).replace("&amp;", "&")).text
    assert len(_ids(first)) == 100 and _ids(second) and not set(_ids(first)) & set(_ids(second))
    why = operator.get(f"/admin/deliveries?why=late@example.org&why_edition={sent}").text
    assert "late@example.org" in why and "not in its audience" in why
    bad = operator.get("/admin/deliveries?edition=abc&status=nope")
    assert bad.status_code == 200 and "The edition is a number" in bad.text
    unknown = operator.get("/admin/deliveries?edition=99999")
    assert "No edition 99999" in unknown.text or "no edition" in unknown.text.lower()
    hostile = operator.get("/admin/deliveries", params={"why": XSS}).text
    assert "<script>alert" not in hostile
