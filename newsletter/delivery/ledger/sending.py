"""The moves of a send: claim, record what the provider did, hand back, recover."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from newsletter.delivery.ledger.states import DELIVERIES, changed, may_become
from newsletter.delivery.types import Claimed, Outcome, OutcomeStatus
from newsletter.models import DeliveryStatus, Runner, delivery_sources

log = logging.getLogger("newsletter.delivery.ledger")

#: The longest wait between two attempts, whatever the backoff says.
MAX_BACKOFF_SECONDS = 600.0


def claim_batch(
    session: Session,
    *,
    edition_id: int,
    limit: int,
    lease_seconds: int,
    now: datetime,
    runner_id: str | None = None,
) -> tuple[str, list[Claimed]]:
    """Claim up to ``limit`` due retry/queued rows for ``runner_id``, with a lease.

    The caller commits the claim before calling the provider. On PostgreSQL rows
    are locked with SKIP LOCKED so several runners share an edition; the status
    guard on the UPDATE keeps two claimers apart on any database.
    """
    due = or_(DELIVERIES.c.not_before.is_(None), DELIVERIES.c.not_before <= now)
    batch_id = uuid.uuid4().hex
    claimed: list[Claimed] = []
    # Retries first, then the queue. One status per statement keeps the scan in index
    # order (edition_id, status, id): no sort of the whole edition per batch.
    for status in (DeliveryStatus.RETRY, DeliveryStatus.QUEUED):
        guard = may_become(DeliveryStatus.SENDING, only=[status])
        pick = (
            select(DELIVERIES.c.id)
            .where(DELIVERIES.c.edition_id == edition_id, guard, due)
            .order_by(DELIVERIES.c.id)
            .limit(limit - len(claimed))
        )
        if session.get_bind().dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        # A materialised CTE: PostgreSQL may otherwise re-run a LIMIT subquery inside
        # the UPDATE and claim more rows than asked for.
        picked = pick.cte("picked").prefix_with("MATERIALIZED", dialect="postgresql")
        claim = (
            update(DELIVERIES)
            .where(DELIVERIES.c.id.in_(select(picked.c.id)), guard)
            .values(
                status=DeliveryStatus.SENDING.value,
                batch_id=batch_id,
                runner_id=runner_id,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )
            .returning(
                DELIVERIES.c.id,
                DELIVERIES.c.email,
                DELIVERIES.c.name,
                DELIVERIES.c.subscriber_key,
                DELIVERIES.c.attempts,
                DELIVERIES.c.retry_until,
            )
        )
        claimed += (Claimed(*r) for r in session.connection().execute(claim))
        if len(claimed) >= limit:
            break
    claimed.sort(key=lambda c: c.id)
    return batch_id, claimed


def backoff_seconds(attempts: int, *, base: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter (capped), never sooner than the provider asked."""
    ceiling = min(base * (2 ** min(max(attempts - 1, 0), 30)), MAX_BACKOFF_SECONDS)
    return max(random.uniform(0, ceiling), retry_after or 0.0)


@dataclass
class Recorded:
    """How one batch's outcomes were written."""

    sent: int = 0
    failed: int = 0  # for a reason of the recipient alone
    expired: int = 0  # failed: the retry window closed (or the attempts cap)
    retry: int = 0
    uncertain: int = 0


