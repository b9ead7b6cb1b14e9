"""A provider driven by a handler: a real implementation of the contract for tests.

Like httpx's ``MockTransport``, it is a first-class provider, not a mock: the
sender cannot tell it from another, and it keeps what it was handed. A handler
takes the edition and a batch and returns one Outcome per recipient (or raises,
as a real provider may raise ProviderConfigError)::

    provider = ScriptedProvider()                          # every recipient accepted
    provider = ScriptedProvider(script(["ok", "retry"]))   # per call, then "ok"
    provider = ScriptedProvider(lambda edition, batch: [...])

``copies`` counts, per address, the messages that were accepted (``sent``), so a
test can assert that nobody got an edition twice.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from newsletter.delivery.types import Outcome, OutcomeStatus, PreparedEdition, Recipient
from newsletter.errors import ProviderConfigError

Handler = Callable[[PreparedEdition, Sequence[Recipient]], list[Outcome]]


def accept(edition: PreparedEdition, recipients: Sequence[Recipient]) -> list[Outcome]:
    """The default handler: every recipient accepted, each with its own message id."""
    return [
        Outcome(r.delivery_id, OutcomeStatus.SENT, message_id=f"<e{edition.edition_id}.{i}>")
        for i, r in enumerate(recipients)
    ]


#: What each word of a :func:`script` does to a whole batch.
_ACTIONS = {
    "ok": OutcomeStatus.SENT,
    "retry": OutcomeStatus.RETRY,
    "fail": OutcomeStatus.FAILED,
    "uncertain": OutcomeStatus.UNCERTAIN,
}


def script(actions: Iterable[str], *, then: str = "ok") -> Handler:
    """A handler that answers call N with ``actions[N]`` for the whole batch.

    Words: ``ok``, ``retry``, ``fail``, ``uncertain`` or ``config`` (raise
    ProviderConfigError); after the list, every call is ``then``.
    """
    queue = list(actions)
    lock = threading.Lock()

    def handler(edition: PreparedEdition, recipients: Sequence[Recipient]) -> list[Outcome]:
        with lock:
            action = queue.pop(0) if queue else then
        if action == "config":
            raise ProviderConfigError("scripted: the provider refused the credentials")
        status = _ACTIONS[action]
        if status is OutcomeStatus.SENT:
            return accept(edition, recipients)
        return [Outcome(r.delivery_id, status, error=f"scripted {action}") for r in recipients]

    return handler


class ScriptedProvider:
    """A provider whose answers come from ``handler`` (see the module docstring)."""

    def __init__(
        self,
        handler: Handler = accept,
        *,
        name: str = "scripted",
        max_batch: int = 1000,
        idempotent: bool = False,
        check: Callable[[], None] | None = None,
    ) -> None:
        self.handler = handler
        self.name, self.max_batch, self.idempotent = name, max_batch, idempotent
        self._check = check
        self.calls: list[list[Recipient]] = []
        self.singles: list[tuple[PreparedEdition, Recipient]] = []
        self.copies: Counter[str] = Counter()
        self.closed = False
        self._lock = threading.Lock()

    def check(self) -> None:
        """Run the check hook, if any (it may raise ProviderConfigError)."""
        if self._check is not None:
            self._check()

    def send_batch(
        self, edition: PreparedEdition, recipients: Sequence[Recipient]
    ) -> list[Outcome]:
        """Record the batch, ask the handler, count what was accepted."""
        with self._lock:
            self.calls.append(list(recipients))
        outcomes = self.handler(edition, recipients)
        emails = {r.delivery_id: r.email for r in recipients}
        with self._lock:
            self.copies.update(
                emails[o.delivery_id] for o in outcomes if o.status is OutcomeStatus.SENT
            )
        return outcomes

    def send_single(self, message: PreparedEdition, recipient: Recipient) -> Outcome:
        """A batch of one through the handler; kept in ``singles`` too."""
        with self._lock:
            self.singles.append((message, recipient))
        [outcome] = self.send_batch(message, [recipient])
        return outcome

    def close(self) -> None:
        """Nothing to release; remembered so tests can check it was called."""
        self.closed = True
