"""The delivery ledger: freeze the audience, claim batches, record outcomes.

The ledger is the truth about who got what. One ``deliveries`` row exists per
(edition, subscriber) — UNIQUE in the database — and is created before anything is
sent. Rows move queued → sending (claimed with a batch id and a lease) → sent |
failed | retry (not before T) | uncertain | cancelled, always in bulk statements
whose WHERE clause names the allowed source states (models.DELIVERY_TRANSITIONS).

A sender that dies between "provider accepted" and "outcome committed" leaves its
batch in ``sending`` with an expired lease; :func:`recover_expired` marks such rows
``uncertain`` and the ``delivery.uncertain`` setting decides: skip or resend.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import (
    Executable,
    Select,
    Table,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from newsletter.delivery.types import Claimed, Outcome, OutcomeStatus
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Edition,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    delivery_sources,
)

log = logging.getLogger(__name__)

DELIVERIES = cast(Table, Delivery.__table__)

CLAIMABLE = (DeliveryStatus.QUEUED, DeliveryStatus.RETRY)
OPEN = (DeliveryStatus.QUEUED, DeliveryStatus.RETRY, DeliveryStatus.SENDING)


def _changed(session: Session, stmt: Executable) -> int:
    """Run a bulk UPDATE and return how many rows it changed."""
    return int(session.connection().execute(stmt).rowcount or 0)


def audience_query(slug: str) -> Select[int, str, str, str, str | None]:
    """Confirmed, non-suppressed subscribers of ``slug`` (id, email, name, key, tz)."""
    suppressed = select(Suppression.id).where(Suppression.email == Subscriber.email).exists()
    return (
        select(
            Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.key, Subscriber.timezone
        )
        .join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .where(
            Subscription.newsletter == slug,
            Subscription.status == SubscriptionStatus.CONFIRMED,
            ~suppressed,
        )
    )


def audience_count(session: Session, *, slug: str) -> int:
    """How many subscribers a send of ``slug`` would reach now."""
    return int(
        session.scalar(select(func.count()).select_from(audience_query(slug).subquery())) or 0
    )


def freeze_audience(session: Session, *, edition_id: int, slug: str, now: datetime) -> int:
    """Create a queued delivery row for every current recipient, in one INSERT … SELECT.

    Subscribers who already have a row for this edition are left alone, so calling it
    twice adds nobody twice. Returns the number of rows created.
    """
    src = audience_query(slug).subquery()
    already = (
        select(Delivery.id)
        .where(Delivery.edition_id == edition_id, Delivery.subscriber_id == src.c.id)
        .exists()
    )
    rows = select(
        literal(edition_id),
        src.c.id,
        src.c.email,
        src.c.name,
        src.c.key,
        src.c.timezone,
        literal(DeliveryStatus.QUEUED.value),
        literal(0),
        literal(now, Delivery.created_at.type),
        literal(now, Delivery.updated_at.type),
    ).where(~already)
    stmt = insert(DELIVERIES).from_select(
        [
            "edition_id",
            "subscriber_id",
            "email",
            "name",
            "subscriber_key",
            "timezone",
            "status",
            "attempts",
            "created_at",
            "updated_at",
        ],
        rows,
    )
    # Counted, not taken from rowcount: psycopg reports -1 for INSERT … SELECT.
    before = _count(session, edition_id)
    session.connection().execute(stmt)
    return _count(session, edition_id) - before


def _count(session: Session, edition_id: int) -> int:
    query = select(func.count()).select_from(Delivery).where(Delivery.edition_id == edition_id)
    return int(session.scalar(query) or 0)


def claim_batch(
    session: Session, *, edition_id: int, limit: int, lease_seconds: int, now: datetime
) -> tuple[str, list[Claimed]]:
    """Claim up to ``limit`` queued/due-retry rows for one sender, with a lease.

    The caller commits the claim before calling the provider. On PostgreSQL rows
    are locked with SKIP LOCKED so several senders share an edition; the status
    guard on the UPDATE keeps two claimers apart on any database.
    """
    due = or_(DELIVERIES.c.not_before.is_(None), DELIVERIES.c.not_before <= now)
    batch_id = uuid.uuid4().hex
    claimed: list[Claimed] = []
    # Retries first, then the queue. One status per statement keeps the scan in index
    # order (edition_id, status, id): no sort of the whole edition per batch. The
    # status guard in the outer WHERE keeps two claimers apart on any database.
    for status in (DeliveryStatus.RETRY, DeliveryStatus.QUEUED):
        pick = (
            select(DELIVERIES.c.id)
            .where(DELIVERIES.c.edition_id == edition_id, DELIVERIES.c.status == status.value, due)
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
            .where(DELIVERIES.c.id.in_(select(picked.c.id)), DELIVERIES.c.status == status.value)
            .values(
                status=DeliveryStatus.SENDING.value,
                batch_id=batch_id,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=DELIVERIES.c.attempts + 1,
                updated_at=now,
            )
            .returning(
                DELIVERIES.c.id,
                DELIVERIES.c.email,
                DELIVERIES.c.name,
                DELIVERIES.c.subscriber_key,
                DELIVERIES.c.attempts,
            )
        )
        claimed += (Claimed(*r) for r in session.connection().execute(claim))
        if len(claimed) >= limit:
            break
    claimed.sort(key=lambda c: c.id)
    return batch_id, claimed


def backoff_seconds(attempts: int, *, base: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never sooner than the provider asked."""
    delay = random.uniform(0, base * (2 ** max(attempts - 1, 0)))
    return max(delay, retry_after or 0.0)


