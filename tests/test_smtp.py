"""The SMTP provider against real servers: aiosmtpd (content, faults, TLS, AUTH)
and Postfix's smtp-sink (load). See tests/smtp_servers.py."""

from __future__ import annotations

import base64
import email
import email.header
import os
import re
import threading
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions
from newsletter.content.render import (
    render_edition,
)
from newsletter.content.types import (
    Brand,
    EditionView,
    RenderedEdition,
    StoryView,
)
from newsletter.delivery import message as messages
from newsletter.delivery import runner, sender
from newsletter.delivery.message import MessageTemplate
from newsletter.delivery.personalise import (
    Personaliser,
)
from newsletter.delivery.providers.base import Outcome, PreparedEdition, Recipient
from newsletter.delivery.providers.dkim import DKIMSigner
from newsletter.delivery.providers.smtp import SMTPProvider, delivery_id_from_verp, verp_address
from newsletter.errors import ProviderConfigError, ProviderError
from newsletter.models import Delivery, DeliveryStatus, EditionStatus
from tests import factories
from tests.conftest import ROOT
from tests.factories import FakeClock
from tests.smtp_servers import (
    LocalSMTP,
    Recorder,
    aiosmtpd_server,
    fixed_reply_server,
    free_port,
    make_tls_files,
    password_authenticator,
    smtp_sink,
    smtp_sink_missing,
)

HOSTILE_NAMES = [
    "Ann Reader",
    "José Ñúñez-Ørsted",
    'Robert "Bob" <b>&amp; O\'Brien',
    "a=b == c =3D =?utf-8?q?x?=",
    "x" * 200,  # the longest name a subscriber may have
    "名前 " * 60,
    "From here. \t Tabs",
    "Dot",
    "",
]
REQUIRED_SIGNED = {
    "from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post",
}  # fmt: skip


