"""The scheduler: regular runs, staleness, waves, holds, one-offs, the lease, history.

Job bodies are driven with an explicit clock; the APScheduler wiring is exercised by
real threads running the daemon loop for a couple of seconds, and by the end-to-end
test in test_scheduler_e2e.py (real processes, killed and restarted).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time as wall
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import db
from newsletter.cli import cli
from newsletter.config import Settings, load_settings
from newsletter.content import editions
from newsletter.delivery.providers.base import Outcome, PreparedEdition, Provider, Recipient
from newsletter.delivery.providers.scripted import ScriptedProvider, accept
from newsletter.errors import ConfigError, InputError
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Edition,
    EditionStatus,
    JobOutcome,
    JobRun,
    ScheduledSend,
    ScheduledSendStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    utcnow,
)
from newsletter.schedule import jobs, records, scheduler
from newsletter.schedule.oneoff import parse_send_time
from tests import factories
from tests.conftest import CliRun, write_config

NY = ZoneInfo("America/New_York")
SLUG = "daily-briefing"


def ny(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=NY).astimezone(UTC)


class Clock:
    """A settable clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def Recording(  # noqa: N802 (reads like the class it stands for)
    die_on: int | None = None, dying: type[BaseException] = RuntimeError
) -> ScriptedProvider:
    """A provider that accepts batches of two, and raises ``dying`` in call ``die_on``."""
    calls = 0

    def handler(edition: PreparedEdition, recipients: Sequence[Recipient]) -> list[Outcome]:
        nonlocal calls
        calls += 1
        if calls == die_on:
            raise dying("killed mid-send")
        return accept(edition, recipients)

    return ScriptedProvider(handler, name="recording", max_batch=2)


def providers_of(provider: ScriptedProvider) -> Callable[[Settings], Any]:
    @contextmanager
    def open_(settings: Settings) -> Iterator[tuple[Provider, None]]:
        yield provider, None

    return open_


def configure(settings: Settings, slug: str = SLUG, **changes: Any) -> Settings:
    """The test settings with no feeds to fetch and ``changes`` to one newsletter."""
    letters = {k: v.model_copy(update={"feeds": []}) for k, v in settings.newsletters.items()}
    letters[slug] = letters[slug].model_copy(update=changes)
    return settings.model_copy(update={"newsletters": letters})


def runtime(
    settings: Settings,
    sessions: sessionmaker[Session],
    clock: Callable[[], datetime],
    provider: ScriptedProvider,
    holder: str = "A",
) -> records.Runtime:
    return records.Runtime(
        settings=settings,
        sessions=sessions,
        holder=holder,
        clock=clock,
        providers=providers_of(provider),
    )


def seed(
    sessions: sessionmaker[Session], now: datetime, readers: int = 5, **zones: str | None
) -> list[str]:
    """Subscribers (``readers`` without a zone, plus name=zone ones) and fresh stories."""
    with sessions.begin() as s:
        emails = [factories.subscriber(s).email for _ in range(readers)]
        for name, tz in zones.items():
            emails.append(factories.subscriber(s, f"{name}@example.com", timezone=tz).email)
        for _ in range(3):
            factories.story(s, now=now)
    return emails


def runs(sessions: sessionmaker[Session]) -> list[JobRun]:
    with sessions() as s:
        return list(s.scalars(select(JobRun).order_by(JobRun.id)))


def statuses(sessions: sessionmaker[Session]) -> Counter[DeliveryStatus]:
    with sessions() as s:
        return Counter(s.scalars(select(Delivery.status)))


