"""The bottom of the delivery wing: who a message goes to, and what became of it.

Named tuples, not dataclasses, where a million-recipient send makes a million of
them. Nothing here imports the renderer, the providers or the database.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from newsletter.content.types import RecipientValues, RenderedEdition


class OutcomeStatus(enum.StrEnum):
    """What a provider did with one recipient (see ``providers/base.py``)."""

    SENT = "sent"  # accepted by the mail system
    FAILED = "failed"  # not delivered, and more attempts will not help
    RETRY = "retry"  # not accepted, for a passing reason: try again later
    UNCERTAIN = "uncertain"  # may have been accepted: the answer was lost


@dataclass(frozen=True)
class PreparedEdition:
    """Everything about an edition a provider needs, computed once per send."""

    edition_id: int
    newsletter: str
    content: RenderedEdition
    from_name: str
    from_address: str
    reply_to: str | None
    list_id: str
    domain: str
    # A message to one person outside any list (a confirmation): no List-* headers.
    single: bool = False
    # Open and click tracking at providers that offer it (the newsletter's `tracking`).
    tracking: bool = True

    @property
    def subject(self) -> str:
        return self.content.subject


class Recipient(NamedTuple):
    """One addressee; ``delivery_id`` is None for a test copy outside the ledger."""

    delivery_id: int | None
    email: str
    name: str
    unsubscribe_url: str
    preferences_url: str
    unsubscribe_mailto: str

    @property
    def values(self) -> RecipientValues:
        """The raw values of this recipient's placeholders."""
        return RecipientValues(
            name=self.name,
            unsubscribe_url=self.unsubscribe_url,
            preferences_url=self.preferences_url,
        )


class Outcome(NamedTuple):
    """What the provider did with one recipient."""

    delivery_id: int | None
    status: OutcomeStatus
    message_id: str | None = None
    error: str | None = None
    retry_after: float | None = None


class Claimed(NamedTuple):
    """A delivery row handed to a sender by the ledger."""

    id: int
    email: str
    name: str
    subscriber_key: str
    attempts: int  # provider calls so far
    retry_until: datetime | None  # its retry window closes then