class Capturing(SMTPProvider):
    """The real provider, remembering which recipient (and edition) it was given."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: dict[str, tuple[PreparedEdition, Recipient]] = {}

    def send_batch(
        self, edition: PreparedEdition, recipients: Sequence[Recipient]
    ) -> list[Outcome]:
        for r in recipients:
            self.seen[r.email] = (edition, r)
        return super().send_batch(edition, recipients)


def smtp_settings(settings: Settings, server: LocalSMTP, **smtp: Any) -> Settings:
    secrets = {k: smtp.pop(k) for k in ("smtp_password", "dkim_private_key") if k in smtp}
    conf = settings.delivery.smtp.model_copy(
        update={"host": server.host, "port": server.port, "timeout_seconds": 5.0, **smtp}
    )
    delivery = settings.delivery.model_copy(update={"provider": "smtp", "smtp": conf})
    return settings.model_copy(
        update={"delivery": delivery, **{k: SecretStr(v) for k, v in secrets.items()}}
    )


@pytest.fixture
def provider_for() -> Iterator[Any]:
    """Build providers from settings and close them all after the test."""
    made: list[SMTPProvider] = []

    def build(settings: Settings) -> Capturing:
        p = Capturing.from_settings(settings)
        assert isinstance(p, Capturing)
        made.append(p)
        return p

    yield build
    for p in made:
        p.close()


@pytest.fixture
def base_settings() -> Settings:
    """Default settings for provider-level tests (no database: they never touch the ledger)."""
    return Settings()


@pytest.fixture(scope="module")
def edition() -> PreparedEdition:
    """A realistic three-story edition rendered with the real templates (no database)."""
    stories = tuple(
        StoryView(
            title=f"Story {i}: a headline & a <tag>",
            url=f"https://news.example.com/story/{i}",
            summary_html="<p>A short summary with <strong>weight</strong>.</p>",
            summary_text="A short summary with weight.",
            kicker="World",
            source="Example Wire",
            published_at=datetime(2026, 11, 24, 5, 0, tzinfo=UTC),
        )
        for i in range(3)
    )
    view = EditionView(
        7, "daily-briefing", "The Daily Ledger", "Top stories.", date(2026, 11, 24), stories
    )
    brand = Brand(
        "The Daily Ledger", "The Daily Ledger", "1 Newsroom Way", "https://news.example.com", None
    )
    content = render_edition(
        view,
        brand=brand,
        subject_template="{{ newsletter.name }}: {{ lead.title }}",
        template="briefing",
        templates_dir=ROOT / "templates",
    )
    return PreparedEdition(
        7, "daily-briefing", content, "The Daily Ledger",
        "briefing@news.example.com", "editors@news.example.com",
        '"The Daily Ledger" <daily-briefing.news.example.com>', "news.example.com",
    )  # fmt: skip


def make_edition(sessions: sessionmaker[Session], settings: Settings, names: Sequence[str]) -> int:
    with sessions.begin() as s:
        for i, name in enumerate(names):
            factories.subscriber(s, f"reader{i}@example.com", name=name)
        for _ in range(3):
            factories.story(s)
        edition, _ = editions.build_edition(s, settings=settings, slug="daily-briefing")
        return edition.id


def prepared(sessions: sessionmaker[Session], settings: Settings, eid: int) -> PreparedEdition:
    with sessions() as s:
        edition = editions.get_edition(s, eid)
        return sender.prepare(settings, edition, editions.render_edition(edition, settings))


def fake_recipient(i: int, name: str = "Reader", email_: str | None = None) -> Recipient:
    token = f"tok{i}.AbC-_x"
    return Recipient(
        delivery_id=i,
        email=email_ or f"r{i}@example.com",
        name=name,
        unsubscribe_url=f"https://news.example.com/unsubscribe/{token}",
        preferences_url=f"https://news.example.com/preferences/{token}",
        unsubscribe_mailto=f"mailto:unsubscribe@news.example.com?subject=unsubscribe%20{token}",
    )


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def display_name(raw_to: str) -> str:
    """The To display name decoded per RFC 2047 (whitespace between encoded words dropped).

    The stdlib's headerregistry keeps that whitespace inside structured headers, so
    a long name split into several encoded words would come back with spaces added.
    """
    decoded = str(email.header.make_header(email.header.decode_header(raw_to)))
    name = re.sub(r"\s*<[^<>]*>$", "", decoded) if decoded.endswith(">") else ""
    if name.startswith('"'):
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


def assert_wire_format(data: bytes) -> None:
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in data.replace(b"\r\n", b""), "bare CR"
    assert data.endswith(b"\r\n")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    head = data.split(b"\r\n\r\n", 1)[0]
    for word in re.findall(rb"=\?[^?]+\?[bBqQ]\?[^?]*\?=", head):
        assert len(word) <= 75, word  # RFC 2047
    for line in head.split(b"\r\n"):  # folded, except where an unsubscribe URI cannot be
        assert len(line) <= 78 or line.startswith((b"List-Unsubscribe: <", b" <mailto:")), line
    # QP body lines: RFC 2045's 76, + 2 for a protected "=46rom"
    body = data.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 78


def assert_message_for(data: bytes, edition: PreparedEdition, r: Recipient) -> EmailMessage:
    """Every header, To = r, text/plain then text/html equal to the personaliser's output."""
    assert_wire_format(data)
    msg = parse(data)
    for header in (
        "From", "To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe",
        "List-Unsubscribe-Post", "MIME-Version",
    ):  # fmt: skip
        assert msg[header], header
    assert msg.get_content_type() == "multipart/alternative"
    assert str(msg["Subject"]) == edition.subject
    assert msg["From"].addresses[0].addr_spec == edition.from_address
    assert msg["From"].addresses[0].display_name == edition.from_name
    assert msg["Reply-To"] == edition.reply_to
    assert msg["List-Id"] == edition.list_id
    to = msg["To"].addresses
    assert len(to) == 1 and to[0].addr_spec == r.email
    assert display_name(_raw_header(data, "To")) == " ".join(r.name.split())
    assert msg["List-Unsubscribe"] == f"<{r.unsubscribe_url}>, <{r.unsubscribe_mailto}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = list(msg.iter_parts())
    assert text.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    # The wire carries canonical CRLF line breaks (RFC 2046); the stdlib keeps them.
    assert text.get_content() == Personaliser(edition.content).text(r.values).replace("\n", "\r\n")
    assert html.get_content() == Personaliser(edition.content).html(r.values).replace("\n", "\r\n")
    return msg


