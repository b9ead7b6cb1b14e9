"""The provider contract.

A provider takes one edition (rendered once, with per-recipient placeholders) and a
batch of recipients, hands them to a mail system, and says what happened to each::

    provider.check()                                      # before anything is claimed
    outcomes = provider.send_batch(edition, recipients)   # one Outcome per recipient
    provider.close()

``check`` raises ProviderConfigError when the provider cannot work at all (missing
key, unreachable host, rejected credentials), so a send stops before it claims.
Providers may be called from several sender threads at once (delivery.concurrency).

``send_batch`` must not raise for per-recipient or transient trouble: it returns
``failed`` (permanent, with the reason) or ``retry`` (transient, optionally with a
``retry_after`` in seconds). It raises ProviderConfigError only when nothing can be
sent at all (missing key, bad credentials) so the send stops before more is claimed.
A recipient is reported ``sent`` only once the mail system accepted it; it raises
ProviderConfigError only before any part of the batch was accepted.

``idempotent`` says that handing the same delivery over twice still yields one
message (the outbox names each file after its delivery). For such a provider a
batch left uncertain by a crash is simply sent again, whatever ``delivery.uncertain``
says, which makes delivery exactly-once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from newsletter.content.render import Personaliser, RecipientValues, RenderedEdition


@dataclass(frozen=True)
class PreparedEdition:
    """Everything about an edition a provider needs, computed once per send."""

    edition_id: int
    newsletter: str
    content: RenderedEdition
    personaliser: Personaliser
    from_name: str
    from_address: str
    reply_to: str | None
    list_id: str
    domain: str

    @property
    def subject(self) -> str:
        return self.content.subject


class Recipient(NamedTuple):
    """One addressee; ``delivery_id`` is None for a test copy outside the ledger.

    Tuples, not dataclasses: a million-recipient send creates a million of each.
    """

    delivery_id: int | None
    email: str
    name: str
    unsubscribe_url: str
    preferences_url: str
    unsubscribe_mailto: str

    @property
    def values(self) -> RecipientValues:
        return RecipientValues(
            name=self.name,
            unsubscribe_url=self.unsubscribe_url,
            preferences_url=self.preferences_url,
        )


class Outcome(NamedTuple):
    """What the provider did with one recipient."""

    delivery_id: int | None
    status: Literal["sent", "failed", "retry"]
    message_id: str | None = None
    error: str | None = None
    retry_after: float | None = None


class Provider(Protocol):
    """A mail system that accepts batches of recipients for one edition."""

    name: str
    max_batch: int
    idempotent: bool

    def check(self) -> None: ...

    def send_batch(
        self, edition: PreparedEdition, recipients: Sequence[Recipient]
    ) -> list[Outcome]: ...

    def close(self) -> None: ...
