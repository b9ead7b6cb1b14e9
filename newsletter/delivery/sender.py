"""The send unit: one batch of one edition (claim → provider → record), and the start
and end of a send around it.

:func:`send_batch` claims a batch and commits the claim, hands it to the provider,
and commits the outcome, so the ledger always says who was sent what (see
:mod:`newsletter.delivery.ledger`). It holds no threads, signals or sleeps: a
runner calls it in a loop (:mod:`newsletter.delivery.runner` in the CLI and the
scheduler, a Celery task on other machines) and waits when it is told to. What
the runners share (which provider is in use, the rate, the failure counts) lives
in the database (:mod:`newsletter.delivery.pacing`), so runners on several
machines keep one rate and one decision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions, render, types
from newsletter.db import transaction
from newsletter.delivery import ledger, log, pacing, registry
from newsletter.delivery.links import recipient, recipient_links
from newsletter.delivery.providers.base import Provider
from newsletter.delivery.types import Claimed, Outcome, PreparedEdition, Recipient
from newsletter.errors import ProviderConfigError, StateError
from newsletter.models import DeliveryStatus, Edition, EditionStatus, transition_edition, utcnow

logger = logging.getLogger(__name__)

TEST_PREFIX = "[TEST] "


def prepare(
    settings: Settings, edition: Edition, content: types.RenderedEdition
) -> PreparedEdition:
    """The per-send constants every provider needs (content rendered once)."""
    newsletter = settings.newsletter(edition.newsletter)
    sender = settings.sender
    list_domain = sender.list_id or sender.domain
    return PreparedEdition(
        edition_id=edition.id,
        newsletter=edition.newsletter,
        content=content,
        from_name=sender.from_name,
        from_address=sender.from_address,
        reply_to=sender.reply_to,
        list_id=f'"{newsletter.name}" <{edition.newsletter}.{list_domain}>',
        domain=sender.domain,
        tracking=newsletter.tracking,
    )


def resend_uncertain(settings: Settings, provider: Provider | None = None) -> bool:
    """Whether rows whose outcome is unknown go out again (see providers/base.py)."""
    return settings.delivery.uncertain == "resend" or bool(provider and provider.idempotent)


def preflight(primary: Provider, secondary: Provider | None = None) -> None:
    """Prove the providers can work (reachable, credentials taken) before anything is
    frozen or claimed; raises ProviderConfigError (or ProviderError when busy)."""
    for provider in (primary, secondary):
        if provider is not None:
            provider.check()


def retry_until(settings: Settings, edition: Edition, now: datetime) -> datetime:
    """When the retry window of a send starting ``now`` closes.

    ``delivery.retry_window`` after ``now``, and never past the newsletter's
    ``stale_after`` (a local clock time on the issue date, or a delay after ``now``)
    unless that has already passed: a send started late on purpose still retries.
    """
    window = now + settings.delivery.retry_delay
    nl = settings.newsletter(edition.newsletter)
    spec = nl.staleness
    if isinstance(spec, timedelta):
        stale = now + spec
    else:
        local = datetime.combine(edition.issue_date, spec, tzinfo=ZoneInfo(nl.timezone))
        stale = local.astimezone(UTC)
    return min(window, stale) if stale > now else window


@dataclass(frozen=True)
class Started:
    """What starting (or restarting) a send found and did."""

    edition: Edition
    content: types.RenderedEdition
    queued: int  # rows created now (the first start only)
    recovered: int  # claims of dead runners marked uncertain


def start_send(
    session: Session,
    *,
    settings: Settings,
    edition_id: int,
    now: datetime,
    resend: bool | None = None,
    gone: tuple[str, ...] = (),
) -> Started:
    """Freeze content and audience (first start only) and mark the edition sending.

    Claims of the runners in ``gone`` (and of expired leases) become uncertain;
    ``resend`` (default: from settings) sends them again. Raises StateError for a
    held, paused or cancelled edition, CheckFailed when the content fails its checks.
    """
    edition = editions.get_edition(session, edition_id, for_update=True)
    refusals = {
        EditionStatus.CANCELLED: "was cancelled; nothing will be sent",
        EditionStatus.HELD: "is held for review",
        EditionStatus.PAUSED: "is paused",
    }
    if edition.status in refusals:
        why = f" ({edition.status_reason})" if edition.status_reason else ""
        raise StateError(
            f"edition {edition.id} {refusals[edition.status]}{why}",
            code=f"edition.{edition.status.value}",
            edition_id=edition.id,
            reason=edition.status_reason,
        )
    content = editions.freeze_content(session, edition=edition, settings=settings)
    queued = 0
    if edition.send_started_at is None:
        queued = ledger.freeze_audience(
            session,
            edition_id=edition.id,
            slug=edition.newsletter,
            now=now,
            retry_until=retry_until(settings, edition, now),
        )
        edition.send_started_at = now
        logger.info("edition %s: audience frozen, %d deliveries queued", edition.id, queued)
    recovered = ledger.recover(
        session,
        edition_id=edition.id,
        now=now,
        resend=resend_uncertain(settings) if resend is None else resend,
        gone=gone,
    )
    if edition.status is EditionStatus.BUILT or (
        edition.status is EditionStatus.SENT and log.has_open(session, edition_id=edition.id)
    ):
        transition_edition(edition, EditionStatus.SENDING)
    return Started(edition, content, queued, recovered)


@dataclass(frozen=True)
class Send:
    """One edition's send as a runner holds it: what every batch needs."""

    settings: Settings
    edition_id: int
    prepared: PreparedEdition
    primary: Provider
    secondary: Provider | None
    runner: str
    resend: bool

    def provider(self, name: str | None) -> Provider:
        """The provider the shared state names (the primary unless failed over)."""
        if self.secondary is not None and name == self.secondary.name:
            return self.secondary
        return self.primary


