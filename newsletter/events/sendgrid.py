"""SendGrid's Signed Event Webhook: verify a POST, then read its events.

The signature is ECDSA P-256 over the timestamp header followed by the raw body
bytes, checked with the ``sendgrid`` package's EventWebhook helper against the
public key in NEWSLETTER_SENDGRID_WEBHOOK_KEY, before anything is parsed. A
missing or bad signature, or a timestamp outside ``events.max_age_seconds``, is
refused (the web face answers 403) and changes nothing.

Events arrive late, out of order and more than once: each carries ``sg_event_id``
(it is stored once), ``sg_message_id`` (it starts with the X-Message-Id the send
stored) and our custom args as top-level keys (``delivery_id``, ``edition_id``).
"""

from __future__ import annotations

import binascii
import json
import time
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from sendgrid.helpers.eventwebhook import EventWebhook

from newsletter.config import Settings
from newsletter.errors import InputError
from newsletter.events.ingest import Event, Kind

SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_EVENTS = 100_000


class Refused(InputError):
    """The webhook request is not SendGrid's (or is too old): nothing was read."""

    code = "webhook.refused"


def verify(
    settings: Settings,
    *,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    now: float | None = None,
) -> None:
    """Raise Refused unless ``body`` is signed by SendGrid's key, recently."""
    key = settings.sendgrid_webhook_key
    if key is None or not key.get_secret_value().strip():
        raise Refused("NEWSLETTER_SENDGRID_WEBHOOK_KEY is not set", code="webhook.no_key")
    if not signature or not timestamp:
        raise Refused("the request is not signed")
    try:
        sent = int(timestamp)
    except ValueError:
        raise Refused("the signature's timestamp is not a number") from None
    now = time.time() if now is None else now
    if abs(now - sent) > settings.events.max_age_seconds:
        raise Refused("the signature's timestamp is outside the replay window")
    try:
        text = body.decode("utf-8")
        verifier = EventWebhook(_pem_body(key.get_secret_value()))
        valid = verifier.verify_signature(text, signature, timestamp)
    except (UnicodeDecodeError, binascii.Error, ValueError, TypeError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise Refused("the signature does not match")


def _pem_body(key: str) -> str:
    """The base64 of the key, as the helper wants it (a full PEM is accepted too)."""
    lines = [line.strip() for line in key.strip().splitlines()]
    return "".join(line for line in lines if line and not line.startswith("-----"))


def _kind(raw: dict[str, Any]) -> Kind | None:
    name = str(raw.get("event", ""))
    if name == "bounce" and str(raw.get("type", "bounce")) == "blocked":
        return Kind.BLOCKED
    return _KINDS.get(name)


#: Kind by name, looked up once per event (an enum call costs more than the rest).
_KINDS = {kind.value: kind for kind in Kind}


def _int(value: Any) -> int | None:
    text = str(value) if value is not None else ""
    return int(text) if text.isdigit() and len(text) < 19 else None


def parse(body: bytes) -> list[Event]:
    """The events of a verified body; InputError when it is not a JSON array of them.

    Event types we do not know are skipped; fields may be missing.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InputError("the body is not JSON", code="webhook.bad_body") from None
    if not isinstance(data, list) or len(data) > MAX_EVENTS:
        raise InputError("the body is not a list of events", code="webhook.bad_body")
    events: list[Event] = []
    for raw in data:
        if not isinstance(raw, dict):
            continue
        kind = _kind(raw)
        if kind is None:
            continue
        stamp = raw.get("timestamp")
        when = (
            datetime.fromtimestamp(stamp, UTC)
            if isinstance(stamp, int | float) and 0 < stamp < 1e11
            else None
        )
        category = raw.get("category")
        categories = category if isinstance(category, list) else [category] if category else []
        reason = raw.get("reason") or raw.get("response") or raw.get("status")
        events.append(
            Event(
                kind=kind,
                source="sendgrid",
                delivery_id=_int(raw.get("delivery_id")),
                message_id=str(raw["sg_message_id"]) if raw.get("sg_message_id") else None,
                email=str(raw["email"])[:320] if raw.get("email") else None,
                event_id=str(raw["sg_event_id"])[:100] if raw.get("sg_event_id") else None,
                occurred_at=when,
                url=str(raw["url"])[:2000] if kind is Kind.CLICK and raw.get("url") else None,
                reason=str(reason)[:1000] if reason else None,
                newsletter=str(categories[0]) if categories else None,
                detail={k: raw[k] for k in ("type", "status", "ip", "asm_group_id") if k in raw},
            )
        )
    return events