def record_outcomes(
    session: Session,
    *,
    batch_id: str,
    outcomes: Sequence[Outcome],
    claimed: Sequence[Claimed],
    provider: str,
    now: datetime,
    max_attempts: int,
    retry_base: float,
) -> dict[str, int]:
    """Write each recipient's outcome; retries past ``max_attempts`` become failures.

    Only rows still in this batch and still ``sending`` are touched, so a batch that
    was recovered as uncertain in the meantime is not overwritten. Returns counts.
    """
    attempts = {c.id: c.attempts for c in claimed}
    sent: list[dict[str, object]] = []
    failed: list[dict[str, object]] = []
    retry: list[dict[str, object]] = []
    for o in outcomes:
        if o.delivery_id is None:
            continue
        if o.status is OutcomeStatus.SENT:
            sent.append({"b_id": o.delivery_id, "b_mid": o.message_id})
        elif (
            o.status is OutcomeStatus.RETRY
            and attempts.get(o.delivery_id, max_attempts) < max_attempts
        ):
            delay = backoff_seconds(
                attempts[o.delivery_id], base=retry_base, retry_after=o.retry_after
            )
            retry.append(
                {"b_id": o.delivery_id, "b_err": o.error, "b_nb": now + timedelta(seconds=delay)}
            )
        else:
            reason = o.error or "failed"
            if o.status is OutcomeStatus.RETRY:
                reason = f"gave up after {attempts.get(o.delivery_id)} attempts: {reason}"
            failed.append({"b_id": o.delivery_id, "b_err": reason})
    guard = and_(
        Delivery.id == bindparam("b_id"),
        Delivery.batch_id == batch_id,
        Delivery.status == DeliveryStatus.SENDING,
    )
    common = {"lease_expires_at": None, "updated_at": now}
    counts = {"sent": len(sent), "failed": len(failed), "retry": len(retry)}
    sent_values = {
        "status": DeliveryStatus.SENT.value,
        "provider": provider,
        "sent_at": now,
        "error": None,
        **common,
    }
    conn = session.connection()
    if sent and len(sent) == len(claimed) and len({row["b_mid"] for row in sent}) == 1:
        # The whole batch accepted under one message id (SendGrid): one statement.
        conn.execute(
            update(DELIVERIES)
            .where(
                # the primary key bounds the scan; the batch id picks this claim's rows
                DELIVERIES.c.id.between(claimed[0].id, claimed[-1].id),
                DELIVERIES.c.batch_id == batch_id,
                DELIVERIES.c.status == "sending",
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
                **common,
            ),
            failed,
        )
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
    # A recipient the provider said nothing about must not stay claimed forever.
    answered = {o.delivery_id for o in outcomes}
    missing = [c.id for c in claimed if c.id not in answered]
    if missing:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(missing), Delivery.batch_id == batch_id)
            .where(Delivery.status == DeliveryStatus.SENDING)
            .values(status=DeliveryStatus.RETRY, error="no outcome from provider", **common)
            .execution_options(synchronize_session=False)
        )
    counts["retry"] += len(missing)
    return counts