def _raw_header(data: bytes, name: str) -> str:
    """A header's raw (unfolded, undecoded) value."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    match = re.search(rf"^{name}: ([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.MULTILINE)
    assert match, name
    return re.sub(r"\r\n[ \t]", " ", match.group(1))


# ----- message bytes ----------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_template_bytes_parse_back_exactly(edition: PreparedEdition, name: str) -> None:
    # a hostile subject and sender name too: RFC 2047 from the stdlib's folding
    edition = replace(
        edition,
        from_name="Ledger, Ünïcode — Desk",
        content=replace(edition.content, subject="Ümlaut = news: " + edition.subject),
    )
    r = fake_recipient(7, name)
    message_id, data = MessageTemplate(edition).render(r, date=b"Tue, 24 Nov 2026 05:00:00 +0000")
    msg = assert_message_for(data, edition, r)
    assert msg["Message-ID"] == message_id


def test_values_that_need_quoted_printable_are_encoded_not_spliced() -> None:
    r = fake_recipient(1, "From =41\r\n.")
    body = "Hi %%NAME%%\n.\nFrom the desk: %%UNSUBSCRIBE_URL%%\n" + "w" * 200 + "\n"
    rendered = RenderedEdition(subject="S", html="<p>%%NAME%%</p>" * 40, text=body)
    edition = PreparedEdition(
        1, "n", rendered, "F", "f@news.example.com", None,
        "n.example.com", "news.example.com",
    )  # fmt: skip
    _, data = MessageTemplate(edition).render(r, date=b"now")
    assert b"\r\nFrom " not in data.split(b"\r\n\r\n", 1)[1]  # protected as =46rom
    assert b"\r\n=46rom =3D41 .=\r\n" in data  # "From " at a line start, "=" encoded
    assert_message_for(data, edition, r)


@pytest.mark.parametrize("name", [".Dot first", "x" * 75 + "....", "a\n.b", ""])
def test_dot_stuffed_form_equals_stuffing_the_whole_message(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(messages, "message_id", lambda edition, recipient: "<fixed@x>")
    text = ".starts\n%%NAME%%\n..two\nmid %%NAME%%.\n.%%UNSUBSCRIBE_URL%%\n"
    rendered = RenderedEdition(subject=".S", html=".c { x }\n<p>%%NAME%%</p>\n.", text=text)
    edition = PreparedEdition(
        1, "n", rendered, "F", "f@news.example.com", None,
        "n.example.com", "news.example.com",
    )  # fmt: skip
    template = MessageTemplate(edition)
    r = fake_recipient(1, name)
    _, plain = template.render(r, date=b"now")
    _, stuffed = template.render(r, date=b"now", stuffed=True)
    assert stuffed == plain.replace(b"\r\n.", b"\r\n..")
    assert stuffed != plain


def test_verp_helpers_round_trip() -> None:
    assert verp_address("bounces@news.example.com", 42) == "bounces+42@news.example.com"
    assert verp_address("bounces@news.example.com", None) == "bounces@news.example.com"
    assert delivery_id_from_verp("<bounces+42@news.example.com>") == 42
    assert delivery_id_from_verp("bounces@news.example.com") is None


# ----- end to end on aiosmtpd ---------------------------------------------------


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_send_edition_delivers_one_correct_message_each(
    sessions: sessionmaker[Session], settings: Settings, provider_for: Any, pipelining: bool
) -> None:
    names = HOSTILE_NAMES
    eid = make_edition(sessions, settings, names)
    with aiosmtpd_server(Recorder(pipelining=pipelining)) as server:
        conf = smtp_settings(settings, server, verp=True, pool_size=3)
        provider = provider_for(conf)
        report = runner.send_edition(sessions, settings=conf, edition_id=eid, provider=provider)
        got = server.handler.by_rcpt()
    assert report.complete and report.sent == len(names)
    assert len(server.handler.messages) == len(names) == len(got)
    assert 1 <= len(server.handler.sessions) <= 3  # pooled, reused
    with sessions() as s:
        rows = {d.email: d for d in s.scalars(select(Delivery))}
    for address, received in got.items():
        edition, r = provider.seen[address]
        msg = assert_message_for(received.data, edition, r)
        row = rows[address]
        assert row.status is DeliveryStatus.SENT and row.provider == "smtp"
        assert row.provider_message_id == msg["Message-ID"]
        assert received.mail_from == f"bounces+{row.id}@news.example.com"
        assert delivery_id_from_verp(received.mail_from) == r.delivery_id == row.id


def test_fixed_return_path(
    edition: PreparedEdition, base_settings: Settings, provider_for: Any
) -> None:
    with aiosmtpd_server() as server:
        provider = provider_for(
            smtp_settings(base_settings, server, return_path="rp@news.example.com")
        )
        out = provider.send_batch(edition, [fake_recipient(1), fake_recipient(2)])
        default = provider_for(smtp_settings(base_settings, server))
        default.send_batch(edition, [fake_recipient(3)])
    assert [o.status for o in out] == ["sent", "sent"]
    senders = [m.mail_from for m in server.handler.messages]
    assert senders == ["rp@news.example.com"] * 2 + [edition.from_address]


def _keypair(algorithm: str) -> tuple[str, bytes]:
    """(private key as NEWSLETTER_DKIM_PRIVATE_KEY, the DNS TXT record)."""
    if algorithm == "rsa-sha256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        private = key.private_bytes(  # PKCS#8: converted to what dkimpy reads
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return private, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    ed = ed25519.Ed25519PrivateKey.generate()
    raw = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    private = base64.b64encode(
        ed.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    ).decode()
    return private, b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_dkim_signature_verifies_and_covers_the_list_headers(
    sessions: sessionmaker[Session], settings: Settings, provider_for: Any, algorithm: str
) -> None:
    private, txt = _keypair(algorithm)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"nl2026._domainkey.news.example.com."
        return txt

    eid = make_edition(sessions, settings, ["José", 'Bob "B" <b>', ""])
    with aiosmtpd_server() as server:
        conf = smtp_settings(
            settings,
            server,
            dkim_selector="nl2026",
            dkim_domain="news.example.com",
            dkim_algorithm=algorithm,
            dkim_private_key=private,
        )
        provider = provider_for(conf)
        report = runner.send_edition(sessions, settings=conf, edition_id=eid, provider=provider)
    assert report.sent == 3
    for address, received in server.handler.by_rcpt().items():
        assert received.data.startswith(b"DKIM-Signature: ")
        assert dkim.verify(received.data, dnsfunc=dnsfunc), address
        msg = assert_message_for(received.data, *provider.seen[address])
        tags = dict(
            t.strip().split("=", 1)
            for t in re.sub(r"\s+", "", str(msg["DKIM-Signature"])).split(";")
        )
        assert tags["a"] == algorithm and tags["d"] == "news.example.com"
        assert REQUIRED_SIGNED <= set(tags["h"].split(":"))
        tampered = received.data.replace(b"/unsubscribe/", b"/unsubscr1be/", 1)
        assert not dkim.verify(tampered, dnsfunc=dnsfunc)


def test_dkim_key_formats_and_errors() -> None:
    rsa_pem, _ = _keypair("rsa-sha256")
    ed_seed, _ = _keypair("ed25519-sha256")
    ed_pem = (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    one_line = rsa_pem.replace("\n", "\\n")  # as squeezed into an env file
    for key, algorithm in [
        (rsa_pem, "rsa-sha256"),
        (one_line, "rsa-sha256"),
        (ed_seed, "ed25519-sha256"),
        (ed_pem, "ed25519-sha256"),
    ]:
        DKIMSigner.load(selector="s", domain="d.example", private_key=key, algorithm=algorithm)  # type: ignore[arg-type]
    for key, algorithm, match in [
        ("not a key at all", "rsa-sha256", "RSA private key"),
        (ed_pem, "rsa-sha256", "RSA private key"),
        (rsa_pem, "ed25519-sha256", "Ed25519"),
        ("c2hvcnQ=", "ed25519-sha256", "32-byte seed"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "rsa-sha256", "PEM"),
    ]:
        with pytest.raises(ProviderConfigError, match=match) as info:
            DKIMSigner.load(selector="s", domain="d.example", private_key=key, algorithm=algorithm)  # type: ignore[arg-type]
        assert key not in str(info.value)


def test_settings_errors_are_one_clear_line(base_settings: Settings) -> None:
    server = LocalSMTP("127.0.0.1", 25, Recorder())
    with pytest.raises(ProviderConfigError, match="NEWSLETTER_SMTP_PASSWORD"):
        SMTPProvider.from_settings(smtp_settings(base_settings, server, username="u"))
    with pytest.raises(ProviderConfigError, match="dkim_selector"):
        SMTPProvider.from_settings(smtp_settings(base_settings, server, dkim_selector="s"))


# ----- faults --------------------------------------------------------------------


def _queued_untouched(sessions: sessionmaker[Session], eid: int) -> None:
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
        assert editions.get_edition(s, eid).status is EditionStatus.BUILT


def test_unreachable_server_stops_before_anything_is_claimed(
    sessions: sessionmaker[Session], settings: Settings, provider_for: Any
) -> None:
    eid = make_edition(sessions, settings, ["A", "B"])
    closed = LocalSMTP("127.0.0.1", free_port(), Recorder())
    provider = provider_for(smtp_settings(settings, closed))
    with pytest.raises(ProviderConfigError, match=r"cannot connect to SMTP server 127\.0\.0\.1:"):
        runner.send_edition(
            sessions,
            settings=smtp_settings(settings, closed),
            edition_id=eid,
            provider=provider,
        )
    _queued_untouched(sessions, eid)


def test_421_at_connect_is_retried_and_nothing_is_sent(
    edition: PreparedEdition, base_settings: Settings, provider_for: Any
) -> None:
    with fixed_reply_server("421 4.3.2 mx.test busy, try later") as busy:
        provider = provider_for(smtp_settings(base_settings, busy, pool_size=2))
        with pytest.raises(ProviderError, match="421 4.3.2 mx.test busy") as info:
            provider.check()
        assert not isinstance(info.value, ProviderConfigError)  # reachable, only busy
        out = provider.send_batch(edition, [fake_recipient(i) for i in range(3)])
    assert [o.status for o in out] == ["retry"] * 3
    assert all(o.error and "421 4.3.2 mx.test busy" in o.error for o in out)


def test_451_on_data_retries_then_sends_exactly_once(
    sessions: sessionmaker[Session], settings: Settings, provider_for: Any
) -> None:
    eid = make_edition(sessions, settings, ["A", "B", "C", "D"])
    handler = Recorder(data_replies=deque(["451 4.3.0 Try again later"] * 2))
    clock = FakeClock()
    with aiosmtpd_server(handler) as server:
        conf = smtp_settings(settings, server, pool_size=1)
        report = runner.send_edition(
            sessions, settings=conf, edition_id=eid, provider=provider_for(conf),
            clock=clock, sleep=clock.sleep,
        )  # fmt: skip
    assert report.complete and report.counts[DeliveryStatus.SENT] == 4
    assert report.retried == 2
    assert Counter(r for m in handler.messages for r in m.rcpt_tos) == {
        f"reader{i}@example.com": 1 for i in range(4)
    }
    with sessions() as s:
        assert sorted(s.scalars(select(Delivery.attempts))) == [1, 1, 2, 2]


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_550_on_some_recipients_fails_only_those(
    sessions: sessionmaker[Session], settings: Settings, provider_for: Any, pipelining: bool
) -> None:
    eid = make_edition(sessions, settings, ["A", "B", "C", "D", "E"])
    handler = Recorder(
        pipelining=pipelining,
        rcpt_replies={
            "reader1@example.com": "550 5.1.1 <reader1@example.com>: User unknown",
            "reader3@example.com": "553 5.7.1 Mailbox disabled",
        },
    )
    with aiosmtpd_server(handler) as server:
        conf = smtp_settings(settings, server, pool_size=2)
        report = runner.send_edition(
            sessions, settings=conf, edition_id=eid, provider=provider_for(conf)
        )
    assert (report.sent, report.failed) == (3, 2)
    assert sorted(handler.by_rcpt()) == [
        "reader0@example.com",
        "reader2@example.com",
        "reader4@example.com",
    ]
    with sessions() as s:
        failed = {
            d.email: d.error
            for d in s.scalars(select(Delivery).where(Delivery.status == DeliveryStatus.FAILED))
        }
    assert str(failed["reader1@example.com"]).startswith(
        "550 5.1.1 <reader1@example.com>: User unknown (at RCPT TO)"
    )
    assert str(failed["reader3@example.com"]).startswith("553 5.7.1 Mailbox disabled")


def test_connection_lost_after_the_final_dot_is_uncertain(
    sessions: sessionmaker[Session], settings: Settings, provider_for: Any
) -> None:
    # The server took the whole message, then the connection died before its reply:
    # it may have queued it. Not retried (uncertain = "skip"): nobody gets it twice.
    eid = make_edition(sessions, settings, ["A", "B", "C"])
    handler = Recorder(pipelining=True, data_replies=deque([None, "drop"]))
    clock = FakeClock()
    with aiosmtpd_server(handler) as server:
        conf = smtp_settings(settings, server, pool_size=1)
        report = runner.send_edition(
            sessions, settings=conf, edition_id=eid, provider=provider_for(conf),
            clock=clock, sleep=clock.sleep,
        )  # fmt: skip
    assert report.counts[DeliveryStatus.SENT] == 2 and report.uncertain == 1
    assert report.counts[DeliveryStatus.UNCERTAIN] == 1 and not report.ok
    assert report.retried == 0
    assert len(handler.sessions) == 2  # reconnected once for the third
    with sessions() as s:
        [row] = s.scalars(select(Delivery).where(Delivery.status == DeliveryStatus.UNCERTAIN))
    assert row.error and "after the data" in row.error


def test_stale_pooled_connection_is_replaced_without_a_retry(
    edition: PreparedEdition, base_settings: Settings, provider_for: Any
) -> None:
    handler = Recorder(mail_replies=deque([None, "drop"]))
    with aiosmtpd_server(handler) as server:
        provider = provider_for(smtp_settings(base_settings, server, pool_size=1))
        out = provider.send_batch(edition, [fake_recipient(i) for i in range(3)])
    assert [o.status for o in out] == ["sent"] * 3
    assert len(handler.messages) == 3 and len(handler.sessions) == 2


def test_421_mid_session_retries_that_message_and_reconnects(
    edition: PreparedEdition, base_settings: Settings, provider_for: Any
) -> None:
    handler = Recorder(pipelining=True, data_replies=deque(["421 4.4.2 closing, too busy"]))
    with aiosmtpd_server(handler) as server:
        provider = provider_for(smtp_settings(base_settings, server, pool_size=1))
        out = provider.send_batch(edition, [fake_recipient(i) for i in range(3)])
    assert [o.status for o in out] == ["retry", "sent", "sent"]
    assert out[0].error == "421 4.4.2 closing, too busy (at end of data)"
    assert len(handler.sessions) == 2


def test_rejected_envelope_sender_is_a_config_error(
    edition: PreparedEdition, base_settings: Settings, provider_for: Any
) -> None:
    handler = Recorder(mail_replies=deque(["553 5.7.1 Sender address rejected"]))
    with aiosmtpd_server(handler) as server:
        provider = provider_for(smtp_settings(base_settings, server, pool_size=1))
        with pytest.raises(ProviderConfigError, match="rejected the envelope sender"):
            provider.send_batch(edition, [fake_recipient(1), fake_recipient(2)])
        assert not handler.mail_replies and not handler.messages  # stopped at the first
        # once something was accepted the batch cannot be handed back: the rest retry
        handler.mail_replies.extend([None, "553 5.7.1 Sender address rejected"])
        out = provider.send_batch(
            edition, [fake_recipient(3), fake_recipient(4), fake_recipient(5)]
        )
    assert [o.status for o in out] == ["sent", "retry", "retry"]
    assert len(handler.messages) == 1


def test_unsendable_address_fails_that_recipient_only(
    edition: PreparedEdition, base_settings: Settings, provider_for: Any
) -> None:
    with aiosmtpd_server() as server:
        provider = provider_for(smtp_settings(base_settings, server))
        out = provider.send_batch(
            edition,
            [
                fake_recipient(1, email_="ünï@example.com"),
                fake_recipient(2),
                fake_recipient(3, email_="a b@x"),
            ],
        )
    assert [o.status for o in out] == ["failed", "sent", "failed"]
    assert out[0].error and "SMTPUTF8" in out[0].error


def test_concurrent_batches_share_the_pool(
    edition: PreparedEdition, base_settings: Settings, provider_for: Any
) -> None:
    results: list[list[Outcome]] = []
    with aiosmtpd_server(Recorder(pipelining=True)) as server:
        provider = provider_for(smtp_settings(base_settings, server, pool_size=3))
        provider.check()
        threads = [
            threading.Thread(
                target=lambda k=k: results.append(
                    provider.send_batch(edition, [fake_recipient(k * 100 + i) for i in range(40)])
                )
            )
            for k in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(o.status for batch in results for o in batch) == ["sent"] * 160
    assert len(server.handler.messages) == 160
    assert len(server.handler.sessions) <= 3


# ----- TLS and AUTH --------------------------------------------------------------


@pytest.fixture
def tls(tmp_path: Path) -> Any:
    return make_tls_files(tmp_path)


def _tls_provider(settings: Settings, server: LocalSMTP, tls: Any, **smtp: Any) -> SMTPProvider:
    conf = smtp_settings(settings, server, **smtp)
    provider = SMTPProvider.from_settings(conf)
    provider.ssl_context = tls.client_context()
    return provider


def test_starttls_and_login(edition: PreparedEdition, base_settings: Settings, tls: Any) -> None:
    auth = password_authenticator("mailer", "s3cret-pass")
    with aiosmtpd_server(
        tls_context=tls.server_context(),
        require_starttls=True,
        authenticator=auth,
        auth_required=True,
    ) as server:
        good = _tls_provider(
            base_settings,
            server,
            tls,
            security="starttls",
            username="mailer",
            smtp_password="s3cret-pass",
        )
        try:
            good.check()
            out = good.send_batch(edition, [fake_recipient(1), fake_recipient(2)])
        finally:
            good.close()
        bad = _tls_provider(
            base_settings,
            server,
            tls,
            security="starttls",
            username="mailer",
            smtp_password="wrong-password",
        )
        try:
            with pytest.raises(
                ProviderConfigError, match=r"rejected the login for user 'mailer': 535"
            ) as info:
                bad.check()
            assert "wrong-password" not in str(info.value)
            with pytest.raises(ProviderConfigError, match="535"):
                bad.send_batch(edition, [fake_recipient(3)])
        finally:
            bad.close()
    assert [o.status for o in out] == ["sent", "sent"]
    assert len(server.handler.messages) == 2


def test_bad_credentials_stop_the_send_before_claiming(
    sessions: sessionmaker[Session], settings: Settings, provider_for: Any
) -> None:
    eid = make_edition(sessions, settings, ["A", "B"])
    auth = password_authenticator("mailer", "right")
    with aiosmtpd_server(authenticator=auth, auth_require_tls=False) as server:
        conf = smtp_settings(settings, server, username="mailer", smtp_password="wrong")
        with pytest.raises(ProviderConfigError, match="535"):
            runner.send_edition(
                sessions, settings=conf, edition_id=eid, provider=provider_for(conf)
            )
    _queued_untouched(sessions, eid)
    assert server.handler.messages == []


def test_implicit_tls(edition: PreparedEdition, base_settings: Settings, tls: Any) -> None:
    with aiosmtpd_server(ssl_context=tls.server_context()) as server:
        provider = _tls_provider(base_settings, server, tls, security="tls")
        try:
            out = provider.send_batch(edition, [fake_recipient(1)])
        finally:
            provider.close()
        untrusted = SMTPProvider.from_settings(smtp_settings(base_settings, server, security="tls"))
        try:
            with pytest.raises(ProviderConfigError, match="TLS with SMTP server"):
                untrusted.check()
        finally:
            untrusted.close()
    assert out[0].status == "sent" and len(server.handler.messages) == 1


# ----- load: Postfix smtp-sink -------------------------------------------------------


def test_two_thousand_messages_to_smtp_sink(
    edition: PreparedEdition, base_settings: Settings, provider_for: Any, tmp_path: Path
) -> None:
    why = smtp_sink_missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    recipients = [fake_recipient(i, name=f"Reader {i} Ünï") for i in range(2000)]
    with smtp_sink(tmp_path) as sink:
        provider = provider_for(smtp_settings(base_settings, sink, pool_size=4, verp=True))
        provider.check()
        out: list[Outcome] = []
        for start in range(0, len(recipients), provider.max_batch):
            out += provider.send_batch(edition, recipients[start : start + provider.max_batch])
        assert sink.messages() == 2000
    assert Counter(o.status for o in out) == {"sent": 2000}
    assert len({o.message_id for o in out}) == 2000
    assert [o.delivery_id for o in out] == list(range(2000))
