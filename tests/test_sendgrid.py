"""The sendgrid provider against a real local SendGrid-compatible server, on a real ledger."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings, load_settings
from newsletter.content import editions
from newsletter.delivery import links, log, runner, sender
from newsletter.delivery.message import ONE_CLICK, list_unsubscribe
from newsletter.delivery.personalise import Personaliser
from newsletter.delivery.providers import make_provider
from newsletter.delivery.providers.base import PreparedEdition, Recipient
from newsletter.delivery.providers.sendgrid import SendGridProvider
from newsletter.delivery.providers.sendgrid_request import build_request, retry_after
from newsletter.delivery.types import OutcomeStatus
from newsletter.errors import ProviderConfigError
from newsletter.models import Delivery, DeliveryStatus, EditionStatus, utcnow
from tests import factories
from tests.factories import FakeClock
from tests.sendgrid_server import SendGridServer
from tests.waiting import wait_until

NAMES = [
    "",
    "Zoë O'Brien",
    'Tom & "Jerry" <tj>',
    "  Ada \t Lovelace ",
    "Grace Hopper",
    "李雷",
    "Smith, John",
]


@pytest.fixture
def server() -> Iterator[SendGridServer]:
    with SendGridServer() as s:
        yield s


def _settings(settings: Settings, server: SendGridServer, **delivery: object) -> Settings:
    conf = settings.delivery.sendgrid.model_copy(
        update={"api_base_url": server.url, "timeout_seconds": 0.5}
    )
    return settings.model_copy(
        update={
            "sendgrid_api_key": SecretStr(server.api_key),
            "delivery": settings.delivery.model_copy(update={"sendgrid": conf, **delivery}),
        }
    )


@pytest.fixture
def sg_settings(settings: Settings, server: SendGridServer) -> Settings:
    return _settings(settings, server, batch_size=4)


def _provider(settings: Settings) -> SendGridProvider:
    provider = SendGridProvider.from_settings(settings)
    provider.verify = True  # every posted body re-checked against validate_request
    return provider


def _edition(sessions: sessionmaker[Session], settings: Settings, readers: int = 6) -> int:
    with sessions.begin() as s:
        for i in range(readers):
            factories.subscriber(s, name=NAMES[i % len(NAMES)])
        for _ in range(3):
            factories.story(s)
        edition, _ = editions.build_edition(s, settings=settings, slug="daily-briefing")
        return edition.id


def _send(
    sessions: sessionmaker[Session], settings: Settings, eid: int, **kw: object
) -> runner.SendReport:
    clock = FakeClock()
    return runner.send_edition(
        sessions,
        settings=settings,
        edition_id=eid,
        provider=_provider(settings),
        clock=clock,
        sleep=clock.sleep,
        **kw,  # type: ignore[arg-type]
    )


def _rows(sessions: sessionmaker[Session]) -> list[Delivery]:
    with sessions() as s:
        return list(s.scalars(select(Delivery).order_by(Delivery.id)))


def _prepared(
    sessions: sessionmaker[Session], settings: Settings, eid: int
) -> tuple[PreparedEdition, list[Recipient]]:
    """The edition as the sender hands it to providers, and its recipients (audience frozen)."""
    with sessions.begin() as s:
        started = sender.start_send(s, settings=settings, edition_id=eid, now=utcnow())
        edition = started.edition
        prepared = sender.prepare(settings, edition, started.content)
        recipients = [
            links.recipient(
                settings,
                delivery_id=d.id,
                email=d.email,
                name=d.name,
                key=d.subscriber_key,
                newsletter=edition.newsletter,
            )
            for d in s.scalars(
                select(Delivery).where(Delivery.edition_id == eid).order_by(Delivery.id)
            )
        ]
    return prepared, recipients


def _assert_each_sent_once(sessions: sessionmaker[Session], server: SendGridServer) -> None:
    rows = _rows(sessions)
    assert rows and {r.status for r in rows} == {DeliveryStatus.SENT}
    assert server.stats()["by_delivery"] == {str(r.id): 1 for r in rows}
    assert server.stats()["duplicates"] == server.stats()["dropped"] == 0
    assert set(server.by_email) == {r.email for r in rows}
    assert all(r.provider == "sendgrid" and r.provider_message_id for r in rows)
    assert {r.provider_message_id for r in rows} <= set(server.message_ids)


# ----- the happy path ----------------------------------------------------------------


def test_every_recipient_once_with_its_own_values(
    sessions: sessionmaker[Session], sg_settings: Settings, server: SendGridServer
) -> None:
    eid = _edition(sessions, sg_settings, readers=9)
    report = _send(sessions, sg_settings, eid)
    assert report.complete and report.sent == 9
    _assert_each_sent_once(sessions, server)
    assert server.stats()["requests"] == 3  # batches of 4, 4, 1
    prepared, recipients = _prepared(sessions, sg_settings, eid)
    by_email = {r.email: r for r in recipients}
    for body, p in server.personalizations():
        assert len(p["to"]) == 1
        r = by_email[p["to"][0]["email"]]
        assert p["custom_args"] == {"delivery_id": str(r.delivery_id), "edition_id": str(eid)}
        assert p["headers"] == {"List-Unsubscribe": list_unsubscribe(r)}
        one_line = " ".join(r.name.split())
        quoted = f'"{one_line}"' if "," in one_line else one_line  # SendGrid drops it unquoted
        assert p["to"][0].get("name", "") == quoted
        assert body["categories"] == ["daily-briefing"]
        assert body["headers"] == {"List-Id": prepared.list_id, "List-Unsubscribe-Post": ONE_CLICK}
        assert body["from"] == {"email": prepared.from_address, "name": prepared.from_name}
        assert body["reply_to"] == {"email": "editors@news.example.com"}
        assert body["subject"] == prepared.subject
        assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    # What each reader gets after SendGrid's substitution is exactly what the
    # Personaliser (used by the other providers) makes for them, in both parts.
    for r in recipients:
        [(text, html)] = server.rendered(r.email)
        assert text == Personaliser(prepared.content).text(r.values)
        assert html == Personaliser(prepared.content).html(r.values)
    named = {r.name: server.rendered(r.email)[0] for r in recipients}
    assert "Tom &amp; &quot;Jerry&quot; &lt;tj&gt;" in named['Tom & "Jerry" <tj>'][1]
    assert "Hi Zoë O'Brien," in named["Zoë O'Brien"][0]
    assert "Hi there," in named[""][0]
    assert "Hi Smith, John," in named["Smith, John"][0]


def test_a_second_run_sends_nothing_again(
    sessions: sessionmaker[Session], sg_settings: Settings, server: SendGridServer
) -> None:
    eid = _edition(sessions, sg_settings, readers=5)
    _send(sessions, sg_settings, eid)
    again = _send(sessions, sg_settings, eid)
    assert again.sent == 0 and server.stats()["recipients"] == 5
    _assert_each_sent_once(sessions, server)


def test_concurrent_sender_threads_share_one_provider(
    sessions: sessionmaker[Session], settings: Settings, server: SendGridServer
) -> None:
    conf = _settings(settings, server, batch_size=3, concurrency=4)
    eid = _edition(sessions, conf, readers=30)
    report = _send(sessions, conf, eid)
    assert report.complete and report.sent == 30
    _assert_each_sent_once(sessions, server)
    assert len(set(server.message_ids)) == server.stats()["requests"] == 10


def test_env_key_and_make_provider(
    monkeypatch: pytest.MonkeyPatch,
    config_file: Path,
    sessions: sessionmaker[Session],
    server: SendGridServer,
) -> None:
    monkeypatch.setenv("NEWSLETTER_SENDGRID_API_KEY", server.api_key)
    monkeypatch.setenv("NEWSLETTER_DELIVERY__SENDGRID__API_BASE_URL", server.url)
    settings = load_settings(config_file)
    provider = make_provider(settings, "sendgrid")
    assert provider.name == "sendgrid" and provider.max_batch == 1000
    eid = _edition(sessions, settings, readers=3)
    report = runner.send_edition(sessions, settings=settings, edition_id=eid, provider=provider)
    assert report.sent == 3
    _assert_each_sent_once(sessions, server)


def test_test_copy_has_no_delivery_id(
    sessions: sessionmaker[Session], sg_settings: Settings, server: SendGridServer
) -> None:
    eid = _edition(sessions, sg_settings, readers=1)
    with sessions() as s:
        outcome = sender.send_test(
            s,
            settings=sg_settings,
            edition_id=eid,
            email="editor@example.com",
            provider=_provider(sg_settings),
        )
    assert outcome.status == "sent" and outcome.message_id == server.message_ids[0]
    [(_, p)] = list(server.personalizations())
    assert p["custom_args"] == {"edition_id": str(eid)}
    assert "name" not in p["to"][0]


# ----- transient trouble: retried by the ledger, never sent twice -----------------------


@pytest.mark.parametrize(
    ("action", "least_wait"), [("429:30", 30), ("429-reset:40", 38)], ids=["retry-after", "reset"]
)
def test_rate_limited_batch_waits_as_told_then_goes_once(
    sessions: sessionmaker[Session],
    sg_settings: Settings,
    server: SendGridServer,
    action: str,
    least_wait: float,
) -> None:
    eid = _edition(sessions, sg_settings, readers=3)
    server.script([action])
    clock = FakeClock()
    report = runner.send_edition(
        sessions,
        settings=sg_settings,
        edition_id=eid,
        provider=_provider(sg_settings),
        clock=clock,
        sleep=clock.sleep,
    )
    assert report.complete and report.retried == 3
    assert clock.slept >= least_wait
    assert [a for a, _ in server.log] == [action.split(":")[0], "ok"]
    _assert_each_sent_once(sessions, server)
    assert all(r.attempts == 2 for r in _rows(sessions))


@pytest.mark.parametrize("action", ["500", "503", "429:0"])
def test_server_errors_and_rate_limits_are_retried(
    sessions: sessionmaker[Session], sg_settings: Settings, server: SendGridServer, action: str
) -> None:
    eid = _edition(sessions, sg_settings, readers=3)
    server.script([action])
    report = _send(sessions, sg_settings, eid)
    assert report.complete and report.retried == 3 and report.sent == 3
    _assert_each_sent_once(sessions, server)
    # retries fall due at jittered times, so they may go in one to three requests
    actions = [a for a, _ in server.log]
    assert actions[0] == action.split(":")[0] and set(actions[1:]) == {"ok"}


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ("500", "SendGrid answered 500: error 500"),
        ("429:7", "rate limited by SendGrid (429); retry in 7 s"),
    ],
)
def test_retry_outcomes_say_why(
    sessions: sessionmaker[Session],
    sg_settings: Settings,
    server: SendGridServer,
    action: str,
    reason: str,
) -> None:
    eid = _edition(sessions, sg_settings, readers=2)
    prepared, recipients = _prepared(sessions, sg_settings, eid)
    server.script([action])
    outcomes = _provider(sg_settings).send_batch(prepared, recipients)
    assert {o.status for o in outcomes} == {"retry"}
    assert all(o.error and o.error.startswith(reason) for o in outcomes)
    assert server.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("action", "reason", "accepted"),
    [
        ("drop", "connection to SendGrid failed", 0),
        ("acceptdrop", "connection to SendGrid failed", 1),
        ("slow:5", "no answer within 0.5 s", 0),
        ("slowok:1", "no answer within 0.5 s", 1),
        # (A reset is a retry when it stops the request going out, and uncertain when
        # it comes after: which one depends on timing, so it is not a case here.)
    ],
)
def test_a_lost_answer_is_uncertain_never_retried(
    sessions: sessionmaker[Session],
    sg_settings: Settings,
    server: SendGridServer,
    action: str,
    reason: str,
    accepted: int,
) -> None:
    # The whole request went out and no answer came: SendGrid may have accepted it.
    eid = _edition(sessions, sg_settings, readers=2)
    prepared, recipients = _prepared(sessions, sg_settings, eid)
    server.script([action])
    outcomes = _provider(sg_settings).send_batch(prepared, recipients)
    assert {o.status for o in outcomes} == {OutcomeStatus.UNCERTAIN}
    assert all(o.error and o.error.startswith(reason) for o in outcomes), outcomes
    assert all(o.error and "after the request was sent" in o.error for o in outcomes)
    wait_until(server.idle, what="the server to finish the request")
    assert server.stats()["requests"] == accepted


@pytest.mark.parametrize("policy", ["skip", "resend"])
def test_uncertain_batches_follow_the_policy(
    sessions: sessionmaker[Session], sg_settings: Settings, server: SendGridServer, policy: str
) -> None:
    conf = sg_settings.model_copy(
        update={"delivery": sg_settings.delivery.model_copy(update={"uncertain": policy})}
    )
    eid = _edition(sessions, conf, readers=6)  # two batches of up to four
    server.script(["acceptdrop"])
    report = _send(sessions, conf, eid)
    rows = _rows(sessions)
    if policy == "skip":  # the accepted-but-unanswered batch is never sent again
        assert report.counts[DeliveryStatus.UNCERTAIN] == 4 and not report.ok
        assert report.counts[DeliveryStatus.SENT] == 2
        assert server.stats()["duplicates"] == 0
        assert all(r.status is not DeliveryStatus.FAILED for r in rows)
    else:  # resent at once: a copy twice for those four, nobody lost
        assert report.counts[DeliveryStatus.SENT] == 6 and report.ok
        assert server.stats()["duplicates"] == 4


def test_connection_refused_is_retried(
    sessions: sessionmaker[Session], sg_settings: Settings
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once it is closed
    eid = _edition(sessions, sg_settings, readers=2)
    prepared, recipients = _prepared(sessions, sg_settings, eid)
    provider = SendGridProvider("SG.key-123", api_base_url=f"http://127.0.0.1:{port}")
    outcomes = provider.send_batch(prepared, recipients)
    assert {o.status for o in outcomes} == {"retry"}
    assert all("cannot reach SendGrid" in (o.error or "") for o in outcomes)


# ----- too large, bad recipients, bad key ---------------------------------------------


def test_413_splits_the_batch_in_halves(
    sessions: sessionmaker[Session], settings: Settings, server: SendGridServer
) -> None:
    conf = _settings(settings, server, batch_size=8)
    eid = _edition(sessions, conf, readers=8)
    server.script(["413", "ok", "413"])
    report = _send(sessions, conf, eid)
    assert report.complete and report.sent == 8 and report.retried == 0
    assert server.log == [("413", 8), ("ok", 4), ("413", 4), ("ok", 2), ("ok", 2)]
    _assert_each_sent_once(sessions, server)


def test_413_for_one_recipient_fails_the_batch_without_looping(
    sessions: sessionmaker[Session], settings: Settings, server: SendGridServer
) -> None:
    conf = _settings(settings, server, batch_size=8)
    eid = _edition(sessions, conf, readers=8)
    server.max_body_bytes = 1000  # smaller than the edition itself
    report = _send(sessions, conf, eid)
    assert report.complete and report.counts[DeliveryStatus.FAILED] == 8
    assert [n for _, n in server.log] == [8, 4, 2, 1]
    assert all("too large (413)" in (r.error or "") for r in _rows(sessions))


@pytest.mark.parametrize(
    "field", ["personalizations.1.to.0.email", "personalizations[1].to[0].email"]
)
def test_400_naming_a_recipient_fails_only_that_one(
    sessions: sessionmaker[Session],
    sg_settings: Settings,
    server: SendGridServer,
    field: str,
) -> None:
    eid = _edition(sessions, sg_settings, readers=4)
    server.script([f"400:{field}"])
    report = _send(sessions, sg_settings, eid)
    assert report.complete and report.sent == 3 and report.failed == 1
    rows = _rows(sessions)
    [bad] = [r for r in rows if r.status is DeliveryStatus.FAILED]
    assert bad.id == rows[1].id
    assert bad.error == f"SendGrid rejected (400): Does not contain a valid address. [{field}]"
    assert server.log == [("400", 4), ("ok", 3)]
    assert server.stats()["by_delivery"] == {str(r.id): 1 for r in rows if r is not bad}


def test_400_naming_nobody_fails_the_batch_once(
    sessions: sessionmaker[Session], sg_settings: Settings, server: SendGridServer
) -> None:
    eid = _edition(sessions, sg_settings, readers=3)
    server.script(["400"])
    report = _send(sessions, sg_settings, eid)
    assert report.complete and report.failed == 3 and server.stats()["attempts"] == 1
    assert all(
        r.error == "SendGrid rejected the request (400): Does not contain a valid address."
        for r in _rows(sessions)
    )


@pytest.mark.parametrize("how", ["wrong-key", "403"])
def test_rejected_key_stops_the_send_and_hands_the_batch_back(
    sessions: sessionmaker[Session],
    sg_settings: Settings,
    server: SendGridServer,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "SG.wrong-secret-key-value-42"
    conf = sg_settings
    if how == "wrong-key":
        conf = sg_settings.model_copy(update={"sendgrid_api_key": SecretStr(secret)})
    else:
        server.script(["403"])
    eid = _edition(sessions, conf, readers=3)
    with pytest.raises(ProviderConfigError) as err:
        _send(sessions, conf, eid)
    rows = _rows(sessions)
    if how == "wrong-key":  # the preflight: nothing frozen, the edition as it was
        assert str(err.value) == f"SendGrid at {server.url} rejected the API key (401)"
        assert rows == []
        with sessions() as s:
            assert editions.get_edition(s, eid).status is EditionStatus.BUILT
    else:  # accepted at the preflight, refused mid-send: the batch is handed back
        assert str(err.value) == "SendGrid rejected the API key (403)"
        assert {r.status for r in rows} == {DeliveryStatus.QUEUED}
        assert all(r.attempts == 0 and r.batch_id is None for r in rows)
    assert server.stats()["recipients"] == 0
    key = conf.sendgrid_api_key.get_secret_value() if conf.sendgrid_api_key else ""
    assert key not in caplog.text and key not in repr(err.value)
    assert "Bearer [redacted]" in caplog.text  # the package's own DEBUG line, masked


def test_api_key_and_tokens_never_reach_the_logs(
    sessions: sessionmaker[Session],
    sg_settings: Settings,
    server: SendGridServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    eid = _edition(sessions, sg_settings, readers=3)
    server.script(["500"])
    _send(sessions, sg_settings, eid)
    _, recipients = _prepared(sessions, sg_settings, eid)
    assert "PAYLOAD: <" in caplog.text and "bytes of JSON>" in caplog.text
    assert server.api_key not in caplog.text
    assert all(r.unsubscribe_url not in caplog.text for r in recipients)
    assert all(server.api_key not in (r.error or "") for r in _rows(sessions))


@pytest.mark.parametrize("key", [None, "", "change-me"])
def test_missing_key_fails_before_anything_is_claimed(
    sessions: sessionmaker[Session],
    sg_settings: Settings,
    server: SendGridServer,
    key: str | None,
) -> None:
    conf = sg_settings.model_copy(
        update={"sendgrid_api_key": None if key is None else SecretStr(key)}
    )
    eid = _edition(sessions, conf, readers=3)
    with sessions.begin() as s:
        sender.start_send(s, settings=conf, edition_id=eid, now=utcnow())
    provider = make_provider(conf, "sendgrid")
    with pytest.raises(ProviderConfigError, match="^NEWSLETTER_SENDGRID_API_KEY is not set$"):
        runner.send_edition(sessions, settings=conf, edition_id=eid, provider=provider)
    assert {r.status for r in _rows(sessions)} == {DeliveryStatus.QUEUED}
    assert server.stats()["attempts"] == 0


def test_wrong_path_is_a_config_error(
    sessions: sessionmaker[Session], sg_settings: Settings, server: SendGridServer
) -> None:
    eid = _edition(sessions, sg_settings, readers=1)
    prepared, recipients = _prepared(sessions, sg_settings, eid)
    provider = SendGridProvider(server.api_key, api_base_url=server.url + "/nope")
    with pytest.raises(ProviderConfigError, match="answered 404 .* check delivery.sendgrid"):
        provider.send_batch(prepared, recipients)


def test_a_401_after_part_of_the_batch_was_accepted_does_not_hand_it_back(
    sessions: sessionmaker[Session], sg_settings: Settings, server: SendGridServer
) -> None:
    eid = _edition(sessions, sg_settings, readers=4)
    prepared, recipients = _prepared(sessions, sg_settings, eid)
    server.script(["413", "ok", "401"])
    outcomes = _provider(sg_settings).send_batch(prepared, recipients)
    assert [o.status for o in outcomes] == ["sent", "sent", "retry", "retry"]
    assert outcomes[2].error == "SendGrid rejected the API key (401)"


# ----- building requests ------------------------------------------------------------------


def test_plain_and_escaped_batches_build_the_same_json(
    sessions: sessionmaker[Session], sg_settings: Settings
) -> None:
    eid = _edition(sessions, sg_settings, readers=6)
    prepared, recipients = _prepared(sessions, sg_settings, eid)
    plain = [r for r in recipients if r.name in ("", "Grace Hopper")]
    odd = Recipient(
        None, "odd@example.com", 'Tom & "Jerry"', "https://e.com/u", "https://e.com/p", ""
    )
    fast, _, _ = build_request(prepared, plain)
    slow, _, _ = build_request(prepared, [*plain, odd])
    fast_ps = json.loads(fast)["personalizations"]
    slow_ps = json.loads(slow)["personalizations"]
    assert slow_ps[:-1] == fast_ps
    assert slow_ps[-1]["substitutions"]["%%NAME_HTML%%"] == "Tom &amp; &quot;Jerry&quot;"
    assert slow_ps[-1]["substitutions"]["%%NAME%%"] == 'Tom & "Jerry"'
    assert slow_ps[-1]["headers"]["List-Unsubscribe"] == list_unsubscribe(odd)


def test_a_link_that_would_read_differently_escaped_is_refused(
    sessions: sessionmaker[Session], sg_settings: Settings
) -> None:
    # One substitution fills both parts: a link with & would show &amp; in the text.
    eid = _edition(sessions, sg_settings, readers=1)
    prepared, [plain] = _prepared(sessions, sg_settings, eid)
    odd = Recipient(7, "odd@example.com", "x", 'https://e.com/u?a=1&b="2"', "https://e.com/p", "")
    body, included, rejected = build_request(prepared, [plain, odd])
    assert included == [plain]
    assert [(o.delivery_id, o.status) for o in rejected] == [(7, "failed")]
    assert rejected[0].error and "HTML escaping" in rejected[0].error


def test_requests_never_break_sendgrid_limits(
    sessions: sessionmaker[Session], sg_settings: Settings
) -> None:
    eid = _edition(sessions, sg_settings, readers=2)
    prepared, [a, b] = _prepared(sessions, sg_settings, eid)
    twin = Recipient(999, a.email.upper(), "Twin", a.unsubscribe_url, a.preferences_url, "")
    huge = Recipient(998, "huge@example.com", "n" * 6000, b.unsubscribe_url, b.preferences_url, "")
    broken = Recipient(997, "broken@example.com", "bad \ud800 name", "https://e.com/u", "u", "")
    body, included, rejected = build_request(prepared, [a, b, twin, huge, broken])
    assert included == [a, b, broken]
    assert [(o.delivery_id, o.status) for o in rejected] == [(999, "failed"), (998, "failed")]
    assert rejected[0].error == (
        f"same address as delivery {a.delivery_id} in one request; not sent twice"
    )
    assert "over SendGrid's 10,000-byte limit" in (rejected[1].error or "")
    decoded = json.loads(body)
    assert decoded["personalizations"][2]["to"][0]["name"] == "bad ? name"
    with pytest.raises(ValueError, match="at most 1000"):
        build_request(prepared, [a] * 1001)


def test_retry_after_reads_seconds_dates_and_reset() -> None:
    now = 1_700_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 90).astimezone(), usegmt=False)
    assert retry_after({"Retry-After": "12"}, now=now) == 12
    assert retry_after({"Retry-After": date}, now=now) == pytest.approx(90)
    assert retry_after({"X-RateLimit-Reset": str(int(now) + 45)}, now=now) == 45
    assert retry_after({"X-RateLimit-Reset": str(int(now) - 5)}, now=now) == 0
    assert retry_after({"Retry-After": "soon"}, now=now) is None
    assert retry_after({}, now=now) is None
    assert retry_after({"Retry-After": "9999999"}, now=now) == 86_400


def test_provider_is_safe_from_many_threads(
    sessions: sessionmaker[Session], sg_settings: Settings, server: SendGridServer
) -> None:
    eid = _edition(sessions, sg_settings, readers=12)
    prepared, recipients = _prepared(sessions, sg_settings, eid)
    provider = _provider(sg_settings)
    results: list[list[str]] = []

    def send(part: list[Recipient]) -> None:
        results.append([o.status for o in provider.send_batch(prepared, part)])

    threads = [threading.Thread(target=send, args=(recipients[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(len, results)) == [3, 3, 3, 3] and {s for r in results for s in r} == {"sent"}
    assert server.stats()["by_delivery"] == {str(r.delivery_id): 1 for r in recipients}
    with sessions() as s:
        assert log.stats(s, edition_id=eid)[DeliveryStatus.QUEUED] == 12  # ledger untouched


# ----- the recording server as a process (benchmarks, crash tests) -------------------------


def _call(url: str, data: bytes | None = None) -> dict[str, object]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=5) as resp:
        result: dict[str, object] = json.loads(resp.read())
        return result


def test_server_runs_as_a_script_and_reports_counts(
    sessions: sessionmaker[Session], sg_settings: Settings
) -> None:
    eid = _edition(sessions, sg_settings, readers=5)
    prepared, recipients = _prepared(sessions, sg_settings, eid)
    script = Path(__file__).with_name("sendgrid_server.py")
    cmd = [sys.executable, str(script), "--port", "0", "--counts-only", "--key", "SG.bench-key"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline().split()
            assert first[0] == "PORT"
            url = f"http://127.0.0.1:{first[1]}"
            provider = SendGridProvider("SG.bench-key", api_base_url=url, timeout=5)
            assert {o.status for o in provider.send_batch(prepared, recipients)} == {"sent"}
            stats = _call(url + "/stats")
            assert stats == {
                "requests": 1,
                "attempts": 1,
                "recipients": 5,
                "duplicates": 0,
                "dropped": 0,
            }
            _call(url + "/script", json.dumps(["500"]).encode())
            assert {o.status for o in provider.send_batch(prepared, recipients)} == {"retry"}
            assert {o.status for o in provider.send_batch(prepared, recipients[:2])} == {"sent"}
            assert _call(url + "/stats")["duplicates"] == 2
            _call(url + "/reset", b"")
            assert {o.status for o in provider.send_batch(prepared, recipients)} == {"sent"}
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert json.loads(out.splitlines()[-1]) == {
        "requests": 1,
        "attempts": 1,
        "recipients": 5,
        "duplicates": 0,
        "dropped": 0,
    }
