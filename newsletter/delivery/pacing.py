"""Pacing a send, kept in the database so every runner on every machine shares it.

- **Rate** (``delivery.rate_per_second``): a generic cell rate algorithm over one
  ``pacing`` row per provider. A batch may start when the row's theoretical
  arrival time has come; it then moves the time on by ``batch / rate``. Runners
  that find it in the future wait (they are told how long), so ten runners keep
  one rate between them.
- **Failover** (``delivery.failover_after``): after that many wholly transient
  batches in a row, the rest of the send goes through ``delivery.secondary_provider``.
- **Outage** (``delivery.outage_seconds``): when every batch has failed transiently
  for that long, the provider is taken to be gone: the send pauses (its rows wait,
  none fail) and the scheduler resumes it later.
- **Failure guard** (``delivery.stop_after_failed_batches``): when every recipient of
  that many batches in a row fails with one identical reason, the fault is in the
  message or the account, not in the readers: the send stops.

Each read-modify-write first takes the row's write lock (a no-op UPDATE), so two
runners never both act on the same counts, on SQLite or PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from newsletter.config import DeliverySettings
from newsletter.delivery import ledger
from newsletter.delivery.types import Outcome, OutcomeStatus
from newsletter.models import Edition, EditionStatus, Pacing, SendState, transition_edition

log = logging.getLogger(__name__)

#: How an edition paused by an outage says so (``editions.status_reason``).
OUTAGE = "outage: "


class Verdict(StrEnum):
    """What a batch's outcomes decided for the whole send."""

    CONTINUE = "continue"
    FAILOVER = "failover"  # the rest goes through the secondary provider
    OUTAGE = "outage"  # the send paused: the provider is gone
    STOPPED = "stopped"  # every batch failed alike: the send stopped


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str | None = None


def open_state(session: Session, *, edition_id: int, provider: str, fresh: bool) -> SendState:
    """The send's shared state, created on the first batch; ``fresh`` (a new send
    command) clears a stop and the failure counts, as the operator fixed the cause."""
    state = session.get(SendState, edition_id)
    if state is None:
        state = SendState(edition_id=edition_id, provider=provider)
        session.add(state)
        session.flush()
    elif fresh:
        state.stopped, state.failing_reason, state.failing_batches = None, None, 0
        state.transient_batches, state.transient_since = 0, None
    return state


def halt(session: Session, *, edition_id: int, provider: str, reason: str) -> None:
    """Stop the send for every runner, leaving its rows as they are (queued rows stay
    queued): a runner cannot work at all, which is no recipient's fault. A new send
    command clears it (``open_state(fresh=True)``)."""
    state = open_state(session, edition_id=edition_id, provider=provider, fresh=False)
    state.stopped = reason
    log.error("edition %s: send stopped: %s", edition_id, reason)


def _locked(session: Session, edition_id: int, now: datetime) -> SendState | None:
    session.execute(
        update(SendState)
        .where(SendState.edition_id == edition_id)
        .values(updated_at=now)
        .execution_options(synchronize_session=False)
    )
    query = select(SendState).where(SendState.edition_id == edition_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).one_or_none()


def current(session: Session, *, edition_id: int) -> tuple[str | None, str | None]:
    """``(provider in use, why the send stopped)`` for the edition's send."""
    state = session.get(SendState, edition_id, populate_existing=True)
    return (state.provider, state.stopped) if state else (None, None)


def rate_wait(session: Session, *, key: str, rate: float | None, now: datetime) -> float:
    """Seconds until the next batch may start under ``rate`` (0: it may start now)."""
    if not rate:
        return 0.0
    tat = session.scalar(select(Pacing.tat).where(Pacing.key == key))
    return max((tat - now).total_seconds(), 0.0) if tat else 0.0


def take_rate(
    session: Session, *, key: str, rate: float | None, messages: int, now: datetime
) -> None:
    """Account for a batch of ``messages`` that is about to start (GCRA)."""
    if not rate or not messages:
        return
    session.execute(update(Pacing).where(Pacing.key == key).values(tat=Pacing.tat))
    row = session.get(Pacing, key, populate_existing=True)
    step = timedelta(seconds=messages / rate)
    if row is None:
        session.add(Pacing(key=key, tat=now + step))
    else:
        row.tat = max(row.tat, now) + step
    session.flush()


def observe(
    session: Session,
    *,
    edition_id: int,
    provider: str,
    secondary: str | None,
    outcomes: Sequence[Outcome],
    now: datetime,
    settings: DeliverySettings,
) -> Decision:
    """Count one batch's outcomes into the shared state; decide for the whole send."""
    state = _locked(session, edition_id, now)
    if state is None or state.provider != provider or not outcomes:
        return Decision(Verdict.CONTINUE)  # another runner already failed over
    statuses = {o.status for o in outcomes}
    if statuses == {OutcomeStatus.RETRY}:
        state.transient_batches += 1
        state.transient_since = state.transient_since or now
    else:
        state.transient_batches, state.transient_since = 0, None
    reasons = {o.error for o in outcomes}
    if statuses == {OutcomeStatus.FAILED} and len(reasons) == 1:
        reason = reasons.pop() or "failed"
        same = reason == state.failing_reason
        state.failing_batches = state.failing_batches + 1 if same else 1
        state.failing_reason = reason
    else:
        state.failing_reason, state.failing_batches = None, 0
    if state.failing_reason and state.failing_batches >= settings.stop_after_failed_batches:
        state.stopped = (
            f"every recipient of the last {state.failing_batches} batches failed with "
            f"{state.failing_reason!r}"
        )
        ledger.mark_stopped(session, edition_id=edition_id, reason=state.failing_reason, now=now)
        log.error("edition %s: send stopped: %s", edition_id, state.stopped)
        return Decision(Verdict.STOPPED, state.stopped)
    if secondary and state.transient_batches >= settings.failover_after:
        log.warning(
            "%s failed %d batches in a row: failing over to %s",
            provider,
            state.transient_batches,
            secondary,
        )
        state.provider, state.transient_batches, state.transient_since = secondary, 0, None
        return Decision(Verdict.FAILOVER, secondary)
    outage = timedelta(seconds=settings.outage_seconds)
    if state.transient_since is not None and now - state.transient_since >= outage:
        error = next((o.error for o in outcomes if o.error), "transient failures")
        reason = f"{provider} failed every batch for {settings.outage_seconds:g} s (last: {error})"
        state.transient_batches, state.transient_since = 0, None
        edition = session.get(Edition, edition_id, populate_existing=True)
        if edition is not None and edition.status is EditionStatus.SENDING:
            transition_edition(edition, EditionStatus.PAUSED)
            edition.status_reason = OUTAGE + reason
        log.error("edition %s: send paused: %s", edition_id, reason)
        return Decision(Verdict.OUTAGE, reason)
    return Decision(Verdict.CONTINUE)
