"""The shape of every public URL, in one place, so a link in a mail and the route that
serves it agree. Paths only; the signed tokens are the delivery wing's (links.py)."""

from __future__ import annotations

from datetime import date

UNSUBSCRIBE = "/unsubscribe/"
PREFERENCES = "/preferences/"
CONFIRM = "/confirm/"
ARCHIVE = "/archive"


def archive(base_url: str, newsletter: str | None = None, issue_date: date | None = None) -> str:
    """The archive (of a newsletter, or one edition's web version), absolute."""
    url = base_url.rstrip("/") + ARCHIVE
    if newsletter:
        url += f"/{newsletter}"
        if issue_date:
            url += f"/{issue_date.isoformat()}"
    return url


def feed(base_url: str, newsletter: str) -> str:
    """A newsletter's Atom feed of its editions."""
    return archive(base_url, newsletter) + "/feed.xml"