def record_outcomes(
    session: Session,
    *,
    batch_id: str,
    outcomes: Sequence[Outcome],
    claimed: Sequence[Claimed],
    provider: str,
    now: datetime,
    retry_base: float,
    max_attempts: int,
    resend_uncertain: bool = False,
) -> Recorded:
    """Write each recipient's outcome; count the provider call as an attempt.

    A retry whose next attempt would fall after its retry window (or past
    ``max_attempts``) fails as ``expired``; an uncertain one is queued again at once
    with ``resend_uncertain``. Only rows still in this batch and still ``sending``
    are touched, so a batch recovered as uncertain meanwhile is not overwritten.
    """
    rows = {c.id: c for c in claimed}
    sent: list[dict[str, object]] = []
    failed: list[dict[str, object]] = []
    retry: list[dict[str, object]] = []
    uncertain: list[dict[str, object]] = []
    counts = Recorded()
    for o in outcomes:
        row = rows.get(o.delivery_id) if o.delivery_id is not None else None
        if row is None:
            continue
        if o.status is OutcomeStatus.SENT:
            sent.append({"b_id": row.id, "b_mid": o.message_id})
        elif o.status is OutcomeStatus.UNCERTAIN:
            uncertain.append({"b_id": row.id, "b_err": o.error or "outcome unknown"})
        elif o.status is OutcomeStatus.RETRY:
            attempts = row.attempts + 1
            due = now + timedelta(
                seconds=backoff_seconds(attempts, base=retry_base, retry_after=o.retry_after)
            )
            reason = o.error or "transient failure"
            if row.retry_until is not None and due > row.retry_until:
                failed.append(
                    {"b_id": row.id, "b_err": f"retry window closed: {reason}", "b_f": "expired"}
                )
            elif attempts >= max_attempts:
                error = f"gave up after {attempts} attempts: {reason}"
                failed.append({"b_id": row.id, "b_err": error, "b_f": "expired"})
            else:
                retry.append({"b_id": row.id, "b_err": reason, "b_nb": due})
        else:
            failed.append({"b_id": row.id, "b_err": o.error or "failed", "b_f": "recipient"})
    guard = and_(
        DELIVERIES.c.id == bindparam("b_id"),
        DELIVERIES.c.batch_id == batch_id,
        may_become(DeliveryStatus.SENT, only=[DeliveryStatus.SENDING]),
    )
    common = {"lease_expires_at": None, "updated_at": now, "attempts": DELIVERIES.c.attempts + 1}
    sent_values = {
        "status": DeliveryStatus.SENT.value,
        "provider": provider,
        "sent_at": now,
        "error": None,
        **common,
    }
    conn = session.connection()
    counts.sent = len(sent)
    if sent and len(sent) == len(claimed) and len({row["b_mid"] for row in sent}) == 1:
        # The whole batch accepted under one message id (SendGrid): one statement.
        conn.execute(
            update(DELIVERIES)
            .where(
                # the primary key bounds the scan; the batch id picks this claim's rows
                DELIVERIES.c.id.between(claimed[0].id, claimed[-1].id),
                DELIVERIES.c.batch_id == batch_id,
                may_become(DeliveryStatus.SENT, only=[DeliveryStatus.SENDING]),
            )
            .values(provider_message_id=sent[0]["b_mid"], **sent_values)
        )
        sent = []
    if sent:
        conn.execute(
            update(DELIVERIES)
            .where(guard)
            .values(provider_message_id=bindparam("b_mid"), **sent_values),
            sent,
        )
    if failed:
        conn.execute(
            update(DELIVERIES)
            .where(guard)
            .values(
                status=DeliveryStatus.FAILED.value,
                provider=provider,
                error=bindparam("b_err"),
                failure=bindparam("b_f"),
                **common,
            ),
            failed,
        )
        counts.expired = sum(1 for f in failed if f["b_f"] == "expired")
        counts.failed = len(failed) - counts.expired
    if retry:
        conn.execute(
            update(DELIVERIES)
            .where(guard)
            .values(
                status=DeliveryStatus.RETRY.value,
                error=bindparam("b_err"),
                not_before=bindparam("b_nb"),
                **common,
            ),
            retry,
        )
    if uncertain:
        conn.execute(
            update(DELIVERIES)
            .where(guard)
            .values(
                status=DeliveryStatus.UNCERTAIN.value,
                provider=provider,
                error=bindparam("b_err"),
                **common,
            ),
            uncertain,
        )
        counts.uncertain = len(uncertain)
        if resend_uncertain:
            _requeue_ids(session, [int(str(u["b_id"])) for u in uncertain], now=now)
    # A recipient the provider said nothing about must not stay claimed forever.
    answered = {o.delivery_id for o in outcomes}
    missing = [c.id for c in claimed if c.id not in answered]
    if missing:
        changed(
            session,
            update(DELIVERIES)
            .where(DELIVERIES.c.id.in_(missing), DELIVERIES.c.batch_id == batch_id)
            .where(may_become(DeliveryStatus.RETRY, only=[DeliveryStatus.SENDING]))
            .values(
                status=DeliveryStatus.RETRY.value,
                error="no outcome from provider",
                not_before=now + timedelta(seconds=retry_base),
                **common,
            ),
        )
    counts.retry = len(retry) + len(missing)
    return counts


