"""One edition, one recipient, three providers: the same message.

The outbox file, the message an SMTP server receives (aiosmtpd) and the SendGrid
request (with its substitutions applied as SendGrid applies them) carry the same
subject, text, HTML and headers; the outbox file and the SMTP message are the
same bytes (apart from the per-message Date and Message-ID). List-Unsubscribe is a
plain ``<https…>, <mailto…>`` value everywhere, never an RFC 2047 encoded-word.
"""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions
from newsletter.delivery import links, sender
from newsletter.delivery.message import ONE_CLICK, list_unsubscribe
from newsletter.delivery.personalise import Personaliser
from newsletter.delivery.providers.files import OutboxProvider
from newsletter.delivery.providers.sendgrid import SendGridProvider
from newsletter.delivery.providers.smtp import SMTPProvider
from newsletter.delivery.types import OutcomeStatus, PreparedEdition, Recipient
from tests import factories
from tests.conftest import CliRun
from tests.sendgrid_server import SendGridServer
from tests.smtp_servers import Recorder, aiosmtpd_server

HEADERS = ("From", "To", "Reply-To", "Subject", "List-Id", "List-Unsubscribe")
#: A name that needs escaping in HTML and encoding in a header.
NAME = 'Zoë "Z" O\'Brien & <Co>'


def _prepared(sessions: sessionmaker[Session], settings: Settings) -> PreparedEdition:
    with sessions.begin() as s:
        factories.story(s, title="Bridge reopens & traffic <returns>")
        factories.story(s)
        edition, _ = editions.build_edition(s, settings=settings, slug="daily-briefing")
        content = editions.freeze_content(s, edition=edition, settings=settings)
        return sender.prepare(settings, edition, content)


def _recipient(settings: Settings) -> Recipient:
    return links.recipient(
        settings,
        delivery_id=41,
        email="zoe@example.org",
        name=NAME,
        key="a" * 32,
        newsletter="daily-briefing",
    )


def _parse(data: bytes) -> EmailMessage:
    return message_from_bytes(data, policy=policy.default)


def _parts(msg: EmailMessage) -> tuple[str, str]:
    text, html = list(msg.iter_parts())
    return (
        str(text.get_content()).replace("\r\n", "\n"),
        str(html.get_content()).replace("\r\n", "\n"),
    )


def _without_date_and_id(data: bytes) -> bytes:
    return re.sub(rb"^(Date|Message-ID): [^\r\n]*\r\n", b"", data, flags=re.MULTILINE)


def test_outbox_smtp_and_sendgrid_carry_the_same_message(
    sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    prepared = _prepared(sessions, settings)
    who = _recipient(settings)
    expected_text = Personaliser(prepared.content).text(who.values)
    expected_html = Personaliser(prepared.content).html(who.values)

    outbox = OutboxProvider(tmp_path / "outbox")
    [sent] = outbox.send_batch(prepared, [who])
    assert sent.status is OutcomeStatus.SENT
    file_bytes = outbox.path_for(prepared, who).read_bytes()

    handler = Recorder()
    with aiosmtpd_server(handler) as server:
        smtp = SMTPProvider(host=server.host, port=server.port, timeout=5.0)
        try:
            [over_smtp] = smtp.send_batch(prepared, [who])
        finally:
            smtp.close()
    assert over_smtp.status is OutcomeStatus.SENT
    [received] = handler.messages
    smtp_bytes = received.data if isinstance(received.data, bytes) else received.data.encode()

    with SendGridServer() as sg:
        provider = SendGridProvider(sg.api_key, api_base_url=sg.url, timeout=5.0)
        [over_sendgrid] = provider.send_batch(prepared, [who])
        assert over_sendgrid.status is OutcomeStatus.SENT
        [(body, personalization)] = list(sg.personalizations())
        [(sg_text, sg_html)] = sg.rendered(who.email)

    # The outbox file is the SMTP message, byte for byte (Date and Message-ID are
    # per message; SMTP adds nothing else here: no DKIM configured).
    assert _without_date_and_id(file_bytes) == _without_date_and_id(
        smtp_bytes.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
    )
    for data in (file_bytes, smtp_bytes):
        msg = _parse(data)
        assert str(msg["Subject"]) == prepared.subject
        assert _parts(msg) == (expected_text, expected_html)
        raw = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
        found = re.search(r"List-Unsubscribe: [^\r\n]*(\r\n [^\r\n]*)?", raw)
        assert found and "=?" not in found.group(0)
        assert msg["List-Unsubscribe"] == list_unsubscribe(who)
        assert msg["List-Unsubscribe-Post"] == ONE_CLICK
        assert msg["List-Id"] == prepared.list_id
        assert msg["To"].addresses[0].display_name == NAME
    # SendGrid: the same subject, parts and headers once it applies the substitutions.
    assert body["subject"] == prepared.subject
    assert (sg_text, sg_html) == (expected_text, expected_html)
    assert personalization["headers"]["List-Unsubscribe"] == list_unsubscribe(who)
    assert body["headers"] == {"List-Id": prepared.list_id, "List-Unsubscribe-Post": ONE_CLICK}
    assert personalization["to"][0] == {"email": who.email, "name": NAME}
    assert body["from"] == {"email": prepared.from_address, "name": prepared.from_name}


def test_the_quick_start_outbox_has_plain_one_click_headers(
    run_cli: CliRun, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as s:
        factories.subscriber(s, "ann@example.org", name="Ann Lee")
        factories.story(s)
    run_cli("send", "--newsletter", "daily-briefing")
    [eml] = list(settings.outbox_path.rglob("*.eml"))
    data = eml.read_bytes()
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    line = re.search(r"^List-Unsubscribe: [^\r\n]*(\r\n [^\r\n]*)?", head, re.MULTILINE)
    assert line and "=?" not in line.group(0)
    assert re.fullmatch(
        r"List-Unsubscribe: <https://news\.example\.com/unsubscribe/[^>]+>,"
        r"(\r\n)? <mailto:unsubscribe@news\.example\.com\?subject=unsubscribe%20[^>]+>",
        line.group(0),
    )
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in head