def recover_expired(session: Session, *, edition_id: int, now: datetime, resend: bool) -> int:
    """Mark rows whose sender died mid-batch (lease expired) ``uncertain``.

    With ``resend`` they are queued again at once (a recipient may get a second
    copy); otherwise they stay uncertain for an operator to decide. Returns the count.
    """
    expired = and_(
        Delivery.edition_id == edition_id,
        Delivery.status == DeliveryStatus.SENDING,
        Delivery.lease_expires_at < now,
    )
    count = _changed(
        session,
        update(Delivery)
        .where(expired)
        .values(
            status=DeliveryStatus.UNCERTAIN,
            error="sender stopped while the provider held this batch",
            updated_at=now,
        ),
    )
    if count:
        log.warning(
            "edition %s: %d deliveries are uncertain (sender died mid-batch)", edition_id, count
        )
    if count and resend:
        requeue(session, edition_id=edition_id, statuses=[DeliveryStatus.UNCERTAIN], now=now)
    return count


def requeue(
    session: Session, *, edition_id: int, statuses: Iterable[DeliveryStatus], now: datetime
) -> int:
    """Queue rows in ``statuses`` (uncertain, failed on operator request) again."""
    allowed = [s for s in statuses if s in delivery_sources(DeliveryStatus.QUEUED)]
    return _changed(
        session,
        update(Delivery)
        .where(Delivery.edition_id == edition_id, Delivery.status.in_(allowed))
        .values(
            status=DeliveryStatus.QUEUED,
            batch_id=None,
            lease_expires_at=None,
            not_before=None,
            updated_at=now,
        ),
    )


def cancel_open(session: Session, *, edition_id: int, now: datetime) -> int:
    """Cancel every row not yet handed to a provider (queued, retry, uncertain)."""
    return _changed(
        session,
        update(Delivery)
        .where(
            Delivery.edition_id == edition_id,
            Delivery.status.in_(delivery_sources(DeliveryStatus.CANCELLED)),
        )
        .values(status=DeliveryStatus.CANCELLED, updated_at=now),
    )


def cancel_for_recipient(
    session: Session, *, email: str, newsletter: str | None, now: datetime
) -> int:
    """Cancel someone's deliveries not yet handed to a provider (they left, or bounced).

    ``newsletter`` limits it to that newsletter's editions; None cancels them all.
    """
    query = update(Delivery).where(
        Delivery.email == email,
        Delivery.status.in_(delivery_sources(DeliveryStatus.CANCELLED)),
    )
    if newsletter is not None:
        query = query.where(
            Delivery.edition_id.in_(select(Edition.id).where(Edition.newsletter == newsletter))
        )
    return _changed(session, query.values(status=DeliveryStatus.CANCELLED, updated_at=now))


def stats(session: Session, *, edition_id: int | None = None) -> dict[DeliveryStatus, int]:
    """Counts per status (every status present, zero when none)."""
    query = select(Delivery.status, func.count()).group_by(Delivery.status)
    if edition_id is not None:
        query = query.where(Delivery.edition_id == edition_id)
    counts = dict.fromkeys(DeliveryStatus, 0)
    for status, n in session.execute(query):
        counts[status] = int(n)
    return counts


def next_due(session: Session, *, edition_id: int) -> datetime | None:
    """When the earliest waiting row (retry, or a later local-time wave) becomes due."""
    return session.scalar(
        select(func.min(Delivery.not_before)).where(
            Delivery.edition_id == edition_id, Delivery.status.in_(CLAIMABLE)
        )
    )


def list_deliveries(
    session: Session,
    *,
    edition_id: int | None = None,
    status: DeliveryStatus | None = None,
    email: str | None = None,
    limit: int = 100,
) -> list[Delivery]:
    """Delivery rows, newest first, filtered."""
    query = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
    if edition_id is not None:
        query = query.where(Delivery.edition_id == edition_id)
    if status is not None:
        query = query.where(Delivery.status == status)
    if email is not None:
        query = query.where(Delivery.email == email)
    return list(session.scalars(query))


def next_lease_expiry(session: Session, *, edition_id: int) -> datetime | None:
    """When the earliest claimed batch's lease runs out (None when nothing is claimed)."""
    return session.scalar(
        select(func.min(Delivery.lease_expires_at)).where(
            Delivery.edition_id == edition_id, Delivery.status == DeliveryStatus.SENDING
        )
    )


def release(session: Session, *, batch_id: str, claimed: Sequence[Claimed], now: datetime) -> int:
    """Hand a claimed batch back to the queue (the provider accepted none of it)."""
    return _changed(
        session,
        update(Delivery)
        .where(
            Delivery.id.in_([c.id for c in claimed]),
            Delivery.batch_id == batch_id,
            Delivery.status == DeliveryStatus.SENDING,
        )
        .values(
            status=DeliveryStatus.QUEUED,
            batch_id=None,
            lease_expires_at=None,
            attempts=Delivery.attempts - 1,
            updated_at=now,
        ),
    )