# ----- triggers and DST -------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "tz", "now", "expected"),
    [
        ("30 6 * * *", "America/New_York", "2026-03-08T10:31", "2026-03-08T10:30"),  # EDT
        ("30 6 * * *", "America/New_York", "2026-03-07T11:31", "2026-03-07T11:30"),  # EST
        ("30 6 * * *", "America/New_York", "2026-11-01T11:31", "2026-11-01T11:30"),  # EST
        ("30 2 * * *", "America/New_York", "2026-03-08T08:00", "2026-03-08T07:30"),  # gap
        ("15 2 * * *", "Australia/Lord_Howe", "2026-10-03T16:00", "2026-10-03T15:45"),  # gap
        ("30 6 * * *", "Australia/Lord_Howe", "2026-10-03T19:40", "2026-10-03T19:30"),  # +11
        ("30 6 * * *", "Australia/Lord_Howe", "2026-10-02T20:10", "2026-10-02T20:00"),  # +10:30
    ],
)
def test_cron_fire_times_across_dst(schedule: str, tz: str, now: str, expected: str) -> None:
    nl = Settings().newsletters[SLUG].model_copy(update={"schedule": schedule, "timezone": tz})
    fire = scheduler.last_fire_time(
        scheduler.build_trigger(nl),
        now=datetime.fromisoformat(now).replace(tzinfo=UTC),
        lookback=timedelta(hours=3),
    )
    assert fire == datetime.fromisoformat(expected).replace(tzinfo=UTC)


def test_review_window_trigger_fires_earlier_and_pickles() -> None:
    nl = (
        Settings()
        .newsletters[SLUG]
        .model_copy(
            update={"schedule": "0 6 * * *", "timezone": "America/New_York", "review_minutes": 45}
        )
    )
    trigger = pickle.loads(pickle.dumps(scheduler.build_trigger(nl)))
    fire = trigger.get_next_fire_time(None, ny(2026, 3, 9, 0, 0))
    assert fire.astimezone(NY).strftime("%H:%M") == "05:15"
    later = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    assert later - fire == timedelta(days=1)


