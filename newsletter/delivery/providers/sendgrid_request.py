"""The pure part of the `sendgrid` provider: building and checking v3 Mail Send bodies.

Each request carries the edition once (subject, text/plain then text/html content,
placeholders left in, ``categories`` = [newsletter slug], top-level List-Id and
List-Unsubscribe-Post headers) and one personalization per recipient: ``to`` (that
recipient only), ``substitutions`` (placeholder → value), ``custom_args``
(``delivery_id``/``edition_id`` as strings, so webhook events map back to the
ledger) and the recipient's own List-Unsubscribe header.

Escaping: SendGrid applies a personalization's substitutions to every part alike.
The name is the one value people type, so the HTML part gets its own placeholder
(``%%NAME_HTML%%``, rewritten once per edition) with the HTML-escaped name, and the
text part keeps ``%%NAME%%`` with the name as typed (O'Brien stays O'Brien in text).
The two URLs share one placeholder: our links (the site's base URL, which may hold
none of & < > " ', plus a URL-safe token) read the same escaped or not, and a
recipient whose links would not is refused rather than shown an entity in text.
Every value comes from :mod:`newsletter.delivery.personalise`.
A ``to`` name with , or ; is sent as a quoted string (SendGrid drops it otherwise).

Speed: the constant part of the body is serialised once per edition and each
personalization is written as JSON text directly, escaping only batches that need
it: ~1 ms per 1000 recipients, a quarter of ``json.dumps`` alone. So no dicts are
built per recipient: :func:`validate_request` (SendGrid's limits for a body dict)
runs on each edition's envelope, :func:`build_request` enforces the per-recipient
limits as it writes, and ``verify=True`` (the tests) re-checks every posted body.

No network here: :mod:`newsletter.providers.sendgrid` posts what this builds and
maps the answers (:func:`retry_after` reads their rate-limit headers).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from json.encoder import encode_basestring as _json_str  # C-accelerated, no ASCII escaping
from typing import Any

from newsletter.content.types import NAME, PREFERENCES_URL, UNSUBSCRIBE_URL
from newsletter.delivery.message import ONE_CLICK, list_unsubscribe
from newsletter.delivery.personalise import display_name, html_values, text_values
from newsletter.delivery.types import Outcome, OutcomeStatus, PreparedEdition, Recipient
from newsletter.errors import ProviderConfigError

MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_SUBSTITUTIONS_BYTES = 10_000
MAX_CATEGORIES = 10
MAX_SEND_AT_AHEAD = 72 * 3600
NAME_HTML = "%%NAME_HTML%%"


# ----- limits ------------------------------------------------------------------


def _bytes(mapping: Mapping[str, Any]) -> int:
    return sum(len(str(k).encode()) + len(str(v).encode()) for k, v in mapping.items())


def _strings(where: str, mapping: object) -> list[str]:
    if not isinstance(mapping, Mapping):
        return [f"{where} must be an object"]
    bad = [k for k, v in mapping.items() if not isinstance(v, str)]
    return [f"{where}.{k} must be a string" for k in bad]


def validate_request(body: Mapping[str, Any], *, now: float | None = None) -> list[str]:
    """The SendGrid limits a v3 Mail Send body breaks (an empty list means none).

    Covers what SendGrid's OpenAPI schema does not: 1-1000 personalizations, at most
    1000 recipients in all, no duplicate recipient in one request, every
    personalization with a ``to``, string-valued custom_args of at most 10,000 bytes
    (top-level and personalization merged), substitutions of at most 10,000 bytes,
    ``send_at`` no more than 72 h ahead, not both ``reply_to`` and ``reply_to_list``,
    ``content`` (text/plain before text/html) or ``template_id``, a subject, at most
    10 unique categories, and recipient names with , or ; quoted (SendGrid accepts
    those unquoted, then drops the message).
    """
    now = time.time() if now is None else now
    problems: list[str] = []
    top_args = body.get("custom_args") or {}
    problems += _strings("custom_args", top_args)
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        problems.append("personalizations: at least one is required")
        personalizations = []
    elif len(personalizations) > MAX_PERSONALIZATIONS:
        problems.append(
            f"personalizations: {len(personalizations)}, over the limit of {MAX_PERSONALIZATIONS}"
        )
    seen: dict[str, str] = {}
    recipients = 0
    for i, p in enumerate(personalizations):
        where = f"personalizations.{i}"
        if not p.get("to"):
            problems.append(f"{where}.to: at least one recipient is required")
        for kind in ("to", "cc", "bcc"):
            for j, addr in enumerate(p.get(kind) or ()):
                recipients += 1
                name = str(addr.get("name") or "")
                if ("," in name or ";" in name) and not (name[0] == name[-1] == '"'):
                    problems.append(
                        f"{where}.{kind}.{j}.name: a name with , or ; must be in double quotes"
                    )
                email = str(addr.get("email", "")).lower()
                if email in seen:
                    problems.append(
                        f"{where}.{kind}.{j}.email: duplicate recipient {addr.get('email')} "
                        f"(also in {seen[email]})"
                    )
                else:
                    seen[email] = f"{where}.{kind}.{j}"
        args = p.get("custom_args") or {}
        problems += _strings(f"{where}.custom_args", args)
        if isinstance(args, Mapping) and isinstance(top_args, Mapping):
            size = _bytes({**top_args, **args})
            if size > MAX_CUSTOM_ARGS_BYTES:
                problems.append(f"{where}.custom_args: {size} bytes, over the 10,000-byte limit")
        subs = p.get("substitutions") or {}
        problems += _strings(f"{where}.substitutions", subs)
        if isinstance(subs, Mapping) and (size := _bytes(subs)) > MAX_SUBSTITUTIONS_BYTES:
            problems.append(f"{where}.substitutions: {size} bytes, over the 10,000-byte limit")
        problems += _send_at(f"{where}.send_at", p.get("send_at"), now)
        if not body.get("subject") and not p.get("subject") and not body.get("template_id"):
            problems.append(f"{where}.subject: a subject is required")
    if recipients > MAX_RECIPIENTS:
        problems.append(f"recipients: {recipients}, over the limit of {MAX_RECIPIENTS}")
    problems += _send_at("send_at", body.get("send_at"), now)
    if body.get("reply_to") and body.get("reply_to_list"):
        problems.append("reply_to and reply_to_list cannot both be set")
    problems += _content(body)
    categories = body.get("categories") or []
    if len(categories) > MAX_CATEGORIES or len(set(categories)) != len(categories):
        problems.append(f"categories: at most {MAX_CATEGORIES}, each once")
    return problems


def _send_at(where: str, value: object, now: float) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, int) or isinstance(value, bool):
        return [f"{where}: must be a Unix timestamp (integer)"]
    if value > now + MAX_SEND_AT_AHEAD:
        return [f"{where}: more than 72 hours ahead"]
    return []


def _content(body: Mapping[str, Any]) -> list[str]:
    content = body.get("content") or []
    if not content and not body.get("template_id"):
        return ["content: neither content nor template_id is set"]
    types = [str(c.get("type", "")).lower() for c in content]
    problems = [f"content.{i}.value: empty" for i, c in enumerate(content) if not c.get("value")]
    if "text/plain" in types and types.index("text/plain") != 0:
        problems.append("content: text/plain must come first")
    if "text/html" in types and "text/plain" in types[types.index("text/html") :]:
        problems.append("content: text/html must follow text/plain")
    return problems


# ----- building requests -------------------------------------------------------


class _Payload(bytes):
    """Request bytes that format as their size in logs.

    python_http_client formats every payload into a DEBUG line whether or not debug
    logging is on (about 1 ms per 1000-recipient request), and the payload holds
    subscribers' addresses and unsubscribe tokens.
    """

    def __format__(self, spec: str) -> str:
        return f"<{len(self)} bytes of JSON>"

    def __str__(self) -> str:
        return self.__format__("")


class _Body(str):
    """A body python_http_client posts as it is.

    With a Content-Type other than exactly ``application/json`` the package sends
    ``body.encode("utf-8")`` instead of ``json.dumps(body)``; this str answers that
    call with the bytes already built.
    """

    payload: _Payload

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.payload


def posted_body(body: bytes) -> str:
    """``body`` as python_http_client's ``request_body``: posted as is, logged as its size."""
    wrapped = _Body()
    wrapped.payload = _Payload(body)
    return wrapped


