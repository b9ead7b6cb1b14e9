"""RFC 5322 messages: the headers every newsletter email carries.

From, To, Subject, Date, Message-ID, List-Id, List-Unsubscribe (https URL and
mailto) and List-Unsubscribe-Post (RFC 8058 one-click), with a text/plain part
followed by a text/html part, UTF-8.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from newsletter.delivery.providers.base import PreparedEdition, Recipient
from newsletter.models import utcnow

ONE_CLICK = "List-Unsubscribe=One-Click"


def message_id(edition: PreparedEdition, recipient: Recipient) -> str:
    """A unique Message-ID naming the edition and delivery, e.g. <e12.d345.ab12@domain>."""
    who = f"d{recipient.delivery_id}" if recipient.delivery_id is not None else "test"
    return f"<e{edition.edition_id}.{who}.{secrets.token_hex(6)}@{edition.domain}>"


def list_unsubscribe(recipient: Recipient) -> str:
    """The List-Unsubscribe value: the one-click https URL first, then the mailto."""
    return f"<{recipient.unsubscribe_url}>, <{recipient.unsubscribe_mailto}>"


def build_message(
    edition: PreparedEdition, recipient: Recipient, *, when: datetime | None = None
) -> EmailMessage:
    """The complete personalised message for one recipient."""
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
    msg.set_content(edition.personaliser.text(values), charset="utf-8")
    msg.add_alternative(edition.personaliser.html(values), subtype="html", charset="utf-8")
    return msg