def test_fall_back_double_fire_sends_once(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = configure(settings, schedule="30 1 * * *")
    clock = Clock(datetime(2026, 11, 1, 5, 30, 5, tzinfo=UTC))  # 01:30:05 EDT
    seed(sessions, clock.now, readers=3)
    provider = Recording()
    rt = runtime(s, sessions, clock, provider)
    scheduler.run_newsletter_job(rt, slug=SLUG)
    clock.advance(hours=1)  # 01:30:05 EST: APScheduler fires the same wall time again
    scheduler.run_newsletter_job(rt, slug=SLUG)
    assert set(provider.copies.values()) == {1} and len(provider.copies) == 3
    builds = [r for r in runs(sessions) if r.kind == "build"]
    assert [r.outcome for r in builds] == [JobOutcome.OK, JobOutcome.SKIPPED]
    assert "already" in builds[1].detail


# ----- regular runs, staleness, failures -----------------------------------------


def test_regular_run_sends_once_and_is_recorded(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = configure(settings)
    clock = Clock(ny(2026, 3, 9, 6, 30, 5))
    emails = seed(sessions, clock.now)
    provider = Recording()
    rt = runtime(s, sessions, clock, provider)
    scheduler.run_due(rt, paused=set())
    scheduler.run_due(rt, paused=set())  # again: the run for 06:30 is done
    clock.advance(minutes=1)
    jobs.dispatch(rt)
    assert provider.copies == Counter({e: 1 for e in emails})
    build, send = runs(sessions)
    assert (build.job_id, build.outcome, build.scheduled_for) == (
        "newsletter:daily-briefing",
        JobOutcome.OK,
        ny(2026, 3, 9, 6, 30),
    )
    assert build.counts["stories"] == 3 and build.ended_at is not None
    assert (send.job_id, send.outcome, send.counts["sent"]) == ("send:1", JobOutcome.OK, 5)
    with sessions() as db:
        assert db.scalar(select(ScheduledSend.status)) is ScheduledSendStatus.DONE


@pytest.mark.parametrize(("stale", "late"), [("11:00", (11, 0, 1)), ("2h", (8, 30, 1))])
def test_run_past_its_staleness_deadline_is_skipped(
    sessions: sessionmaker[Session], settings: Settings, stale: str, late: tuple[int, int, int]
) -> None:
    s = configure(settings, stale_after=stale)
    clock = Clock(ny(2026, 3, 9, *late))  # the scheduler was down since before 06:30
    seed(sessions, clock.now)
    provider = Recording()
    scheduler.run_due(runtime(s, sessions, clock, provider), paused=set())
    [run] = runs(sessions)
    assert run.outcome is JobOutcome.SKIPPED and "deadline" in run.detail
    assert not provider.copies
    with sessions() as db:
        assert db.scalar(select(func.count()).select_from(Edition)) == 0


def test_late_but_within_deadline_runs_once(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = configure(settings, stale_after="11:00")
    clock = Clock(ny(2026, 3, 9, 10, 59))  # restarted after downtime: one run, not a burst
    seed(sessions, clock.now, readers=2)
    provider = Recording()
    scheduler.run_due(runtime(s, sessions, clock, provider), paused=set())
    assert len(provider.copies) == 2
    assert [r.scheduled_for for r in runs(sessions) if r.kind == "build"] == [ny(2026, 3, 9, 6, 30)]


def test_job_that_raises_is_recorded_and_the_next_runs(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = configure(settings)
    clock = Clock(ny(2026, 3, 9, 6, 30, 5))
    with sessions.begin() as db:  # readers, but no stories: building raises
        factories.subscriber(db, "a@example.com")
        records.schedule_send(
            db, newsletter="good-news", send_at=clock.now, source="at", issue_date=None
        )
    provider = Recording()
    rt = runtime(s, sessions, clock, provider)
    scheduler.run_due(rt, paused=set())
    failed = [r for r in runs(sessions) if r.outcome is JobOutcome.FAILED]
    assert {r.job_id for r in failed} == {"newsletter:daily-briefing", "send:1"}
    build = failed[0]
    assert "Traceback" in (build.error or "") and "NoStoriesError" in (build.error or "")
    assert build.detail.startswith("NoStoriesError: no eligible stories")
    # The scheduler carries on: stories arrive and the next run sends.
    seed(sessions, clock.now, readers=0)
    with sessions.begin() as db:
        records.schedule_send(db, newsletter=SLUG, send_at=clock.now, source="at")
    clock.advance(minutes=1)
    jobs.dispatch(rt)
    assert provider.copies == Counter({"a@example.com": 1})
    # The failed one-off was given up, not retried (and recorded) every minute.
    with sessions() as db:
        assert db.get(ScheduledSend, 1).status is ScheduledSendStatus.FAILED  # type: ignore[union-attr]
    assert [r.job_id for r in runs(sessions) if r.outcome is JobOutcome.FAILED] == [
        "newsletter:daily-briefing",
        "send:1",
    ]


def test_failed_check_holds_the_edition_and_logs_why(
    sessions: sessionmaker[Session], settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    s = configure(settings, subject="{{ '' }}")
    clock = Clock(ny(2026, 3, 9, 6, 30, 5))
    seed(sessions, clock.now)
    provider = Recording()
    with caplog.at_level(logging.WARNING):
        scheduler.run_due(runtime(s, sessions, clock, provider), paused=set())
    [run] = runs(sessions)
    assert run.outcome is JobOutcome.HELD and "subject is empty" in run.detail
    assert "subject is empty" in caplog.text
    assert not provider.copies
    with sessions() as db:
        assert db.scalar(select(Edition.status)) is EditionStatus.HELD
        assert db.scalar(select(ScheduledSend.status)) is ScheduledSendStatus.PENDING


def test_interrupted_run_resumes_and_sends_nobody_twice(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = configure(settings)
    s = s.model_copy(update={"delivery": s.delivery.model_copy(update={"uncertain": "resend"})})
    clock = Clock(ny(2026, 3, 9, 6, 30, 5))
    emails = seed(sessions, clock.now, readers=7)
    dying = Recording(die_on=3, dying=SystemExit)  # the process dies in its third batch
    with pytest.raises(SystemExit):
        scheduler.run_due(runtime(s, sessions, clock, dying), paused=set())
    assert sum(dying.copies.values()) == 4
    assert [r.outcome for r in runs(sessions)] == [JobOutcome.OK, JobOutcome.RUNNING]
    # A new scheduler takes over once the dead one's delivery lease has expired.
    clock.advance(seconds=s.delivery.lease_seconds + 61)
    fresh = Recording()
    rt = runtime(s, sessions, clock, fresh, holder="B")
    with sessions.begin() as db:
        assert records.interrupt_orphans(db, holder="B", now=clock.now) == 1
    scheduler.run_due(rt, paused=set())
    both = dying.copies + fresh.copies
    assert both == Counter({e: 1 for e in emails})  # the lost batch resent, nobody twice
    assert statuses(sessions) == Counter({DeliveryStatus.SENT: 7})
    assert JobOutcome.INTERRUPTED in [r.outcome for r in runs(sessions)]


def test_provider_crash_is_recorded_and_the_send_continues(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = configure(settings)
    clock = Clock(ny(2026, 3, 9, 6, 30, 5))
    emails = seed(sessions, clock.now, readers=6)
    provider = Recording(die_on=2)
    rt = runtime(s, sessions, clock, provider)
    scheduler.run_due(rt, paused=set())
    failed = [r for r in runs(sessions) if r.outcome is JobOutcome.FAILED]
    assert failed and "RuntimeError: killed mid-send" in (failed[0].error or "")
    clock.advance(seconds=s.delivery.lease_seconds + 1)
    jobs.dispatch(rt)  # the claimed batch became uncertain (skip): the rest goes out
    assert max(provider.copies.values()) == 1
    assert len(provider.copies) == 4 and set(provider.copies) < set(emails)
    assert statuses(sessions) == Counter({DeliveryStatus.SENT: 4, DeliveryStatus.UNCERTAIN: 2})


# ----- local-time waves --------------------------------------------------------------


def test_waves_go_out_at_each_zones_local_time(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    # Built at 11:00 New York on 14 June: the issue of 15 June, first wave in Kiritimati.
    s = configure(settings, schedule="0 11 * * *", local_time="06:30", stale_after="11:00")
    clock = Clock(ny(2026, 6, 14, 11, 0, 5))
    zones = {
        "kiri": "Pacific/Kiritimati",
        "howe": "Australia/Lord_Howe",
        "london": "Europe/London",
        "ny": "America/New_York",
        "pago": "Pacific/Pago_Pago",
    }
    zoneless = set(seed(sessions, clock.now, readers=2, **zones)[:2])
    provider = Recording()
    rt = runtime(s, sessions, clock, provider)
    scheduler.run_due(rt, paused=set())
    assert not provider.copies
    with sessions() as db:
        edition = db.scalars(select(Edition)).one()
        assert edition.issue_date == date(2026, 6, 15)
    expected = [
        (datetime(2026, 6, 14, 16, 30, tzinfo=UTC), {"kiri@example.com"}),
        (datetime(2026, 6, 14, 20, 0, tzinfo=UTC), {"howe@example.com"}),
        (datetime(2026, 6, 15, 5, 30, tzinfo=UTC), {"london@example.com"}),
        (datetime(2026, 6, 15, 10, 30, tzinfo=UTC), {"ny@example.com", *zoneless}),
        (datetime(2026, 6, 15, 17, 30, tzinfo=UTC), {"pago@example.com"}),
    ]
    for instant, who in expected:
        clock.now = instant - timedelta(seconds=30)
        before = Counter(provider.copies)
        jobs.dispatch(rt)
        assert provider.copies == before  # not yet
        clock.now = instant
        jobs.dispatch(rt)
        assert set((provider.copies - before).keys()) == who
    assert set(provider.copies.values()) == {1} and len(provider.copies) == 7
    with sessions() as db:
        assert db.scalar(select(ScheduledSend.status)) is ScheduledSendStatus.DONE
        assert db.scalar(select(Edition.status)) is EditionStatus.SENT
    assert (datetime(2026, 6, 15, 17, 30) - datetime(2026, 6, 14, 16, 30)) > timedelta(hours=24)


def test_a_wave_missed_during_downtime_is_skipped_not_sent_late(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = configure(settings, schedule="0 11 * * *", local_time="06:30", stale_after="11:00")
    clock = Clock(ny(2026, 6, 14, 11, 0, 5))
    seed(sessions, clock.now, readers=0, ny="America/New_York", pago="Pacific/Pago_Pago")
    provider = Recording()
    rt = runtime(s, sessions, clock, provider)
    scheduler.run_due(rt, paused=set())
    clock.now = ny(2026, 6, 15, 11, 30)  # back after New York's 11:00 deadline
    jobs.dispatch(rt)
    assert not provider.copies
    clock.now = datetime(2026, 6, 15, 17, 31, tzinfo=UTC)  # Pago Pago's wave is on time
    jobs.dispatch(rt)
    assert provider.copies == Counter({"pago@example.com": 1})
    with sessions() as db:
        ny_row = db.scalars(select(Delivery).where(Delivery.email == "ny@example.com")).one()
    assert ny_row.status is DeliveryStatus.CANCELLED and "staleness" in (ny_row.error or "")
    stale_runs = [r for r in runs(sessions) if r.counts.get("stale")]
    assert stale_runs and stale_runs[0].counts["stale"] == 1


# ----- review window and holds ----------------------------------------------------------


def test_review_window_hold_and_release(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = configure(settings, review_minutes=30)
    clock = Clock(ny(2026, 3, 9, 6, 0, 5))  # the review build runs 30 minutes early
    seed(sessions, clock.now, readers=3)
    provider = Recording()
    rt = runtime(s, sessions, clock, provider)
    scheduler.run_due(rt, paused=set())
    [build] = runs(sessions)
    assert build.outcome is JobOutcome.OK and "sending at 06:30" in build.detail
    with sessions.begin() as db:
        editions.hold_edition(db, edition_id=1, reason="checking a quote")
    clock.now = ny(2026, 3, 9, 6, 31)
    jobs.dispatch(rt)
    assert not provider.copies
    with sessions.begin() as db:
        editions.release_edition(db, edition_id=1)
    clock.now = ny(2026, 3, 9, 6, 40)
    jobs.dispatch(rt)
    assert len(provider.copies) == 3


def test_edition_not_held_goes_out_on_time(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = configure(settings, review_minutes=30)
    clock = Clock(ny(2026, 3, 9, 6, 0, 5))
    seed(sessions, clock.now, readers=2)
    provider = Recording()
    rt = runtime(s, sessions, clock, provider)
    scheduler.run_due(rt, paused=set())
    clock.now = ny(2026, 3, 9, 6, 29, 59)
    jobs.dispatch(rt)
    assert not provider.copies
    clock.now = ny(2026, 3, 9, 6, 30)
    jobs.dispatch(rt)
    assert len(provider.copies) == 2


def test_released_after_the_deadline_is_skipped(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = configure(settings, review_minutes=30, stale_after="11:00")
    clock = Clock(ny(2026, 3, 9, 6, 0, 5))
    seed(sessions, clock.now, readers=2)
    provider = Recording()
    rt = runtime(s, sessions, clock, provider)
    scheduler.run_due(rt, paused=set())
    with sessions.begin() as db:
        editions.hold_edition(db, edition_id=1)
        editions.release_edition(db, edition_id=1)
        editions.hold_edition(db, edition_id=1)
    clock.now = ny(2026, 3, 9, 11, 5)
    with sessions.begin() as db:
        editions.release_edition(db, edition_id=1)
    jobs.dispatch(rt)
    assert not provider.copies
    with sessions() as db:
        assert db.scalar(select(ScheduledSend.status)) is ScheduledSendStatus.SKIPPED


def test_hold_refused_once_sending(run_cli: CliRun, sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as db:
        factories.story(db)
    run_cli("edition", "build", "--newsletter", SLUG)
    assert "held" in run_cli("edition", "hold", "1").output
    refused = run_cli("send", "--edition", "1", expect=1)
    assert "held for review" in refused.output
    assert "released" in run_cli("edition", "release", "1").output
    run_cli("send", "--edition", "1")
    assert "only a built edition" in run_cli("edition", "hold", "1", expect=1).output


# ----- one-off sends, the jobs CLI -------------------------------------------------------


def test_send_at_fires_once(
    run_cli: CliRun, sessions: sessionmaker[Session], settings: Settings
) -> None:
    seed(sessions, utcnow(), readers=3)
    # An hour from now in New York, so the seeded stories are still fresh when it fires.
    at = (utcnow() + timedelta(hours=1)).astimezone(NY).strftime("%H:%M")
    out = run_cli("send", "--newsletter", SLUG, "--at", at).output
    assert "scheduled send:1" in out
    with sessions() as db:
        send_at = db.scalars(select(ScheduledSend.send_at)).one()
    assert send_at.astimezone(NY).strftime("%H:%M") == at
    provider = Recording()
    clock = Clock(send_at - timedelta(minutes=1))
    rt = runtime(configure(settings), sessions, clock, provider)
    jobs.dispatch(rt)
    assert not provider.copies
    clock.now = send_at + timedelta(seconds=1)
    jobs.dispatch(rt)
    clock.advance(minutes=1)
    jobs.dispatch(rt)
    assert len(provider.copies) == 3 and set(provider.copies.values()) == {1}
    assert [r.job_id for r in runs(sessions)] == ["send:1"]


def test_send_at_input_errors() -> None:
    now = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
    with pytest.raises(InputError, match="not a time"):
        parse_send_time("soon", timezone="UTC", now=now)
    with pytest.raises(InputError, match="in the past"):
        parse_send_time("2026-03-09T11:00", timezone="UTC", now=now)
    tomorrow = parse_send_time("11:00", timezone="UTC", now=now)
    assert tomorrow.at == now + timedelta(hours=23) and tomorrow.tomorrow
    today = parse_send_time("13:00", timezone="UTC", now=now)
    assert today.at == now + timedelta(hours=1) and not today.tomorrow
    assert parse_send_time("2026-03-09T09:00", timezone="America/New_York", now=now).at == (
        datetime(2026, 3, 9, 13, 0, tzinfo=UTC)
    )


def test_jobs_list_pause_resume_remove(
    run_cli: CliRun, sessions: sessionmaker[Session], settings: Settings, engine: Engine
) -> None:
    run_cli("send", "--newsletter", SLUG, "--at", "23:59")
    listed = json.loads(run_cli("jobs", "list", "--format", "json").output)
    assert {j["id"] for j in listed} == {
        "newsletter:daily-briefing",
        "newsletter:good-news",
        "dispatch",
        "send:1",
    }
    run_cli("jobs", "pause", "newsletter:daily-briefing")
    run_cli("jobs", "pause", "send:1")
    listed = {j["id"]: j for j in json.loads(run_cli("jobs", "list", "--format", "json").output)}
    assert listed["newsletter:daily-briefing"]["status"] == "paused"
    assert listed["send:1"]["status"] == "paused"
    # A paused newsletter job does not run, even when due.
    clock = Clock(ny(2026, 3, 9, 6, 30, 5))
    seed(sessions, clock.now, readers=1)
    provider = Recording()
    rt = runtime(configure(settings), sessions, clock, provider)
    with scheduler.open_scheduler(rt.settings, engine, paused=True) as sched:
        paused = scheduler.paused_jobs(sched)
    scheduler.run_due(rt, paused=paused)
    assert not runs(sessions)
    run_cli("jobs", "resume", "newsletter:daily-briefing")
    listed = {j["id"]: j for j in json.loads(run_cli("jobs", "list", "--format", "json").output)}
    assert listed["newsletter:daily-briefing"]["status"] == "scheduled"
    assert "comes from the configuration" in run_cli("jobs", "remove", "dispatch", expect=1).output
    run_cli("jobs", "remove", "send:1")
    assert "send:1" not in run_cli("jobs", "list").output
    assert "'nope' is not a job id" in run_cli("jobs", "pause", "nope", expect=2).output
    assert (
        "no job 'newsletter:nope'" in run_cli("jobs", "pause", "newsletter:nope", expect=2).output
    )


def test_jobs_history_output(
    run_cli: CliRun, sessions: sessionmaker[Session], settings: Settings, config_file: Path
) -> None:
    clock = Clock(ny(2026, 3, 9, 6, 30, 5))
    with sessions.begin() as db:
        factories.subscriber(db)
    scheduler.run_due(runtime(configure(settings), sessions, clock, Recording()), paused=set())
    table = run_cli("jobs", "history").output
    assert "failed" in table and "Traceback" not in table
    # With --errors (and in JSON) the traceback is printed: run_cli refuses tracebacks.
    with_errors = CliRunner().invoke(
        cli, ["--config", str(config_file), "jobs", "history", "--errors"]
    )
    assert "--- run 1 (newsletter:daily-briefing) ---" in with_errors.output
    assert "NoStoriesError" in with_errors.output
    raw = CliRunner().invoke(
        cli, ["--config", str(config_file), "jobs", "history", "--format", "json"]
    )
    rows = json.loads(raw.output)
    assert rows[0]["outcome"] == "failed" and "Traceback" in rows[0]["error"]
    assert rows[0]["scheduled"].startswith("2026-03-09")
    empty = json.loads(run_cli("jobs", "history", "--outcome", "ok", "--format", "json").output)
    assert empty == []


def test_scheduler_once_runs_what_is_due(tmp_path: Path, db_url: str) -> None:
    config = write_config(tmp_path / "config.toml", db_url)
    config.write_text(
        config.read_text().replace('schedule = "30 6 * * *"', 'schedule = "* * * * *"')
    )
    settings = load_settings(config)
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    emails = seed(sessions, utcnow(), readers=4)
    for _ in range(2):
        result = CliRunner().invoke(cli, ["--config", str(config), "scheduler", "--once"])
        assert result.exit_code == 0, result.output
    files = Counter(p.stem.split("-", 1)[1] for p in settings.outbox_path.rglob("*.eml"))
    assert files == Counter({e: 1 for e in emails})
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 4
        records.acquire_lease(s, holder="the daemon", ttl=60, now=utcnow())
    result = CliRunner().invoke(cli, ["--config", str(config), "scheduler", "--once"])
    assert result.exit_code == 0 and "another scheduler holds the lease" in result.output
    engine.dispose()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("schedule", "61 * * * *", "invalid cron expression '61 * * * *'"),
        ("timezone", "Mars/Base", "unknown IANA timezone 'Mars/Base'"),
        ("local_time", "6.30", "local_time '6.30' is not a time of day"),
        ("stale_after", "soon", "stale_after 'soon'"),
    ],
)
def test_bad_schedule_settings_are_refused_at_start(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    config = write_config(tmp_path / "config.toml", f"sqlite:///{tmp_path / 'x.db'}")
    text = config.read_text().replace(
        'schedule = "30 6 * * *"', f'schedule = "30 6 * * *"\n{key} = "{value}"'
    )
    if key in ("schedule", "timezone"):
        text = text.replace(f'{key} = "{value}"\n', "").replace(
            'schedule = "30 6 * * *"' if key == "schedule" else 'timezone = "America/New_York"',
            f'{key} = "{value}"',
            1,
        )
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert "newsletters.daily-briefing" in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


# ----- the lease: two schedulers --------------------------------------------------------


def test_lease_has_one_holder_and_expires(sessions: sessionmaker[Session]) -> None:
    t0 = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
    with sessions.begin() as s:
        assert records.acquire_lease(s, holder="A", ttl=30, now=t0)
        assert not records.acquire_lease(s, holder="B", ttl=30, now=t0 + timedelta(seconds=10))
        assert records.renew_lease(s, holder="A", ttl=30, now=t0 + timedelta(seconds=20))
        assert not records.acquire_lease(s, holder="B", ttl=30, now=t0 + timedelta(seconds=49))
        # A dies: nobody renews; B takes over once the lease has expired.
        assert records.acquire_lease(s, holder="B", ttl=30, now=t0 + timedelta(seconds=51))
        assert not records.renew_lease(s, holder="A", ttl=30, now=t0 + timedelta(seconds=52))
        assert not records.holds_lease(s, holder="A", now=t0 + timedelta(seconds=52))
        assert records.release_lease(s, holder="B")
        assert records.acquire_lease(s, holder="C", ttl=30, now=t0 + timedelta(seconds=53))


def _fast(settings: Settings) -> Settings:
    fast = settings.scheduler.model_copy(
        update={"lease_seconds": 5, "heartbeat_seconds": 0.1, "dispatch_seconds": 1}
    )
    return configure(settings).model_copy(update={"scheduler": fast})


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = wall.monotonic() + timeout
    while not condition():
        assert wall.monotonic() < deadline, "timed out"
        wall.sleep(0.05)


def _holder(sessions: sessionmaker[Session]) -> str | None:
    with sessions() as s:
        lease = records.get_lease(s)
        return lease.holder if lease else None


def test_two_schedulers_only_one_runs_and_the_other_takes_over(
    sessions: sessionmaker[Session], settings: Settings, engine: Engine
) -> None:
    s = _fast(settings)
    with sessions.begin() as db:  # a scheduler that died holding the lease
        records.acquire_lease(db, holder="dead", ttl=2, now=utcnow())
    emails = seed(sessions, utcnow(), readers=3)
    with sessions.begin() as db:
        records.schedule_send(db, newsletter=SLUG, send_at=utcnow(), source="at")
        records.schedule_send(db, newsletter="good-news", send_at=utcnow(), source="at")  # raises
    provider = Recording()
    stops = {name: threading.Event() for name in ("B", "C")}
    threads = [
        threading.Thread(
            target=scheduler.serve,
            args=(runtime(s, sessions, utcnow, provider, holder=name), engine),
            kwargs={"stop": stop},
        )
        for name, stop in stops.items()
    ]
    for t in threads:
        t.start()
    try:
        wall.sleep(0.5)
        assert _holder(sessions) == "dead" and not provider.copies  # both in standby
        _wait_for(lambda: _holder(sessions) in ("B", "C"))
        _wait_for(lambda: len(provider.copies) == 3)
        leader = _holder(sessions)
        wall.sleep(1.5)  # a few dispatcher ticks of the real APScheduler
        assert _holder(sessions) == leader
        assert {r.holder for r in runs(sessions)} == {leader}
        by_job = {r.job_id: r for r in runs(sessions)}
        assert by_job["send:2"].outcome is JobOutcome.FAILED  # recorded, scheduler still up
        assert by_job["send:1"].outcome is JobOutcome.OK
        # The leader stops cleanly: the other takes over at once.
        assert leader is not None
        stops[leader].set()
        other = ({"B", "C"} - {leader}).pop()
        _wait_for(lambda: _holder(sessions) == other)
    finally:
        for stop in stops.values():
            stop.set()
        for t in threads:
            t.join(10)
    assert provider.copies == Counter({e: 1 for e in emails})
    assert _holder(sessions) is None  # released on the way out


# ----- done when: a real scheduler process, killed mid-send and restarted -----------------


def _e2e_config(tmp_path: Path) -> Path:
    config = write_config(tmp_path / "config.toml", f"sqlite:///{tmp_path / 'n.db'}", feeds="")
    text = config.read_text()
    text = text.replace('schedule = "30 6 * * *"', 'schedule = "* * * * *"')
    text = text.replace(
        'provider = "outbox"\n',
        # uncertain stays the default ("skip"): the outbox provider is idempotent, so
        # the batch in flight at the kill is resent and still lands exactly once.
        'provider = "outbox"\nbatch_size = 50\nlease_seconds = 5\n',
    )
    text += "\n[scheduler]\nlease_seconds = 5\nheartbeat_seconds = 0.5\ndispatch_seconds = 1\n"
    config.write_text(text)
    return config


def test_done_when_a_killed_scheduler_restarts_and_everyone_gets_one_copy(
    tmp_path: Path,
) -> None:
    config = _e2e_config(tmp_path)
    settings = load_settings(config)
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    readers = 1500
    with sessions.begin() as s:
        s.add_all(
            Subscriber(
                email=f"r{n}@example.com",
                subscriptions=[Subscription(newsletter=SLUG, status=SubscriptionStatus.CONFIRMED)],
            )
            for n in range(readers)
        )
        for _ in range(3):
            factories.story(s)
    outbox_dir = settings.outbox_path

    def files() -> list[Path]:
        return list(outbox_dir.rglob("*.eml"))

    def sent() -> int:
        with sessions() as s:
            query = select(func.count()).where(Delivery.status == DeliveryStatus.SENT)
            return int(s.scalar(query) or 0)

    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    command = [sys.executable, "-m", "newsletter", "--config", str(config), "scheduler"]
    log = (tmp_path / "scheduler.log").open("w")
    first = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    second = None
    try:
        _wait_for(lambda: len(files()) >= 100, timeout=30)
        second = subprocess.Popen(command, env=env, stdout=log, stderr=log)  # standby
        wall.sleep(0.3)
        first.kill()  # SIGKILL in the middle of the send
        first.wait(10)
        at_kill = len(files())
        assert at_kill < readers, "the send finished before the kill"
        _wait_for(lambda: sent() == readers, timeout=40)
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        log.close()
    for _ in range(2):  # cron users: nothing more is due
        result = CliRunner().invoke(cli, ["--config", str(config), "scheduler", "--once"])
        assert result.exit_code == 0, result.output
    copies = Counter(p.stem.split("-", 1)[1] for p in files())
    assert copies == Counter({f"r{n}@example.com": 1 for n in range(readers)})
    history = runs(sessions)
    assert JobOutcome.INTERRUPTED in {r.outcome for r in history}
    assert len({r.holder for r in history}) >= 2
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Edition)) == 1
    engine.dispose()
