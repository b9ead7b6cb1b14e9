"""The delivery ledger: the only writer of delivery state.

The ledger is the truth about who got what. One ``deliveries`` row exists per
(edition, subscriber), UNIQUE in the database, created before anything is sent.
Rows move queued → sending (claimed by a runner, with a batch id and a lease) →
sent (accepted) | failed (``failure`` says why) | retry (not before T, while its
retry window is open) | uncertain (may have been accepted) | cancelled, and after
sent on to what the provider reports (delivered, deferred, bounced, complained).
Every move is a bulk statement whose WHERE clause comes from the transition table
(``models.DELIVERY_TRANSITIONS``, via :func:`may_become`), never a bare status.

``attempts`` counts provider calls, not claims: a claim by a runner that died
costs nobody an attempt. A runner that dies while the provider holds its batch
leaves it ``sending``; :func:`recover` marks it ``uncertain`` as soon as the
runner is known to be gone (or its lease ran out), and ``delivery.uncertain``
decides: skip (an operator requeues) or resend.

Reading the ledger (counts, listings, what is due) is :mod:`newsletter.delivery.log`.
"""

from __future__ import annotations

from newsletter.delivery.ledger.audience import audience_count, audience_query, freeze_audience
from newsletter.delivery.ledger.closing import (
    advance,
    cancel_for_recipient,
    cancel_open,
    cancel_rows,
    expire_waiting,
    mark_stopped,
    schedule_rows,
)
from newsletter.delivery.ledger.sending import (
    MAX_BACKOFF_SECONDS,
    Recorded,
    backoff_seconds,
    claim_batch,
    record_outcomes,
    recover,
    release,
    requeue,
)
from newsletter.delivery.ledger.states import DELIVERIES, may_become

__all__ = [
    "advance",
    "DELIVERIES",
    "MAX_BACKOFF_SECONDS",
    "Recorded",
    "audience_count",
    "audience_query",
    "backoff_seconds",
    "cancel_for_recipient",
    "cancel_open",
    "cancel_rows",
    "claim_batch",
    "expire_waiting",
    "freeze_audience",
    "mark_stopped",
    "may_become",
    "record_outcomes",
    "recover",
    "release",
    "requeue",
    "schedule_rows",
]
