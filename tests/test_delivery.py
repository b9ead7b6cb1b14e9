"""The delivery ledger and the sender loop on a real database, with real providers."""

from __future__ import annotations

import email
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions
from newsletter.content.types import RenderedEdition
from newsletter.delivery import ledger, links, log, pacing, runner, sender
from newsletter.delivery.providers.files import OutboxProvider
from newsletter.delivery.providers.scripted import ScriptedProvider, script
from newsletter.errors import ProviderConfigError, StateError
from newsletter.models import (
    Delivery,
    DeliveryFailure,
    DeliveryStatus,
    Edition,
    EditionStatus,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
    utcnow,
)
from tests import factories
from tests.factories import FakeClock


def _edition(sessions: sessionmaker[Session], settings: Settings, readers: int = 5) -> int:
    with sessions.begin() as s:
        for _ in range(readers):
            factories.subscriber(s)
        for _ in range(3):
            factories.story(s)
        edition, _ = editions.build_edition(s, settings=settings, slug="daily-briefing")
        return edition.id


def _eml_files(settings: Settings) -> list[Path]:
    return sorted(settings.outbox_path.rglob("*.eml"))


def _parse(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def Recording(  # noqa: N802 (reads like the class it stands for)
    actions: Sequence[str] = (), *, name: str = "recording", default: str = "ok"
) -> ScriptedProvider:
    """A provider answering batch N with ``actions[N]`` (then ``default``), two at a time."""
    return ScriptedProvider(script(actions, then=default), name=name, max_batch=2)


def test_freeze_audience_only_confirmed_and_not_suppressed(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    with sessions.begin() as s:
        factories.subscriber(s, "yes@example.com")
        factories.subscriber(s, "pending@example.com", status=SubscriptionStatus.PENDING)
        factories.subscriber(s, "gone@example.com", status=SubscriptionStatus.UNSUBSCRIBED)
        factories.subscriber(s, "other@example.com", newsletters=("good-news",))
        factories.subscriber(s, "bounced@example.com")
        s.add(
            Suppression(
                email_hash="x" * 64, email="bounced@example.com", reason=SuppressionReason.BOUNCED
            )
        )
        factories.story(s)
        edition, _ = editions.build_edition(s, settings=settings, slug="daily-briefing")
        assert ledger.audience_count(s, slug="daily-briefing") == 1
        assert (
            ledger.freeze_audience(s, edition_id=edition.id, slug="daily-briefing", now=utcnow())
            == 1
        )
        assert (
            ledger.freeze_audience(s, edition_id=edition.id, slug="daily-briefing", now=utcnow())
            == 0
        )
        emails = s.scalars(select(Delivery.email)).all()
    assert emails == ["yes@example.com"]


def test_outbox_send_writes_one_eml_each_and_never_twice(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    eid = _edition(sessions, settings, readers=7)
    provider = OutboxProvider(settings.outbox_path)
    first = runner.send_edition(sessions, settings=settings, edition_id=eid, provider=provider)
    assert (first.sent, first.failed, first.newly_queued) == (7, 0, 7)
    assert first.complete
    files = _eml_files(settings)
    assert len(files) == 7
    again = runner.send_edition(sessions, settings=settings, edition_id=eid, provider=provider)
    assert (again.sent, again.newly_queued) == (0, 0)
    assert len(_eml_files(settings)) == 7
    with sessions() as s:
        assert editions.get_edition(s, eid).status is EditionStatus.SENT
        rows = s.scalars(select(Delivery)).all()
        assert {r.status for r in rows} == {DeliveryStatus.SENT}
        assert all(r.provider == "outbox" and r.provider_message_id for r in rows)
    ids = {str(_parse(f)["Message-ID"]) for f in files}
    assert ids == {r.provider_message_id for r in rows}


def test_late_subscriber_is_not_added_to_a_frozen_audience(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    eid = _edition(sessions, settings, readers=2)
    provider = OutboxProvider(settings.outbox_path)
    runner.send_edition(sessions, settings=settings, edition_id=eid, provider=provider)
    with sessions.begin() as s:
        factories.subscriber(s, "late@example.com")
    report = runner.send_edition(sessions, settings=settings, edition_id=eid, provider=provider)
    assert report.sent == 0 and report.audience == 2


def test_transient_errors_retry_then_succeed(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    eid = _edition(sessions, settings, readers=4)
    provider = Recording(["retry", "ok", "ok"])
    clock = FakeClock()
    report = runner.send_edition(
        sessions,
        settings=settings,
        edition_id=eid,
        provider=provider,
        clock=clock,
        sleep=clock.sleep,
    )
    assert clock.slept > 0  # it waited for the retry to fall due
    assert report.complete and report.counts[DeliveryStatus.SENT] == 4
    assert set(provider.copies.values()) == {1}  # nobody twice
    assert report.retried == 2


def _with(settings: Settings, **delivery: object) -> Settings:
    return settings.model_copy(update={"delivery": settings.delivery.model_copy(update=delivery)})


def test_transient_faults_retry_until_the_window_closes(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    conf = _with(settings, retry_window="10m", max_attempts=1000, outage_seconds=3600)
    eid = _edition(sessions, conf, readers=1)
    provider = Recording(default="retry")
    clock = FakeClock()
    start = clock.now
    report = runner.send_edition(
        sessions, settings=conf, edition_id=eid, provider=provider, clock=clock, sleep=clock.sleep
    )
    assert report.counts[DeliveryStatus.FAILED] == 1 and not report.ok
    assert report.summary.failures == {DeliveryFailure.EXPIRED: 1}
    with sessions() as s:
        row = s.scalars(select(Delivery)).one()
    assert row.error and row.error.startswith("retry window closed: scripted retry")
    # it kept trying while a next attempt fitted the window (each call one attempt)
    assert row.attempts == len(provider.calls) > 5
    assert clock.now - start <= timedelta(minutes=10)


def test_max_attempts_is_a_safety_cap(sessions: sessionmaker[Session], settings: Settings) -> None:
    conf = _with(settings, max_attempts=3)
    eid = _edition(sessions, conf, readers=1)
    clock = FakeClock()
    report = runner.send_edition(
        sessions,
        settings=conf,
        edition_id=eid,
        provider=Recording(default="retry"),
        clock=clock,
        sleep=clock.sleep,
    )
    assert report.counts[DeliveryStatus.FAILED] == 1
    with sessions() as s:
        row = s.scalars(select(Delivery)).one()
    assert row.attempts == 3 and row.failure is DeliveryFailure.EXPIRED
    assert row.error and "gave up after 3 attempts" in row.error


def test_permanent_failure_is_recorded_not_retried(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    eid = _edition(sessions, settings, readers=2)
    report = runner.send_edition(
        sessions, settings=settings, edition_id=eid, provider=Recording(["fail"])
    )
    assert report.counts[DeliveryStatus.FAILED] == 2 and report.complete


def test_provider_config_error_releases_the_batch(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    eid = _edition(sessions, settings, readers=3)
    with pytest.raises(ProviderConfigError):
        runner.send_edition(
            sessions, settings=settings, edition_id=eid, provider=Recording(["config"])
        )
    with sessions() as s:
        assert log.stats(s, edition_id=eid)[DeliveryStatus.QUEUED] == 3
        assert s.scalar(select(func.max(Delivery.attempts))) == 0
    report = runner.send_edition(sessions, settings=settings, edition_id=eid, provider=Recording())
    assert report.counts[DeliveryStatus.SENT] == 3


@pytest.mark.parametrize("policy_", ["skip", "resend"])
def test_expired_batch_becomes_uncertain(
    sessions: sessionmaker[Session], settings: Settings, policy_: str
) -> None:
    settings = settings.model_copy(
        update={"delivery": settings.delivery.model_copy(update={"uncertain": policy_})}
    )
    eid = _edition(sessions, settings, readers=3)
    long_ago = utcnow() - timedelta(hours=1)
    with sessions.begin() as s:
        sender.start_send(s, settings=settings, edition_id=eid, now=long_ago)
        # a sender claimed a batch, handed it to the provider, and died
        _, claimed = ledger.claim_batch(s, edition_id=eid, limit=2, lease_seconds=60, now=long_ago)
    assert len(claimed) == 2
    provider = Recording()
    report = runner.send_edition(sessions, settings=settings, edition_id=eid, provider=provider)
    assert report.recovered_uncertain == 2
    if policy_ == "skip":
        assert report.counts[DeliveryStatus.UNCERTAIN] == 2
        assert report.counts[DeliveryStatus.SENT] == 1
        assert sum(provider.copies.values()) == 1
    else:
        assert report.counts[DeliveryStatus.SENT] == 3
        assert sum(provider.copies.values()) == 3


def test_pause_resume_cancel(sessions: sessionmaker[Session], settings: Settings) -> None:
    eid = _edition(sessions, settings, readers=6)
    with sessions.begin() as s:
        sender.start_send(s, settings=settings, edition_id=eid, now=utcnow())
        sender.pause(s, edition_id=eid)
    with pytest.raises(StateError, match="paused"):
        runner.send_edition(sessions, settings=settings, edition_id=eid, provider=Recording())
    with sessions.begin() as s:
        sender.resume(s, edition_id=eid)
    provider = Recording()
    report = runner.send_edition(sessions, settings=settings, edition_id=eid, provider=provider)
    assert report.counts[DeliveryStatus.SENT] == 6
    with sessions.begin() as s:
        with pytest.raises(StateError):
            sender.cancel(s, edition_id=eid)  # already sent: nothing to cancel


def test_cancel_stops_unsent(sessions: sessionmaker[Session], settings: Settings) -> None:
    eid = _edition(sessions, settings, readers=4)
    with sessions.begin() as s:
        sender.start_send(s, settings=settings, edition_id=eid, now=utcnow())
        assert sender.cancel(s, edition_id=eid) == 4
    with pytest.raises(StateError, match="cancelled"):
        runner.send_edition(sessions, settings=settings, edition_id=eid, provider=Recording())


def test_two_claimers_never_share_a_row(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    eid = _edition(sessions, settings, readers=10)
    with sessions.begin() as s:
        sender.start_send(s, settings=settings, edition_id=eid, now=utcnow())
    seen: list[int] = []
    for _ in range(6):
        with sessions.begin() as s:
            _, claimed = ledger.claim_batch(
                s, edition_id=eid, limit=3, lease_seconds=60, now=utcnow()
            )
            seen += [c.id for c in claimed]
    assert len(seen) == len(set(seen)) == 10


def _with_delivery(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"delivery": settings.delivery.model_copy(update=changes)})


def test_concurrent_senders_deliver_each_recipient_once(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    settings = _with_delivery(settings, concurrency=4)
    eid = _edition(sessions, settings, readers=41)
    provider = Recording()
    report = runner.send_edition(sessions, settings=settings, edition_id=eid, provider=provider)
    assert report.complete and report.counts[DeliveryStatus.SENT] == 41
    assert len(provider.copies) == 41 and set(provider.copies.values()) == {1}
    assert report.sent == 41


def test_failover_to_secondary_after_threshold(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    settings = _with_delivery(settings, failover_after=2)
    eid = _edition(sessions, settings, readers=6)
    primary = Recording(name="primary", default="retry")
    secondary = Recording(name="secondary")
    clock = FakeClock()
    report = runner.send_edition(
        sessions,
        settings=settings,
        edition_id=eid,
        provider=primary,
        secondary=secondary,
        clock=clock,
        sleep=clock.sleep,
    )
    assert report.counts[DeliveryStatus.SENT] == 6
    assert sum(primary.copies.values()) == 0
    assert set(secondary.copies.values()) == {1} and len(secondary.copies) == 6
    with sessions() as s:
        carriers = Counter(s.scalars(select(Delivery.provider)).all())
    assert carriers == {"secondary": 6}


def test_the_shared_rate_spaces_batches(sessions: sessionmaker[Session]) -> None:
    t0 = utcnow()
    with sessions.begin() as s:
        assert pacing.rate_wait(s, key="p", rate=1000.0, now=t0) == 0.0
        pacing.take_rate(s, key="p", rate=1000.0, messages=500, now=t0)
    with sessions.begin() as s:  # another runner, another transaction: the same rate
        assert pacing.rate_wait(s, key="p", rate=1000.0, now=t0) == pytest.approx(0.5)
        later = t0 + timedelta(seconds=0.5)
        assert pacing.rate_wait(s, key="p", rate=1000.0, now=later) == 0.0
        pacing.take_rate(s, key="p", rate=1000.0, messages=1000, now=later)
        assert pacing.rate_wait(s, key="p", rate=1000.0, now=later) == pytest.approx(1.0)
        # idle time does not bank a burst beyond the current instant
        idle = t0 + timedelta(seconds=10)
        pacing.take_rate(s, key="p", rate=1000.0, messages=10, now=idle)
        assert pacing.rate_wait(s, key="p", rate=1000.0, now=idle) == pytest.approx(0.01)
        assert pacing.rate_wait(s, key="other", rate=1000.0, now=idle) == 0.0


def test_leaving_mid_send_cancels_what_was_not_yet_sent(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    from newsletter.audience import subscribers, suppression

    eid = _edition(sessions, settings, readers=3)
    with sessions.begin() as s:
        sender.start_send(s, settings=settings, edition_id=eid, now=utcnow())
        first, second, third = s.scalars(select(Delivery.email).order_by(Delivery.id)).all()
        subscribers.unsubscribe(s, email=first, newsletter="daily-briefing")
        suppression.suppress(s, email=second, reason=SuppressionReason.COMPLAINED)
    provider = Recording()
    report = runner.send_edition(sessions, settings=settings, edition_id=eid, provider=provider)
    assert set(provider.copies) == {third}
    assert report.counts[DeliveryStatus.CANCELLED] == 2 and report.complete


def test_helper_processes_share_an_edition_without_overlap(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    settings = _with_delivery(settings, processes=2, batch_size=5)
    eid = _edition(sessions, settings, readers=60)
    report = runner.send_edition(
        sessions, settings=settings, edition_id=eid, provider=OutboxProvider(settings.outbox_path)
    )
    assert report.complete and report.sent == 60
    files = _eml_files(settings)
    assert len(files) == 60
    assert len({str(_parse(f)["To"]) for f in files}) == 60


def test_idempotent_provider_resends_an_uncertain_batch_exactly_once(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    assert settings.delivery.uncertain == "skip"
    eid = _edition(sessions, settings, readers=4)
    provider = OutboxProvider(settings.outbox_path)
    long_ago = utcnow() - timedelta(hours=1)
    with sessions.begin() as s:
        sender.start_send(s, settings=settings, edition_id=eid, now=long_ago)
        _, claimed = ledger.claim_batch(s, edition_id=eid, limit=2, lease_seconds=60, now=long_ago)
    # the dead sender had written these two files before it could record them
    prepared = sender.prepare(settings, *_content(sessions, settings, eid))
    provider.send_batch(
        prepared,
        [
            links.recipient(
                settings,
                delivery_id=c.id,
                email=c.email,
                name=c.name,
                key=c.subscriber_key,
                newsletter="daily-briefing",
            )
            for c in claimed
        ],
    )
    report = runner.send_edition(sessions, settings=settings, edition_id=eid, provider=provider)
    assert report.counts[DeliveryStatus.SENT] == 4 and report.counts[DeliveryStatus.UNCERTAIN] == 0
    assert len(_eml_files(settings)) == 4


def _content(
    sessions: sessionmaker[Session], settings: Settings, eid: int
) -> tuple[Edition, RenderedEdition]:
    with sessions() as s:
        edition = editions.get_edition(s, eid)
        content = editions.frozen_content(edition)
        assert content is not None
        return edition, content


def test_a_send_failing_everyone_for_one_reason_stops(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    eid = _edition(sessions, settings, readers=10)
    stopped = runner.send_edition(
        sessions, settings=settings, edition_id=eid, provider=Recording(default="fail")
    )
    assert stopped.stopped and "last 3 batches failed with 'scripted fail'" in stopped.stopped
    assert not stopped.ok
    # the readers are not to blame: their failures count as the send's
    assert stopped.summary.failures == {DeliveryFailure.STOPPED: 6}
    with sessions() as s:
        counts = log.stats(s, edition_id=eid)
    assert counts[DeliveryStatus.FAILED] == 6 and counts[DeliveryStatus.QUEUED] == 4
    again = runner.send_edition(  # a new send command after the fix goes on
        sessions, settings=settings, edition_id=eid, provider=Recording()
    )
    assert again.counts[DeliveryStatus.SENT] == 4 and not again.ok
    with sessions.begin() as s:
        assert (
            ledger.requeue(s, edition_id=eid, statuses=[DeliveryStatus.FAILED], now=utcnow()) == 6
        )
    report = runner.send_edition(sessions, settings=settings, edition_id=eid, provider=Recording())
    assert report.counts[DeliveryStatus.SENT] == 10