def open_send(
    sessions: sessionmaker[Session],
    *,
    settings: Settings,
    edition_id: int,
    primary: Provider,
    secondary: Provider | None = None,
    clock: Callable[[], datetime] = utcnow,
    fresh: bool = True,
) -> tuple[Send, Started]:
    """Start (or join) an edition's send as this process's runner.

    Checks the providers first (nothing is frozen when one cannot work), registers
    the runner, recovers the claims of runners that are gone, freezes what the
    first start freezes. ``fresh`` (a new send command, not a helper joining it)
    clears an earlier stop. Raises like :func:`preflight` and :func:`start_send`.
    """
    preflight(primary, secondary)
    resend = resend_uncertain(settings, primary)
    with transaction(sessions) as session:
        now = clock()
        dead = registry.gone(
            session, now=now, heartbeat_seconds=settings.delivery.heartbeat_seconds
        )
        runner = registry.register(session, now=now)
        started = start_send(
            session,
            settings=settings,
            edition_id=edition_id,
            now=now,
            resend=resend,
            gone=tuple(dead),
        )
        pacing.open_state(session, edition_id=edition_id, provider=primary.name, fresh=fresh)
        prepared = prepare(settings, started.edition, started.content)
    send = Send(settings, edition_id, prepared, primary, secondary, runner, resend)
    return send, started


class StepKind(StrEnum):
    """What one call of :func:`send_batch` did."""

    BATCH = "batch"  # a batch went to the provider
    WAIT = "wait"  # nothing to do now: look again at ``until`` (or soon)
    DONE = "done"  # every row is handled; the edition is sent
    STOPPED = "stopped"  # paused, cancelled, an outage, or every batch failing alike


@dataclass(frozen=True)
class Step:
    kind: StepKind
    recorded: ledger.Recorded | None = None
    until: datetime | None = None
    reason: str | None = None
    handed: int = 0  # recipients handed to the provider


def _recipients(send: Send, claimed: list[Claimed]) -> list[Recipient]:
    links = recipient_links(send.settings, send.prepared.newsletter)
    out = []
    for c in claimed:
        unsubscribe, preferences, mailto = links(c.subscriber_key)
        out.append(Recipient(c.id, c.email, c.name, unsubscribe, preferences, mailto))
    return out


def send_batch(
    sessions: sessionmaker[Session], send: Send, *, clock: Callable[[], datetime] = utcnow
) -> Step:
    """Send the next batch of ``send``'s edition: claim → provider → record.

    Returns what happened; raises ProviderConfigError when the provider refuses to
    work at all (the batch is handed back untouched first).
    """
    delivery = send.settings.delivery
    edition_id = send.edition_id
    with transaction(sessions) as session:
        status = editions.edition_status(session, edition_id)
        if status in (EditionStatus.PAUSED, EditionStatus.CANCELLED):
            return Step(StepKind.STOPPED, reason=status.value)
        name, stopped = pacing.current(session, edition_id=edition_id)
        if stopped:
            return Step(StepKind.STOPPED, reason=stopped)
        provider = send.provider(name)
        now = clock()
        wait = pacing.rate_wait(session, key=provider.name, rate=delivery.rate_per_second, now=now)
        if wait > 0:
            return Step(StepKind.WAIT, until=now + timedelta(seconds=wait))
        batch_id, claimed = ledger.claim_batch(
            session,
            edition_id=edition_id,
            limit=min(delivery.batch_size, provider.max_batch),
            lease_seconds=delivery.lease_seconds,
            now=now,
            runner_id=send.runner,
        )
        pacing.take_rate(
            session,
            key=provider.name,
            rate=delivery.rate_per_second,
            messages=len(claimed),
            now=now,
        )
    if not claimed:
        return _nothing_due(sessions, send, clock)
    recipients = _recipients(send, claimed)
    try:
        outcomes = provider.send_batch(send.prepared, recipients)
    except ProviderConfigError:
        with transaction(sessions) as session:
            ledger.release(session, batch_id=batch_id, claimed=claimed, now=clock())
        raise
    with transaction(sessions) as session:
        now = clock()
        recorded = ledger.record_outcomes(
            session,
            batch_id=batch_id,
            outcomes=outcomes,
            claimed=claimed,
            provider=provider.name,
            now=now,
            retry_base=delivery.retry_base_seconds,
            max_attempts=delivery.max_attempts,
            resend_uncertain=send.resend,
        )
        decision = pacing.observe(
            session,
            edition_id=edition_id,
            provider=provider.name,
            secondary=send.secondary.name if send.secondary else None,
            outcomes=outcomes,
            now=now,
            settings=delivery,
        )
    if decision.verdict in (pacing.Verdict.OUTAGE, pacing.Verdict.STOPPED):
        return Step(StepKind.STOPPED, recorded, reason=decision.reason, handed=len(claimed))
    return Step(StepKind.BATCH, recorded, handed=len(claimed))


