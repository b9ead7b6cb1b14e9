"""After the hand-off: SendGrid's Signed Event Webhook (payloads signed here with a P-256
key made for the test), bounce mail through read-mail and the SMTP listener (real
DSNs from flufl.bounce's samples), suppression from what happened, and `why`."""

from __future__ import annotations

import base64
import json
import mailbox
import smtplib
import time
from collections.abc import Iterator, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter.audience import subscribers, suppression
from newsletter.config import Settings
from newsletter.content import editions
from newsletter.delivery import ledger, runner
from newsletter.delivery.providers.scripted import ScriptedProvider, script
from newsletter.events import why
from newsletter.events.ingest import rejections
from newsletter.events.listen import Listener
from newsletter.events.mail import MailReport
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    SendEvent,
    Subscription,
    SubscriptionStatus,
    SuppressionReason,
    utcnow,
)
from newsletter.web.app import create_app
from tests import factories
from tests.conftest import CliRun
from tests.smtp_servers import free_port

BOUNCES = Path(__file__).parent / "fixtures" / "bounces"
KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC = base64.b64encode(
    KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()


def sign(body: bytes, timestamp: str, key: ec.EllipticCurvePrivateKey = KEY) -> str:
    return base64.b64encode(key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()


@pytest.fixture
def wh_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"sendgrid_webhook_key": SecretStr(PUBLIC)})


@pytest.fixture
def client(wh_settings: Settings, engine: object) -> Iterator[TestClient]:
    with TestClient(create_app(wh_settings)) as c:
        yield c


def post(
    client: TestClient,
    events: Sequence[dict[str, Any]],
    *,
    stamp: int | None = None,
    tamper: bool = False,
) -> Any:
    body = json.dumps(list(events)).encode()
    timestamp = str(int(time.time()) if stamp is None else stamp)
    signature = sign(body, timestamp)
    if tamper:
        body = body.replace(b'"delivered"', b'"bounce"')
    return client.post(
        "/webhooks/sendgrid",
        content=body,
        headers={
            "X-Twilio-Email-Event-Webhook-Signature": signature,
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
            "content-type": "application/json",
        },
    )


def _sent(
    sessions: sessionmaker[Session],
    settings: Settings,
    readers: int = 3,
    slug: str = "daily-briefing",
) -> tuple[int, list[Delivery]]:
    with sessions.begin() as s:
        for i in range(readers):
            factories.subscriber(
                s, f"r{i}@example.org", newsletters=("daily-briefing", "good-news")
            )
        factories.story(s, newsletter=slug)
        eid = editions.build_edition(s, settings=settings, slug=slug)[0].id
    provider = ScriptedProvider(
        lambda edition, batch: [
            o._replace(message_id=f"sgmsg{o.delivery_id}") for o in script([])(edition, batch)
        ]
    )
    runner.send_edition(sessions, settings=settings, edition_id=eid, provider=provider)
    with sessions() as s:
        rows = list(
            s.scalars(select(Delivery).where(Delivery.edition_id == eid).order_by(Delivery.id))
        )
    return eid, rows


def ev(kind: str, row: Delivery, n: int, **extra: Any) -> dict[str, Any]:
    """A SendGrid event as documented (custom args as top-level keys)."""
    return {
        "email": row.email,
        "timestamp": int(time.time()),
        "event": kind,
        "sg_event_id": f"evt-{kind}-{row.id}-{n}",
        "sg_message_id": f"{row.provider_message_id}.filter0001.16648.5515E0B88.0",
        "category": "daily-briefing",
        "delivery_id": str(row.id),
        "edition_id": str(row.edition_id),
        **extra,
    }


def _status(sessions: sessionmaker[Session], row: Delivery) -> DeliveryStatus:
    with sessions() as s:
        return s.get_one(Delivery, row.id).status


