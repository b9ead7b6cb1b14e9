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

``send_single`` sends one message outside the ledger (a confirmation; a
``PreparedEdition`` with ``single`` set carries no List-* headers) and returns its
Outcome; it raises ProviderConfigError like ``send_batch``.

``idempotent`` says that handing the same delivery over twice still yields one
message (the outbox names each file after its delivery). For such a provider a
batch left uncertain by a crash is simply sent again, whatever ``delivery.uncertain``
says, which makes delivery exactly-once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from newsletter.delivery.types import Outcome, OutcomeStatus, PreparedEdition, Recipient

__all__ = ["Outcome", "OutcomeStatus", "PreparedEdition", "Provider", "Recipient"]


class Provider(Protocol):
    """A mail system that accepts batches of recipients for one edition."""

    name: str
    max_batch: int
    idempotent: bool

    def check(self) -> None: ...

    def send_batch(
        self, edition: PreparedEdition, recipients: Sequence[Recipient]
    ) -> list[Outcome]: ...

    def send_single(self, message: PreparedEdition, recipient: Recipient) -> Outcome: ...

    def close(self) -> None: ...