def release(session: Session, *, batch_id: str, claimed: Sequence[Claimed], now: datetime) -> int:
    """Hand a claimed batch back to the queue: the provider took none of it."""
    return changed(
        session,
        update(DELIVERIES)
        .where(
            DELIVERIES.c.id.in_([c.id for c in claimed]),
            DELIVERIES.c.batch_id == batch_id,
            may_become(DeliveryStatus.QUEUED, only=[DeliveryStatus.SENDING]),
        )
        .values(
            status=DeliveryStatus.QUEUED.value,
            batch_id=None,
            runner_id=None,
            lease_expires_at=None,
            updated_at=now,
        ),
    )


def recover(
    session: Session,
    *,
    edition_id: int,
    now: datetime,
    resend: bool,
    gone: Collection[str] = (),
) -> int:
    """Mark claims whose runner is gone (or whose lease ran out) ``uncertain``.

    ``gone`` names runners known to be dead; a claim whose runner left the registry
    (it stopped without recording) counts as gone too. With ``resend`` the rows are queued
    again at once (a recipient may get a second copy); otherwise they stay
    uncertain for an operator. Returns how many rows were recovered.
    """
    registered = select(Runner.id).where(Runner.id == DELIVERIES.c.runner_id).exists()
    held = or_(
        DELIVERIES.c.lease_expires_at < now,
        DELIVERIES.c.runner_id.in_(list(gone)),
        and_(DELIVERIES.c.runner_id.is_not(None), ~registered),  # its runner left
    )
    where = and_(
        DELIVERIES.c.edition_id == edition_id,
        may_become(DeliveryStatus.UNCERTAIN, only=[DeliveryStatus.SENDING]),
        held,
    )
    ids = [
        int(i) for i in session.connection().execute(select(DELIVERIES.c.id).where(where)).scalars()
    ]
    if not ids:
        return 0
    count = changed(
        session,
        update(DELIVERIES)
        .where(where, DELIVERIES.c.id.in_(ids))
        .values(
            status=DeliveryStatus.UNCERTAIN.value,
            error="the runner stopped while the provider held this batch",
            lease_expires_at=None,
            updated_at=now,
        ),
    )
    log.warning(
        "edition %s: %d deliveries are uncertain (runner gone mid-batch)", edition_id, count
    )
    if resend:
        _requeue_ids(session, ids, now=now)
    return count


def _requeue_ids(session: Session, ids: Sequence[int], *, now: datetime) -> int:
    """Queue uncertain rows again for an idempotent resend (same retry window)."""
    return changed(
        session,
        update(DELIVERIES)
        .where(
            DELIVERIES.c.id.in_(list(ids)),
            may_become(DeliveryStatus.QUEUED, only=[DeliveryStatus.UNCERTAIN]),
        )
        .values(
            status=DeliveryStatus.QUEUED.value,
            batch_id=None,
            runner_id=None,
            not_before=None,
            updated_at=now,
        ),
    )


def requeue(
    session: Session,
    *,
    edition_id: int,
    statuses: Iterable[DeliveryStatus],
    now: datetime,
    retry_until: datetime | None = None,
) -> int:
    """Queue rows in ``statuses`` (uncertain, failed, retry) again, with a fresh window.

    Their attempts start again from zero and ``retry_until`` opens a new retry
    window (an operator's requeue deserves more than the last attempt).
    """
    allowed = [s for s in statuses if s in delivery_sources(DeliveryStatus.QUEUED)]
    if not allowed:
        return 0
    return changed(
        session,
        update(DELIVERIES)
        .where(
            DELIVERIES.c.edition_id == edition_id, may_become(DeliveryStatus.QUEUED, only=allowed)
        )
        .values(
            status=DeliveryStatus.QUEUED.value,
            batch_id=None,
            runner_id=None,
            lease_expires_at=None,
            not_before=None,
            attempts=0,
            failure=None,
            retry_until=retry_until,
            updated_at=now,
        ),
    )
