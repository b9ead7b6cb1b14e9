"""The naive per-recipient message, the baseline of send_bench.py and smtp_bench.py.

The package no longer builds an ``email.message`` per recipient (one
``newsletter.delivery.message.MessageTemplate`` encodes each edition once), so the
benchmarks keep the old way here: personalise both parts as text, then build an
``email.message.EmailMessage`` with the same headers the real message carries
and let the stdlib encode it. This is what ``newsletter/delivery/messages.py``'s
``build_message`` did up to 2026-11-24; the figures on docs/benchmarks.md measure
our send against it. Not a test, not used by the package.
"""

from __future__ import annotations

from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from newsletter.delivery.message import ONE_CLICK, list_unsubscribe, message_id
from newsletter.delivery.personalise import Personaliser
from newsletter.delivery.types import PreparedEdition, Recipient
from newsletter.models import utcnow


def build_message(
    edition: PreparedEdition,
    personaliser: Personaliser,
    recipient: Recipient,
    *,
    when: datetime | None = None,
) -> EmailMessage:
    """The complete personalised message for one recipient, the email.message way."""
    values = recipient.values
    msg = EmailMessage()
    msg["From"] = Address(edition.from_name, addr_spec=edition.from_address)
    msg["To"] = Address(recipient.name, addr_spec=recipient.email)
    if edition.reply_to:
        msg["Reply-To"] = edition.reply_to
    msg["Subject"] = edition.subject
    msg["Date"] = format_datetime(when or utcnow())
    msg["Message-ID"] = message_id(edition, recipient)
    msg["List-Id"] = edition.list_id
    msg["List-Unsubscribe"] = list_unsubscribe(recipient)
    msg["List-Unsubscribe-Post"] = ONE_CLICK
    msg.set_content(personaliser.text(values), charset="utf-8")
    msg.add_alternative(personaliser.html(values), subtype="html", charset="utf-8")
    return msg