def test_signed_events_are_stored_once_and_move_the_delivery_forward_only(
    client: TestClient, sessions: sessionmaker[Session], wh_settings: Settings
) -> None:
    _, [a, b, c] = _sent(sessions, wh_settings)
    first = post(client, [ev("processed", a, 1), ev("delivered", a, 2), ev("open", a, 3)])
    assert first.status_code == 200 and first.json()["stored"] == 3
    assert _status(sessions, a) is DeliveryStatus.OPENED
    # late, out of order, repeated: nothing moves back
    late = post(client, [ev("delivered", a, 2), ev("deferred", a, 9), ev("processed", a, 1)])
    assert late.json()["duplicates"] == 2 and late.json()["stored"] == 1
    assert _status(sessions, a) is DeliveryStatus.OPENED
    post(client, [ev("click", b, 1, url="https://example.com/x"), ev("open", b, 2)])
    assert _status(sessions, b) is DeliveryStatus.CLICKED
    post(client, [ev("delivered", c, 1), ev("bounce", c, 2, type="bounce", reason="550 5.1.1")])
    assert _status(sessions, c) is DeliveryStatus.BOUNCED  # a bounce wins over delivered
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(SendEvent)) == 8


def test_category_as_a_string_or_a_list_and_the_message_id_fallback(
    client: TestClient, sessions: sessionmaker[Session], wh_settings: Settings
) -> None:
    _, [a, b, _] = _sent(sessions, wh_settings)
    listed = ev("delivered", a, 1, category=["daily-briefing", "x"])
    no_args = ev("delivered", b, 1)
    del no_args["delivery_id"], no_args["edition_id"]  # only sg_message_id names it
    answer = post(client, [listed, no_args])
    assert answer.json()["unknown"] == 0
    assert _status(sessions, a) is DeliveryStatus.DELIVERED
    assert _status(sessions, b) is DeliveryStatus.DELIVERED


def test_unknown_deliveries_are_kept_and_counted(
    client: TestClient, sessions: sessionmaker[Session], wh_settings: Settings
) -> None:
    _, [a, *_] = _sent(sessions, wh_settings)
    stranger = ev("delivered", a, 7, delivery_id="999999", sg_message_id="nope.x", email="x@y.org")
    answer = post(client, [stranger, ev("delivered", a, 8, delivery_id="not-a-number")])
    assert answer.status_code == 200 and answer.json()["unknown"] == 1
    assert answer.json()["stored"] == 2
    with sessions() as s:
        kept = s.scalars(select(SendEvent).where(SendEvent.delivery_id.is_(None))).all()
    assert [e.email for e in kept] == ["x@y.org"]


@pytest.mark.parametrize("how", ["bad signature", "no signature", "replayed", "tampered", "no key"])
def test_forged_replayed_and_tampered_webhooks_get_403_and_change_nothing(
    client: TestClient, sessions: sessionmaker[Session], wh_settings: Settings, how: str
) -> None:
    _, [a, *_] = _sent(sessions, wh_settings)
    events = [ev("delivered", a, 1)]
    body = json.dumps(events).encode()
    stamp = str(int(time.time()))
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": sign(body, stamp),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }
    if how == "bad signature":
        headers["X-Twilio-Email-Event-Webhook-Signature"] = sign(
            body, stamp, ec.generate_private_key(ec.SECP256R1())
        )
        answer = client.post("/webhooks/sendgrid", content=body, headers=headers)
    elif how == "no signature":
        answer = client.post("/webhooks/sendgrid", content=body)
    elif how == "replayed":
        answer = post(
            client, events, stamp=int(time.time()) - wh_settings.events.max_age_seconds - 5
        )
    elif how == "tampered":
        answer = post(client, events, tamper=True)
    else:
        with TestClient(
            create_app(wh_settings.model_copy(update={"sendgrid_webhook_key": None}))
        ) as bare:
            answer = bare.post("/webhooks/sendgrid", content=body, headers=headers)
    assert answer.status_code == 403
    assert _status(sessions, a) is DeliveryStatus.SENT
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(SendEvent)) == 0