def _nothing_due(
    sessions: sessionmaker[Session], send: Send, clock: Callable[[], datetime]
) -> Step:
    """No row to claim now: finish the edition, or say when to look again."""
    with transaction(sessions) as session:
        now = clock()
        ledger.expire_waiting(session, edition_id=send.edition_id, now=now)
        if finish_if_done(session, edition_id=send.edition_id, now=now):
            return Step(StepKind.DONE)
        due = log.next_due(session, edition_id=send.edition_id)
        lease = log.next_lease_expiry(session, edition_id=send.edition_id)
    # Rows claimed by another runner finish soon (or their lease runs out).
    until = min(t for t in (due, lease) if t is not None) if (due or lease) else None
    return Step(StepKind.WAIT, until=until)


def recover_gone(sessions: sessionmaker[Session], send: Send, *, now: datetime) -> int:
    """Recover the claims of runners that died meanwhile (a waiting runner's chore)."""
    with transaction(sessions) as session:
        dead = registry.gone(
            session, now=now, heartbeat_seconds=send.settings.delivery.heartbeat_seconds
        )
        return ledger.recover(
            session, edition_id=send.edition_id, now=now, resend=send.resend, gone=dead
        )


def finish_if_done(session: Session, *, edition_id: int, now: datetime) -> bool:
    """Mark a sending edition sent when nothing is open; True when nothing is."""
    if log.has_open(session, edition_id=edition_id):
        return False
    edition = editions.get_edition(session, edition_id, for_update=True)
    if edition.status is EditionStatus.SENDING:
        transition_edition(edition, EditionStatus.SENT)
        edition.send_finished_at = now
    return True


def send_test(
    session: Session, *, settings: Settings, edition_id: int, email: str, provider: Provider
) -> Outcome:
    """Send one copy of an edition to ``email`` only (subject ``[TEST] …``); no ledger row."""
    provider.check()
    edition = editions.get_edition(session, edition_id)
    content = editions.frozen_content(edition) or editions.render_edition(edition, settings)
    render.check_or_raise(content, edition_id=edition.id)
    test = replace(content, subject=TEST_PREFIX + content.subject.strip())
    prepared = prepare(settings, edition, test)
    who = recipient(
        settings, delivery_id=None, email=email, name="", key="test", newsletter=edition.newsletter
    )
    [outcome] = provider.send_batch(prepared, [who])
    return outcome


def pause(session: Session, *, edition_id: int) -> Edition:
    """Pause a send: runners stop after their batch; queued rows wait."""
    edition = editions.get_edition(session, edition_id, for_update=True)
    transition_edition(edition, EditionStatus.PAUSED)
    edition.status_reason = None
    return edition


def resume(session: Session, *, edition_id: int) -> Edition:
    """Allow a paused edition to send again (the caller then runs the send)."""
    edition = editions.get_edition(session, edition_id, for_update=True)
    if edition.status is not EditionStatus.PAUSED:
        raise StateError(
            f"edition {edition_id} is {edition.status.value}, not paused",
            code="edition.not_paused",
            edition_id=edition_id,
        )
    transition_edition(edition, EditionStatus.SENDING)
    edition.status_reason = None
    return edition


def requeue(
    session: Session,
    *,
    settings: Settings,
    edition_id: int,
    statuses: list[DeliveryStatus],
    now: datetime,
) -> int:
    """Queue an edition's uncertain or failed rows again, with a fresh retry window.

    Raises NotFoundError for an unknown edition. The next send of it sends them.
    """
    editions.get_edition(session, edition_id)
    return ledger.requeue(
        session,
        edition_id=edition_id,
        statuses=statuses,
        now=now,
        retry_until=now + settings.delivery.retry_delay,
    )


def cancel(session: Session, *, edition_id: int, now: datetime | None = None) -> int:
    """Cancel an edition: nothing more is sent; returns how many deliveries were cancelled."""
    edition = editions.get_edition(session, edition_id, for_update=True)
    transition_edition(edition, EditionStatus.CANCELLED)
    return ledger.cancel_open(session, edition_id=edition_id, now=now or utcnow())
