"""The ledger moves deliveries only along the transition table, and uses all of it.

One delivery row in every status, then every ledger operation in turn: each change
of status it makes must be listed in ``models.DELIVERY_TRANSITIONS``; and together
the operations walk every listed transition (but the provider events', which the
events wing writes).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions
from newsletter.delivery import ledger
from newsletter.delivery.types import Claimed, Outcome, OutcomeStatus
from newsletter.models import (
    DELIVERY_TRANSITIONS,
    EVENT_RANK,
    Delivery,
    DeliveryStatus,
    delivery_sources,
    utcnow,
)
from tests import factories

#: Moves made after a provider accepted a message, from its events (not the sender's).
EVENTS = {(old, new) for old in EVENT_RANK for new in DELIVERY_TRANSITIONS[old]}


def test_may_become_refuses_what_the_table_forbids() -> None:
    for old in DeliveryStatus:
        for new in DeliveryStatus:
            if old in delivery_sources(new):
                ledger.may_become(new, only=[old])
            else:
                with pytest.raises(ValueError, match="cannot move"):
                    ledger.may_become(new, only=[old])


Step = Callable[[Session, int], object]


def _ops(hour: timedelta) -> dict[str, list[Step]]:
    """Each operation as its steps (a claim, then what is done with it)."""
    held: dict[str, tuple[str, list[Claimed]]] = {}

    def claim(s: Session, eid: int) -> None:
        held["claim"] = ledger.claim_batch(
            s, edition_id=eid, limit=100, lease_seconds=60, now=utcnow()
        )

    def record(status: OutcomeStatus, cap: int = 50) -> Step:
        def run(s: Session, eid: int) -> None:
            batch, claimed = held["claim"]
            ledger.record_outcomes(
                s,
                batch_id=batch,
                outcomes=[Outcome(c.id, status, message_id="m", error="e") for c in claimed],
                claimed=claimed,
                provider="p",
                now=utcnow(),
                retry_base=1.0,
                max_attempts=cap,
            )

        return run

    def release(s: Session, eid: int) -> None:
        batch, claimed = held["claim"]
        ledger.release(s, batch_id=batch, claimed=claimed, now=utcnow())

    return {
        "claim": [claim],
        "record sent": [claim, record(OutcomeStatus.SENT)],
        "record failed": [claim, record(OutcomeStatus.FAILED)],
        "record retry": [claim, record(OutcomeStatus.RETRY)],
        "record uncertain": [claim, record(OutcomeStatus.UNCERTAIN)],
        "retry at the cap": [claim, record(OutcomeStatus.RETRY, cap=1)],
        "release": [claim, release],
        "recover": [
            lambda s, eid: ledger.recover(s, edition_id=eid, now=utcnow() + hour, resend=False)
        ],
        "requeue": [
            lambda s, eid: ledger.requeue(
                s, edition_id=eid, statuses=list(DeliveryStatus), now=utcnow()
            )
        ],
        "expire waiting": [
            lambda s, eid: ledger.expire_waiting(s, edition_id=eid, now=utcnow() + hour)
        ],
        "cancel": [lambda s, eid: ledger.cancel_open(s, edition_id=eid, now=utcnow())],
    }


def test_every_ledger_move_is_in_the_table_and_the_table_is_walked(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    with sessions.begin() as s:
        factories.subscribers(s, len(DeliveryStatus))
        factories.story(s)
        edition, _ = editions.build_edition(s, settings=settings, slug="daily-briefing")
        eid = edition.id
        ledger.freeze_audience(s, edition_id=eid, slug="daily-briefing", now=utcnow())
    walked: set[tuple[DeliveryStatus, DeliveryStatus]] = set()
    hour = timedelta(hours=1)
    for name, steps in _ops(hour).items():
        with sessions.begin() as s:  # one row in every status, due now, leases past
            ids = list(s.scalars(select(Delivery.id).where(Delivery.edition_id == eid)))
            for row_id, status in zip(ids, DeliveryStatus, strict=True):
                s.execute(
                    update(Delivery)
                    .where(Delivery.id == row_id)
                    .values(
                        status=status,
                        batch_id=None,
                        not_before=None,
                        lease_expires_at=utcnow() - hour,
                        retry_until=utcnow() + hour / 2,
                        attempts=0,
                    )
                )
            for step in steps:
                before = dict(s.execute(select(Delivery.id, Delivery.status)).all())
                step(s, eid)
                after = dict(s.execute(select(Delivery.id, Delivery.status)).all())
                for row_id, old in before.items():
                    new = after[row_id]
                    if new != old:
                        assert new in DELIVERY_TRANSITIONS[old], f"{name}: {old} → {new}"
                        walked.add((old, new))
    table = {(old, new) for old, targets in DELIVERY_TRANSITIONS.items() for new in targets}
    assert table - EVENTS - walked == set()
