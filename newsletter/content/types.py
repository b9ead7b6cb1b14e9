"""What rendering takes and gives, and the per-recipient placeholders.

The content wing's vocabulary, free of Jinja2 and MJML so the wings above can use
it cheaply: the delivery wing fills the placeholders (``newsletter.delivery.
personalise``), the renderer (``newsletter.content.render``) writes them.

A rendered edition still carries three placeholders, one per per-recipient value;
each appears as it is in both parts, in text content or in a double-quoted
attribute, and nothing else in an edition can look like one (story text is made
inert when it is frozen).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from newsletter.config import Settings

NAME = "%%NAME%%"
UNSUBSCRIBE_URL = "%%UNSUBSCRIBE_URL%%"
PREFERENCES_URL = "%%PREFERENCES_URL%%"
PLACEHOLDERS = (NAME, UNSUBSCRIBE_URL, PREFERENCES_URL)
#: Who a reader without a (usable) name is greeted as.
DEFAULT_NAME = "there"


@dataclass(frozen=True, slots=True)
class StoryView:
    """One story as the templates see it; ``summary_html`` is already sanitised."""

    title: str
    url: str
    summary_html: str
    summary_text: str
    kicker: str
    source: str
    published_at: datetime | None


@dataclass(frozen=True, slots=True)
class EditionView:
    """A frozen edition: its newsletter, date and stories (the first is the lead)."""

    id: int | None
    newsletter_slug: str
    newsletter_name: str
    newsletter_description: str
    issue_date: date
    stories: tuple[StoryView, ...]


@dataclass(frozen=True, slots=True)
class Brand:
    """Who sends the newsletter: names, the legally required address, the site."""

    service_name: str
    from_name: str
    postal_address: str
    base_url: str
    reply_to: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Brand:
        """Build the brand from the service, sender and site settings."""
        return cls(
            service_name=settings.service.name,
            from_name=settings.sender.from_name,
            postal_address=settings.sender.postal_address,
            base_url=settings.site.base_url.rstrip("/"),
            reply_to=settings.sender.reply_to,
        )


@dataclass(frozen=True, slots=True)
class RenderedEdition:
    """Subject, HTML and text of an edition, placeholders still in place."""

    subject: str
    html: str
    text: str


@dataclass(frozen=True, slots=True)
class RecipientValues:
    """One subscriber's values for the placeholders (raw, unescaped)."""

    name: str
    unsubscribe_url: str
    preferences_url: str