def test_a_10000_event_post_is_taken_in_one_go(
    client: TestClient, sessions: sessionmaker[Session], wh_settings: Settings
) -> None:
    _, rows = _sent(sessions, wh_settings, readers=20)
    events = [ev("open" if (n // 20) % 2 else "delivered", rows[n % 20], n) for n in range(10_000)]
    started = time.monotonic()
    answer = post(client, events)
    took = time.monotonic() - started
    assert answer.status_code == 200 and answer.json()["stored"] == 10_000
    assert took < 30, f"10,000 events took {took:.1f} s"
    assert {_status(sessions, r) for r in rows} == {DeliveryStatus.OPENED}


def test_what_suppresses_and_what_does_not(
    client: TestClient, sessions: sessionmaker[Session], wh_settings: Settings
) -> None:
    _, rows = _sent(sessions, wh_settings, readers=7)
    hard, dropped, spam, unsub, group, soft, deferred = rows
    post(
        client,
        [
            ev("bounce", hard, 1, type="bounce", reason="550 5.1.1 mailbox unavailable"),
            ev("dropped", dropped, 1, reason="Bounced Address"),
            ev("spamreport", spam, 1),
            ev("unsubscribe", unsub, 1),
            ev("group_unsubscribe", group, 1, asm_group_id=1),
            ev("bounce", soft, 1, type="blocked", reason="421 try later"),
            ev("deferred", deferred, 1, response="451 greylisted"),
        ],
    )
    with sessions() as s:
        reasons = {r.email: r.reason for r in suppression.list_suppressions(s)}
        assert reasons == {
            hard.email: SuppressionReason.BOUNCED,
            dropped.email: SuppressionReason.BOUNCED,
            spam.email: SuppressionReason.COMPLAINED,
            unsub.email: SuppressionReason.UNSUBSCRIBED,
        }
        detail = suppression.find_entry(s, address=hard.email)
        assert detail and "550 5.1.1 mailbox unavailable" in detail.detail
        left = {
            x.newsletter: x.status
            for x in s.scalars(
                select(Subscription)
                .join(Subscription.subscriber)
                .where(Subscription.subscriber.has(email=group.email))
            )
        }
    assert left == {
        "daily-briefing": SubscriptionStatus.UNSUBSCRIBED,
        "good-news": SubscriptionStatus.CONFIRMED,  # a list-level unsubscribe: that list only
    }


def test_soft_bounces_suppress_past_the_limit_within_the_window(
    client: TestClient, sessions: sessionmaker[Session], wh_settings: Settings
) -> None:
    _, [a, b, _] = _sent(sessions, wh_settings)
    limit = wh_settings.events.soft_bounce_limit
    post(client, [ev("bounce", a, n, type="blocked", reason="452 full") for n in range(limit)])
    post(client, [ev("bounce", b, n, type="blocked") for n in range(limit - 1)])
    with sessions() as s:
        assert suppression.find_entry(s, address=a.email) is not None
        assert suppression.find_entry(s, address=b.email) is None


def test_a_bounce_suppresses_and_the_next_edition_skips_the_address(
    client: TestClient, sessions: sessionmaker[Session], wh_settings: Settings
) -> None:
    _, [a, b, _] = _sent(sessions, wh_settings)
    post(client, [ev("bounce", a, 1, type="bounce", reason="550 no such user")])
    with sessions.begin() as s:
        factories.story(s, newsletter="good-news")
        eid = editions.build_edition(s, settings=wh_settings, slug="good-news")[0].id
    provider = ScriptedProvider()
    runner.send_edition(sessions, settings=wh_settings, edition_id=eid, provider=provider)
    assert a.email not in provider.copies and b.email in provider.copies
    with sessions.begin() as s:
        suppression.unsuppress(s, email=a.email, reason="they fixed their mailbox")
    with sessions() as s:
        answer = why.why(s, settings=wh_settings, email=a.email, edition_id=eid)
    assert "suppressed at" in answer.line and "550 no such user" in answer.line
    assert any("re-enabled by staff: they fixed their mailbox" in e.what for e in answer.timeline)


def test_tracking_off_stores_no_opens_and_tells_sendgrid(
    client: TestClient, sessions: sessionmaker[Session], wh_settings: Settings
) -> None:
    letters = dict(wh_settings.newsletters)
    letters["daily-briefing"] = letters["daily-briefing"].model_copy(update={"tracking": False})
    private = wh_settings.model_copy(update={"newsletters": letters})
    with TestClient(create_app(private)) as quiet:
        _, [a, *_] = _sent(sessions, private)
        answer = post(
            quiet, [ev("open", a, 1), ev("click", a, 2, url="https://x.org"), ev("delivered", a, 3)]
        )
    assert answer.json()["ignored"] == 2 and answer.json()["stored"] == 1
    from newsletter.delivery import sender
    from newsletter.delivery.providers.sendgrid_request import build_request

    with sessions() as s:
        edition = editions.get_edition(s, a.edition_id)
        prepared = sender.prepare(private, edition, editions.frozen_content(edition))  # type: ignore[arg-type]
    body, _, _ = build_request(prepared, [])
    assert json.loads(body)["tracking_settings"]["open_tracking"] == {"enable": False}


def test_an_smtp_rejection_at_rcpt_is_a_hard_bounce(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    _, [a, *_] = _sent(sessions, settings)
    with sessions.begin() as s:
        s.execute(
            update(Delivery)
            .where(Delivery.id == a.id)
            .values(status=DeliveryStatus.FAILED, failure="recipient", provider="smtp",
                    error="550 5.1.1 <r0@example.org>: Recipient address rejected (at RCPT TO)")
        )  # fmt: skip
        report = rejections(s, settings=settings, edition_id=a.edition_id)
        again = rejections(s, settings=settings, edition_id=a.edition_id)
    assert report.suppressed == 1 and again.duplicates == 1 and again.suppressed == 0
    with sessions() as s:
        entry = suppression.find_entry(s, address=a.email)
        assert entry and entry.reason is SuppressionReason.BOUNCED and "550 5.1.1" in entry.detail


def _dsn(to_verp: str, failed: str) -> bytes:
    """An RFC 3464 report as an MTA returns it to the VERP address."""
    return (
        "From: MAILER-DAEMON@mx.example.net\r\n"
        f"To: {to_verp}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\n"
        "This is the mail system at host mx.example.net: the message was not delivered.\r\n"
        "\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {failed}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
        "\r\n--B--\r\n"
    ).encode()


def test_read_mail_from_a_maildir_verp_and_real_world_reports(
    run_cli: CliRun, sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    _, [a, b, _] = _sent(sessions, settings)
    with sessions.begin() as s:  # real reports name these addresses
        for addr in ("userx@example.com", "xxxxx@local.ie", "userx@example.de"):
            factories.subscriber(s, addr)
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    box.add(_dsn(f"bounces+{a.id}@news.example.com", a.email))
    for name in ("dsn_01", "postfix_01", "qmail_01", "exim_01", "yahoo_01", "simple_01"):
        box.add((BOUNCES / f"{name}.eml").read_bytes())
    box.add(b"From: someone@example.net\nTo: editors@news.example.com\nSubject: hi\n\nhello\n")
    box.close()
    out = run_cli("events", "read-mail", str(tmp_path / "Maildir")).output
    assert "8 messages: 7 bounces" in out and "1 other" in out
    with sessions() as s:
        suppressed = {e.email for e in suppression.list_suppressions(s)}
        assert s.get_one(Delivery, a.id).status is DeliveryStatus.BOUNCED
    assert {a.email, "userx@example.com", "xxxxx@local.ie", "userx@example.de"} <= suppressed
    assert b.email not in suppressed
    again = run_cli("events", "read-mail", str(tmp_path / "Maildir")).output  # once only
    assert "0 addresses suppressed" in again


def test_the_smtp_listener_takes_bounces_and_mailto_unsubscribes(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    _, [a, b, _] = _sent(sessions, settings)
    token = b.subscriber_key
    from newsletter.delivery import links

    mailto = links.recipient(
        settings, delivery_id=b.id, email=b.email, name="", key=token, newsletter="daily-briefing"
    ).unsubscribe_mailto
    subject = "unsubscribe " + mailto.split("subject=unsubscribe%20", 1)[1].replace("%3A", ":")
    port = free_port()
    with Listener(settings, sessions, host="127.0.0.1", port=port) as listener:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="mx.example.net") as smtp:
            smtp.sendmail(
                "MAILER-DAEMON@mx.example.net",
                [f"bounces+{a.id}@news.example.com"],
                _dsn(f"bounces+{a.id}@news.example.com", a.email),
            )
            note = EmailMessage()
            note["From"] = b.email
            note["To"] = settings.sender.unsubscribe_address
            note["Subject"] = subject
            note.set_content("")
            smtp.send_message(note)
        report: MailReport = listener.report
    assert report.bounces == 1 and report.unsubscribes == 1
    with sessions() as s:
        assert suppression.find_entry(s, address=a.email) is not None
        left = s.scalars(
            select(Subscription).where(
                Subscription.subscriber.has(email=b.email),
                Subscription.newsletter == "daily-briefing",
            )
        ).one()
        assert (left.status, left.unsubscribed_via) == (SubscriptionStatus.UNSUBSCRIBED, "mailto")


def test_why_answers_every_case(
    run_cli: CliRun, sessions: sessionmaker[Session], settings: Settings
) -> None:
    eid, [sent, failed, uncertain] = _sent(sessions, settings)
    with sessions.begin() as s:
        s.execute(update(Delivery).where(Delivery.id == failed.id).values(
            status=DeliveryStatus.FAILED, error="550 mailbox unavailable"))  # fmt: skip
        s.execute(update(Delivery).where(Delivery.id == uncertain.id).values(
            status=DeliveryStatus.UNCERTAIN, error="the answer was lost"))  # fmt: skip
        factories.subscriber(s, "pending@example.org", status=SubscriptionStatus.PENDING)
        late = factories.subscriber(s, "late@example.org")
        late.subscriptions[0].confirmed_at = utcnow()  # confirmed after the freeze
        factories.subscriber(s, "gone@example.org")
        subscribers.unsubscribe(
            s, email="gone@example.org", newsletter="daily-briefing", via="one-click"
        )
        factories.subscriber(s, "bounced@example.org")
        suppression.add_entry(
            s,
            address="bounced@example.org",
            reason=SuppressionReason.BOUNCED,
            detail="550 no such user",
        )
        factories.subscriber(s, "erased@example.org")
    with sessions.begin() as s:
        subscribers.remove(s, email="erased@example.org", newsletter=None, forget=True)
    cases = {
        sent.email: "sent at",
        failed.email: "failed: 550 mailbox unavailable",
        uncertain.email: "uncertain: the answer was lost",
        "pending@example.org": "pending confirmation since",
        "late@example.org": "after the audience was frozen",
        "gone@example.org": "unsubscribed at",
        "bounced@example.org": "suppressed at",
        "erased@example.org": "erased on request",
        "never@example.org": "not known",
    }
    for address, expected in cases.items():
        out = run_cli("deliveries", "why", address, "--edition", str(eid)).output
        first = out.splitlines()[0]
        assert expected in first, (address, first)
    assert (
        "(one-click)"
        in run_cli("deliveries", "why", "gone@example.org", "--edition", str(eid)).output
    )
    assert (
        "550 no such user"
        in run_cli(
            "deliveries", "why", "bounced@example.org", "--newsletter", "daily-briefing"
        ).output
    )
    with sessions.begin() as s:  # a wave still to come
        s.execute(update(Delivery).where(Delivery.id == sent.id).values(
            status=DeliveryStatus.QUEUED, not_before=utcnow().replace(year=2099)))  # fmt: skip
    assert "waiting to be sent at 2099" in run_cli("deliveries", "why", sent.email).output
    history = run_cli("deliveries", "timeline", "gone@example.org").output
    assert (
        "subscribed to daily-briefing" in history
        and "unsubscribed from daily-briefing (one-click)" in history
    )


def test_stats_gain_the_funnel(
    client: TestClient, run_cli: CliRun, sessions: sessionmaker[Session], wh_settings: Settings
) -> None:
    eid, [a, b, c] = _sent(sessions, wh_settings)
    post(client, [ev("delivered", a, 1), ev("open", b, 1), ev("click", b, 2, url="https://x.org/1"),
                  ev("spamreport", c, 1)])  # fmt: skip
    data = json.loads(
        run_cli("deliveries", "stats", "--edition", str(eid), "--format", "json").output
    )
    assert data["funnel"] == {
        "accepted": 3, "delivered": 3, "opened": 1, "clicked": 1, "bounced": 0, "complained": 1,
    }  # fmt: skip
    with sessions() as s:
        seen = why.engagement(s, edition_id=eid)
    assert (seen.unique_opens, seen.unique_clicks) == (1, 1)
    assert seen.links == (("https://x.org/1", 1, 1),)
    assert ledger  # the ledger is what moved them (never a bare status write)
