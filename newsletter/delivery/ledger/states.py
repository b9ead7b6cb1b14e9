"""The ledger's vocabulary: the table, and WHERE clauses from the transition table."""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

from sqlalchemy import ColumnElement, Executable, Table
from sqlalchemy.orm import Session

from newsletter.models import Delivery, DeliveryStatus, delivery_sources

DELIVERIES = cast(Table, Delivery.__table__)


def may_become(
    new: DeliveryStatus, *, only: Collection[DeliveryStatus] | None = None
) -> ColumnElement[bool]:
    """The WHERE clause of a move to ``new``: rows in a status allowed to become it.

    ``only`` narrows the sources (each must be allowed: a ValueError otherwise, so a
    move the state machine forbids cannot be written).
    """
    allowed = delivery_sources(new)
    sources = list(only) if only is not None else allowed
    forbidden = [s for s in sources if s not in allowed]
    if forbidden or not sources:
        raise ValueError(f"deliveries cannot move from {forbidden or sources} to {new}")
    if len(sources) == 1:
        return DELIVERIES.c.status == sources[0].value
    return DELIVERIES.c.status.in_([s.value for s in sources])


def changed(session: Session, stmt: Executable) -> int:
    """Run a bulk UPDATE and return how many rows it changed."""
    return int(session.connection().execute(stmt).rowcount or 0)
