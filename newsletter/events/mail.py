"""Mail that comes back: bounce reports to the VERP return path, and messages to the
List-Unsubscribe ``mailto:`` address.

A message is read from a Maildir or an mbox (``newsletter events read-mail``) or
received by the small SMTP listener (``newsletter events listen``). It is:

- an unsubscribe request when it is addressed to the unsubscribe mailbox and its
  subject holds a signed token (the ``mailto:`` link's ``unsubscribe <token>``);
- a bounce when flufl.bounce (Mailman's detectors: RFC 3464 DSNs and the many
  non-standard reports real servers send) finds failed addresses in it. It maps to
  its delivery through the VERP return path (``bounces+<delivery id>@domain``) it
  came back to, or else through the failed address; permanent failures suppress,
  temporary ones count as soft bounces.
"""

from __future__ import annotations

import email
import hashlib
import mailbox
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses
from pathlib import Path

from flufl.bounce import all_failures
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.audience.subscribers import unsubscribe_by_token
from newsletter.config import Settings
from newsletter.delivery.links import token_from
from newsletter.delivery.providers.smtp import delivery_id_from_verp
from newsletter.errors import InputError
from newsletter.events.ingest import Event, IngestReport, Kind, ingest
from newsletter.models import Delivery, utcnow

#: Headers that name the address a message was delivered to (the envelope recipient).
RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
MAX_MESSAGE_BYTES = 10 * 1024 * 1024


@dataclass
class MailReport:
    """What reading a batch of mail did."""

    messages: int = 0
    bounces: int = 0
    unsubscribes: int = 0
    unreadable: int = 0
    ignored: int = 0  # neither a bounce nor an unsubscribe request
    events: IngestReport = field(default_factory=IngestReport)


def _recipients(msg: Message) -> list[str]:
    values = [str(v) for h in RECIPIENT_HEADERS for v in msg.get_all(h, [])]
    return [addr.lower() for _, addr in getaddresses(values) if addr]


def _message_key(raw: bytes) -> str:
    return "mail:" + hashlib.sha256(raw).hexdigest()[:40]


def classify(
    session: Session, settings: Settings, raw: bytes, *, envelope_to: list[str] | None = None
) -> tuple[str, list[Event]]:
    """What one message is (``bounce``, ``unsubscribe``, ``other``) and its events.

    An unsubscribe request is acted on here (it needs no event to suppress).
    """
    msg = email.message_from_bytes(raw, policy=compat32)
    to = [a.lower() for a in envelope_to or []] + _recipients(msg)
    mailbox_address = settings.sender.unsubscribe_address.lower()
    if mailbox_address in to:
        token = token_from(_subject(msg))
        if token:
            try:
                unsubscribe_by_token(session, token=token, settings=settings, via="mailto")
            except InputError:
                return "other", []
            return "unsubscribe", []
    temporary, permanent = all_failures(msg)
    failed = {
        a.decode("ascii", "replace").lower() if isinstance(a, bytes) else str(a).lower()
        for a in (*permanent, *temporary)
    }
    hard = {
        a.decode("ascii", "replace").lower() if isinstance(a, bytes) else str(a).lower()
        for a in permanent
    }
    if not failed:
        return "other", []
    verp = next((d for d in (delivery_id_from_verp(a) for a in to) if d is not None), None)
    row = session.get(Delivery, verp) if verp is not None else None
    key = _message_key(raw)
    events: list[Event] = []
    if row is not None:
        kind = (
            Kind.BOUNCE
            if (row.email.lower() in hard or (hard and not temporary))
            else (Kind.BLOCKED)
        )
        events.append(
            Event(kind=kind, source="mail", delivery_id=row.id, email=row.email, event_id=key,
                  reason=_why(msg))
        )  # fmt: skip
        return "bounce", events
    for i, address in enumerate(sorted(failed)):
        found = session.scalars(
            select(Delivery.id).where(Delivery.email == address).order_by(Delivery.id.desc())
        ).first()
        events.append(
            Event(
                kind=Kind.BOUNCE if address in hard else Kind.BLOCKED,
                source="mail",
                delivery_id=found,
                email=address,
                event_id=f"{key}:{i}",
                reason=_why(msg),
            )
        )
    return "bounce", events


def _subject(msg: Message) -> str:
    """The decoded subject (a long ``unsubscribe <token>`` line is often an encoded word)."""
    try:
        return str(make_header(decode_header(str(msg.get("Subject", "")))))
    except (ValueError, LookupError, UnicodeError):
        return str(msg.get("Subject", ""))


def _why(msg: Message) -> str:
    """The status line of a report, for the suppression's reason (best effort)."""
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            blocks = payload if isinstance(payload, list) else []
            for block in blocks:
                if not isinstance(block, Message):
                    continue
                diagnostic = block.get("Diagnostic-Code") or block.get("Status")
                if diagnostic:
                    return " ".join(str(diagnostic).split())[:300]
    subject = " ".join(str(msg.get("Subject", "bounce")).split())
    return subject[:300]


def handle(
    session: Session,
    settings: Settings,
    raw: bytes,
    report: MailReport,
    *,
    envelope_to: list[str] | None = None,
) -> None:
    """Classify one message and ingest its events (the caller commits)."""
    report.messages += 1
    if len(raw) > MAX_MESSAGE_BYTES:
        report.unreadable += 1
        return
    try:
        what, events = classify(session, settings, raw, envelope_to=envelope_to)
    except (ValueError, LookupError, UnicodeError):
        report.unreadable += 1
        return
    if what == "unsubscribe":
        report.unsubscribes += 1
    elif what == "bounce":
        report.bounces += 1
        done = ingest(session, settings=settings, events=events, now=utcnow())
        for name, value in done.as_dict().items():
            setattr(report.events, name, getattr(report.events, name) + value)
    else:
        report.ignored += 1


def messages(path: Path) -> Iterator[bytes]:
    """Every message in a Maildir (a folder with cur/ and new/) or an mbox file.

    Raises InputError for a path that is neither.
    """
    if path.is_dir():
        if not (path / "new").is_dir() and not (path / "cur").is_dir():
            raise InputError(f"{path} is not a Maildir (no cur/ or new/)", code="mail.not_found")
        box: mailbox.Mailbox[mailbox.MaildirMessage] | mailbox.mbox = mailbox.Maildir(
            path, create=False
        )
    elif path.is_file():
        box = mailbox.mbox(path, create=False)
    else:
        raise InputError(f"no Maildir or mbox at {path}", code="mail.not_found")
    try:
        for key in box.iterkeys():
            with box.get_file(key) as fh:
                yield fh.read(MAX_MESSAGE_BYTES + 1)
    finally:
        box.close()
