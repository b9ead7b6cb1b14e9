"""The address-level suppression list: addresses that are never mailed again.

An address is suppressed when it bounced, complained, unsubscribed from every
newsletter, was added by hand, or was forgotten (then only its SHA-256 hash is
kept). Entries are keyed by :func:`email_hash`, so a forgotten address still blocks
a re-import. Suppressing also cancels the address's deliveries not yet sent.

:mod:`newsletter.subscribers` refuses suppressed addresses through
:func:`refuse_suppressed` and suppresses through :func:`add_entry`. Data functions
take the session first and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from newsletter.audience.addresses import normalise_email
from newsletter.delivery import ledger
from newsletter.errors import InputError, StateError
from newsletter.models import Suppression, SuppressionReason, Unsuppression, utcnow


def email_hash(email: str) -> str:
    """SHA-256 hex of a normalised address (the suppression list's key)."""
    return hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()


# ----- for already-normalised addresses ----------------------------------------


def find_entry(session: Session, *, address: str) -> Suppression | None:
    """The entry for a normalised ``address``, or None."""
    stmt = select(Suppression).where(Suppression.email_hash == email_hash(address))
    return session.scalars(stmt).one_or_none()


def refuse_suppressed(session: Session, *, address: str) -> None:
    """Raise StateError (naming the reason) when a normalised ``address`` is suppressed."""
    found = find_entry(session, address=address)
    if found is not None:
        raise StateError(
            f"{address} is suppressed ({found.reason.value})",
            code="subscriber.suppressed",
            email=address,
            reason=found.reason.value,
        )


def add_entry(session: Session, *, address: str, reason: SuppressionReason, detail: str) -> None:
    """Suppress a normalised ``address`` (an existing entry is kept as it is).

    A forgotten address is stored as its hash only. Also cancels the address's
    deliveries not yet sent, from every newsletter.
    """
    values = {
        "email_hash": email_hash(address),
        "email": None if reason is SuppressionReason.FORGOTTEN else address,
        "reason": reason,
        "detail": detail,
        "created_at": utcnow(),
    }
    # INSERT ... ON CONFLICT DO NOTHING: two webhook events for one bounce may race.
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg = postgresql.insert(Suppression).values(values)
        session.execute(pg.on_conflict_do_nothing(index_elements=["email_hash"]))
    elif dialect == "sqlite":
        lite = sqlite.insert(Suppression).values(values)
        session.execute(lite.on_conflict_do_nothing(index_elements=["email_hash"]))
    elif find_entry(session, address=address) is None:
        session.add(Suppression(**values))
        session.flush()
    # A suppressed address gets nothing more, even from a send already under way.
    ledger.cancel_for_recipient(session, email=address, newsletter=None, now=utcnow())


# ----- by any spelling of an address ---------------------------------------------


def suppress(
    session: Session, *, email: str, reason: SuppressionReason, detail: str = ""
) -> Suppression:
    """Put an address on the suppression list; idempotent (the first entry is kept).

    Returns the entry. Raises InputError for an invalid address.
    """
    address = normalise_email(email)
    add_entry(session, address=address, reason=reason, detail=detail)
    found = find_entry(session, address=address)
    assert found is not None  # just inserted or already there
    return found


def unsuppress(session: Session, *, email: str, reason: str) -> SuppressionReason | None:
    """Remove an address from the suppression list, saying why (kept for its
    timeline); returns the reason it had, or None. InputError without a reason."""
    address = normalise_email(email)
    why = " ".join(reason.split())
    if not why:
        raise InputError("say why the address may be mailed again", code="suppression.no_reason")
    found = find_entry(session, address=address)
    if found is None:
        return None
    session.add(
        Unsuppression(
            email_hash=found.email_hash,
            was_reason=found.reason.value,
            was_detail=found.detail,
            suppressed_at=found.created_at,
            reason=why,
        )
    )
    session.delete(found)
    session.flush()
    return found.reason


def is_suppressed(session: Session, *, email: str) -> SuppressionReason | None:
    """The reason this address is suppressed, or None. InputError if invalid."""
    found = find_entry(session, address=normalise_email(email))
    return found.reason if found else None


def list_suppressions(
    session: Session, *, reason: SuppressionReason | None = None, limit: int | None = None
) -> list[Suppression]:
    """Suppression entries, oldest first (a forgotten entry has ``email`` None)."""
    stmt = select(Suppression).order_by(Suppression.created_at, Suppression.id)
    if reason is not None:
        stmt = stmt.where(Suppression.reason == reason)
    return list(session.scalars(stmt.limit(limit)))
