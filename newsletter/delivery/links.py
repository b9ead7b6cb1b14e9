"""Every URL a message or a page links to, with its signed token.

The senders (one unsubscribe/preferences token per recipient), the previews and
the web routes take their links from here, so a link in a mail and the route that
serves it agree on one shape:

- ``{base}/unsubscribe/<token>``: one-click unsubscribe (RFC 8058 POST) and its page;
- ``{base}/preferences/<token>``: the same token, for the preferences page;
- ``mailto:<unsubscribe address>?subject=unsubscribe%20<token>``;
- ``{base}/confirm/<token>``: a confirmation link (its own purpose, expiring);
- ``{base}/archive/<slug>/<YYYY-MM-DD>``: an edition's web version.

Tokens carry the subscriber's random key, never an id or an address.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import date
from urllib.parse import parse_qs, unquote, urlsplit

from newsletter import tokens, urls
from newsletter.config import Settings
from newsletter.content.types import RecipientValues
from newsletter.delivery.types import Recipient

#: The last part of preview links, where a token would be (see :func:`preview_values`).
PREVIEW_KEY = "preview"


@functools.lru_cache(maxsize=16)
def _links(
    secret: str, base_url: str, mailbox: str, newsletter: str
) -> Callable[[str], tuple[str, str, str]]:
    """Per-send constants, so each recipient costs one signature and three joins."""
    sign = tokens.signer(secret, "unsubscribe").sign
    suffix = f":{newsletter}"
    unsubscribe, preferences = base_url + urls.UNSUBSCRIBE, base_url + urls.PREFERENCES
    mailto = f"mailto:{mailbox}?subject=unsubscribe%20"

    def links(key: str) -> tuple[str, str, str]:
        token = sign(key + suffix).decode("ascii")
        # The token's alphabet is URL-safe but for ':' (see tokens.py).
        return unsubscribe + token, preferences + token, mailto + token.replace(":", "%3A")

    return links


def recipient(
    settings: Settings, *, delivery_id: int | None, email: str, name: str, key: str, newsletter: str
) -> Recipient:
    """A recipient with signed unsubscribe/preferences links (no raw id or address)."""
    unsubscribe_url, preferences_url, mailto = recipient_links(settings, newsletter)(key)
    return Recipient(delivery_id, email, name, unsubscribe_url, preferences_url, mailto)


def recipient_links(settings: Settings, newsletter: str) -> Callable[[str], tuple[str, str, str]]:
    """``key → (unsubscribe URL, preferences URL, mailto)`` for one newsletter, fast."""
    return _links(
        settings.signing_key,
        settings.site.base_url,
        settings.sender.unsubscribe_address,
        newsletter,
    )


def preview_values(settings: Settings) -> RecipientValues:
    """Values for previews: no name, links to the site's preview pages (no token)."""
    base = settings.site.base_url
    return RecipientValues(
        name="",
        unsubscribe_url=base + urls.UNSUBSCRIBE + PREVIEW_KEY,
        preferences_url=base + urls.PREFERENCES + PREVIEW_KEY,
    )


def confirm_url(settings: Settings, token: str) -> str:
    """The link in a confirmation email."""
    return settings.site.base_url + urls.CONFIRM + token


def archive_url(settings: Settings, newsletter: str, issue_date: date | None = None) -> str:
    """An edition's web version (or, without a date, the newsletter's archive)."""
    return urls.archive(settings.site.base_url, newsletter, issue_date)


def token_from(text: str) -> str:
    """The token in a raw token, an unsubscribe/preferences URL, a ``mailto:`` URL
    or an ``unsubscribe <token>`` subject line (the forms the sender writes)."""
    value = text.strip()
    if value.lower().startswith("mailto:"):
        value = parse_qs(urlsplit(value).query).get("subject", [""])[0]
    elif "://" in value:
        value = unquote(urlsplit(value).path.rstrip("/").rsplit("/", 1)[-1])
    words = value.split()
    return words[-1] if words else ""