def _envelope(edition: PreparedEdition) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": {"email": edition.from_address, "name": edition.from_name}
        if edition.from_name
        else {"email": edition.from_address},
        "subject": edition.subject,
        "content": [
            {"type": "text/plain", "value": edition.content.text},
            {"type": "text/html", "value": edition.content.html.replace(NAME, NAME_HTML)},
        ],
        "categories": [edition.newsletter],
        "headers": {"List-Id": edition.list_id, "List-Unsubscribe-Post": ONE_CLICK},
    }
    if edition.single:
        del body["headers"]
    if not edition.tracking or edition.single:
        # The newsletter's privacy switch: no tracking pixel, links left as they are.
        body["tracking_settings"] = {
            "click_tracking": {"enable": False, "enable_text": False},
            "open_tracking": {"enable": False},
        }
    if edition.reply_to:
        body["reply_to"] = {"email": edition.reply_to}
    return body


@functools.lru_cache(maxsize=8)
def _prefix(edition: PreparedEdition) -> bytes:
    """The body up to the personalizations list, serialised once per edition.

    Raises ProviderConfigError when the edition itself breaks SendGrid's limits.
    """
    envelope = _envelope(edition)
    args = {"edition_id": str(edition.edition_id), "delivery_id": str(10**12)}
    sample = {"to": [{"email": edition.from_address}], "custom_args": args}
    problems = validate_request({**envelope, "personalizations": [sample]})
    if problems:
        raise ProviderConfigError(
            f"edition {edition.edition_id} cannot be sent through SendGrid: " + "; ".join(problems)
        )
    text = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
    return (text[:-1] + ',"personalizations":[').encode()


# Characters that need JSON or HTML escaping; a batch without any skips the escaping.
_UNPLAIN = (*map(chr, range(0x20)), "\x7f", '"', "\\", "&", "<", ">", "'")
_LONG = 900  # chars; below this the substitutions cannot reach 10,000 bytes


_UNPLAIN_NAMES = (*_UNPLAIN, ",", ";")


def _plain(strings: list[str], unsafe: tuple[str, ...] = _UNPLAIN) -> bool:
    """True when no string needs escaping (one memchr pass per character: ~0.1 ms)."""
    blob = "".join(strings)
    return not any(c in blob for c in unsafe)


def _to_name(name: str) -> str:
    """A ``to`` name SendGrid keeps whole: one with , or ; must be a quoted string.

    SendGrid accepts an unquoted "Smith, John" with 202 and then drops the message,
    reading "Smith" as an address.
    """
    if "," in name or ";" in name:
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def build_request(
    edition: PreparedEdition, recipients: Sequence[Recipient]
) -> tuple[bytes, list[Recipient], list[Outcome]]:
    """Serialise one Mail Send body for up to 1000 recipients.

    Returns ``(body, included, rejected)``: ``included`` lists the recipients in
    personalization order; ``rejected`` holds a ``failed`` outcome for each recipient
    that cannot go in the request (a repeated address, substitutions over 10,000
    bytes). Raises ValueError for more than 1000 recipients and ProviderConfigError
    when the edition itself is invalid.
    """
    if len(recipients) > MAX_PERSONALIZATIONS:
        raise ValueError(f"{len(recipients)} recipients: at most {MAX_PERSONALIZATIONS}")
    prefix = _prefix(edition)
    # Addresses and links are machine-made and almost never need escaping: when a
    # whole batch is plain, write them as they are (the costly part is the calls).
    links_plain = _plain(
        [
            s
            for r in recipients
            for s in (r.email, r.unsubscribe_url, r.preferences_url, r.unsubscribe_mailto)
        ]
    )
    names_plain = _plain([r.name for r in recipients], _UNPLAIN_NAMES)
    js = _json_str
    edition_js = f'"{edition.edition_id}"'
    single = edition.single
    parts: list[str] = []
    included: list[Recipient] = []
    rejected: list[Outcome] = []
    seen: dict[str, int | None] = {}
    for r in recipients:
        key = r.email.lower()
        if key in seen:
            error = f"same address as delivery {seen[key]} in one request; not sent twice"
            rejected.append(Outcome(r.delivery_id, OutcomeStatus.FAILED, error=error))
            continue
        seen[key] = r.delivery_id
        if names_plain and links_plain:
            # Nothing to escape: the engine's text and HTML values are the same.
            shown, unsub, prefs = display_name(r.name), r.unsubscribe_url, r.preferences_url
            shown_html = shown
        else:
            shown, unsub, prefs = text_values(r.values)
            shown_html, unsub_html, prefs_html = html_values(r.values)
            if (unsub_html, prefs_html) != (unsub, prefs):
                # One substitution serves both parts, so a link must read the same.
                error = "unsubscribe or preferences link needs HTML escaping"
                rejected.append(Outcome(r.delivery_id, OutcomeStatus.FAILED, error=error))
                continue
        if names_plain:
            shown_js = shown_html_js = to_js = f'"{shown}"'
        else:
            shown_js = js(shown)
            shown_html_js = shown_js if shown_html == shown else js(shown_html)
            to_name = _to_name(shown)
            to_js = shown_js if to_name == shown else js(to_name)
        if len(shown) + len(unsub) + len(prefs) > _LONG:
            subs = {
                NAME: shown,
                NAME_HTML: shown_html,
                UNSUBSCRIBE_URL: unsub,
                PREFERENCES_URL: prefs,
            }
            if (size := _bytes(subs)) > MAX_SUBSTITUTIONS_BYTES:
                error = f"substitutions are {size} bytes, over SendGrid's 10,000-byte limit"
                rejected.append(Outcome(r.delivery_id, OutcomeStatus.FAILED, error=error))
                continue
        # No "name" when it is blank (the greeting still says "there").
        to_name = f',"name":{to_js}' if r.name and not r.name.isspace() else ""
        delivery = "" if r.delivery_id is None else f',"delivery_id":"{r.delivery_id}"'
        if links_plain:
            header = "" if single else f',"headers":{{"List-Unsubscribe":"{list_unsubscribe(r)}"}}'
            parts.append(
                f'{{"to":[{{"email":"{r.email}"{to_name}}}],'
                f'"substitutions":{{"{NAME}":{shown_js},"{NAME_HTML}":{shown_html_js},'
                f'"{UNSUBSCRIBE_URL}":"{unsub}","{PREFERENCES_URL}":"{prefs}"}},'
                f'"custom_args":{{"edition_id":{edition_js}{delivery}}}{header}}}'
            )
        else:
            header = (
                "" if single else f',"headers":{{"List-Unsubscribe":{js(list_unsubscribe(r))}}}'
            )
            parts.append(
                f'{{"to":[{{"email":{js(r.email)}{to_name}}}],'
                f'"substitutions":{{"{NAME}":{shown_js},"{NAME_HTML}":{shown_html_js},'
                f'"{UNSUBSCRIBE_URL}":{js(unsub)},"{PREFERENCES_URL}":{js(prefs)}}},'
                f'"custom_args":{{"edition_id":{edition_js}{delivery}}}{header}}}'
            )
        included.append(r)
    # "replace": a lone surrogate (broken input) becomes "?" rather than an exception.
    body = b"".join((prefix, ",".join(parts).encode("utf-8", "replace"), b"]}"))
    return body, included, rejected


# ----- reading answers ---------------------------------------------------------


def retry_after(headers: Mapping[str, str] | None, *, now: float) -> float | None:
    """Seconds to wait from Retry-After (seconds or HTTP date) or X-RateLimit-Reset (epoch)."""
    if not headers:
        return None
    delay: float | None = None
    if value := headers.get("Retry-After"):
        try:
            delay = float(value) if value.strip().isdigit() else _epoch(value) - now
        except (TypeError, ValueError):
            pass
    if delay is None and (reset := headers.get("X-RateLimit-Reset")):
        try:
            delay = float(reset) - now
        except ValueError:
            pass
    return None if delay is None else min(max(delay, 0.0), 86_400.0)


def _epoch(http_date: str) -> float:
    return parsedate_to_datetime(http_date).timestamp()
