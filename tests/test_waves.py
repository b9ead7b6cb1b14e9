"""Local-time waves: one UTC instant per zone, DST gaps and folds, per-zone UPDATEs."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions
from newsletter.delivery import sender
from newsletter.models import Delivery, DeliveryStatus
from newsletter.schedule import waves
from tests import factories

NY = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("day", "at", "expected", "local"),
    [
        # Spring forward (2026-03-08): 06:30 exists (EDT); 02:30 does not → 03:30 EDT.
        ("2026-03-08", "06:30", "2026-03-08T10:30", "06:30"),
        ("2026-03-08", "02:30", "2026-03-08T07:30", "03:30"),
        ("2026-03-08", "02:00", "2026-03-08T07:00", "03:00"),
        # Fall back (2026-11-01): 06:30 is EST; 01:30 happens twice → the first (EDT).
        ("2026-11-01", "06:30", "2026-11-01T11:30", "06:30"),
        ("2026-11-01", "01:30", "2026-11-01T05:30", "01:30"),
        ("2026-11-02", "06:30", "2026-11-02T11:30", "06:30"),
    ],
)
def test_new_york_dst(day: str, at: str, expected: str, local: str) -> None:
    instant = waves.local_instant(date.fromisoformat(day), time.fromisoformat(at), NY)
    assert instant == utc(expected)
    assert instant.astimezone(NY).strftime("%H:%M") == local


def test_new_york_fold_means_first_occurrence() -> None:
    first = waves.local_instant(date(2026, 11, 1), time(1, 30), NY)
    assert first.astimezone(NY).utcoffset() == timedelta(hours=-4)
    second = datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=NY).astimezone(UTC)
    assert first + timedelta(hours=1) == second


@pytest.mark.parametrize(
    ("day", "at", "expected", "offset"),
    [
        # Lord Howe moves by half an hour: +10:30 → +11:00 at 02:00 on 2026-10-04.
        ("2026-10-04", "02:15", "2026-10-03T15:45", 11.0),  # gap → 02:45
        ("2026-10-04", "06:30", "2026-10-03T19:30", 11.0),
        ("2026-10-03", "06:30", "2026-10-02T20:00", 10.5),
        # +11:00 → +10:30 at 02:00 on 2026-04-05: 01:45 happens twice → the first.
        ("2026-04-05", "01:45", "2026-04-04T14:45", 11.0),
        ("2026-04-05", "06:30", "2026-04-04T20:00", 10.5),
    ],
)
def test_lord_howe_half_hour_shift(day: str, at: str, expected: str, offset: float) -> None:
    instant = waves.local_instant(date.fromisoformat(day), time.fromisoformat(at), LORD_HOWE)
    assert instant == utc(expected)
    assert instant.astimezone(LORD_HOWE).utcoffset() == timedelta(hours=offset)


def test_waves_span_more_than_a_day_from_kiritimati_to_pago_pago() -> None:
    zones = ["Pacific/Kiritimati", "Asia/Tokyo", "Europe/London", "America/New_York",
             "Pacific/Honolulu", "Pacific/Pago_Pago", "Not/AZone"]  # fmt: skip
    instants = waves.wave_instants(date(2026, 6, 15), time(6, 30), zones)
    assert "Not/AZone" not in instants
    assert instants["Pacific/Kiritimati"] == utc("2026-06-14T16:30")
    assert instants["Pacific/Pago_Pago"] == utc("2026-06-15T17:30")
    assert max(instants.values()) - min(instants.values()) == timedelta(hours=25)
    assert sorted(instants, key=instants.__getitem__) == zones[:-1]
    for name, instant in instants.items():
        local = instant.astimezone(ZoneInfo(name))
        assert (local.date(), local.time()) == (date(2026, 6, 15), time(6, 30))


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ("2026-06-14T16:00", "2026-06-15"),  # 06:00 in Kiritimati: its 06:30 is ahead
        ("2026-06-14T16:30", "2026-06-15"),
        ("2026-06-14T16:31", "2026-06-16"),  # Kiritimati already past 06:30
        ("2026-06-15T10:30", "2026-06-16"),  # 06:30 New York: tomorrow's issue
    ],
)
def test_issue_date_is_the_first_no_one_has_reached(start: str, expected: str) -> None:
    assert waves.issue_date_for(utc(start), time(6, 30)) == date.fromisoformat(expected)


def test_deadline_clock_or_delay() -> None:
    scheduled = utc("2026-03-08T10:30")
    day = date(2026, 3, 8)
    assert waves.deadline(time(11), day=day, tz=NY, scheduled=scheduled) == utc("2026-03-08T15:00")
    assert waves.deadline(timedelta(hours=2), day=day, tz=NY, scheduled=scheduled) == utc(
        "2026-03-08T12:30"
    )


ZONES = {
    "kiri@example.com": "Pacific/Kiritimati",
    "tokyo@example.com": "Asia/Tokyo",
    "ny@example.com": "America/New_York",
    "none@example.com": None,
    "mars@example.com": "Mars/Olympus_Mons",
    "pago@example.com": "Pacific/Pago_Pago",
    "howe@example.com": "Australia/Lord_Howe",
}


def _frozen_edition(sessions: sessionmaker[Session], settings: Settings, now: datetime) -> int:
    with sessions.begin() as s:
        for email, tz in ZONES.items():
            factories.subscriber(s, email, timezone=tz)
        factories.story(s, now=now)
        edition, _ = editions.build_edition(
            s, settings=settings, slug="daily-briefing", issue_date=date(2026, 6, 15), now=now
        )
        sender.start_send(s, settings=settings, edition_id=edition.id, now=now)
        return edition.id


def test_set_wave_times_one_update_per_zone(
    sessions: sessionmaker[Session], settings: Settings, engine: Engine
) -> None:
    now = utc("2026-06-14T12:00")
    edition_id = _frozen_edition(sessions, settings, now)
    updates: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE DELIVERIES"):
            updates.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with sessions.begin() as s:
            instants = waves.set_wave_times(
                s,
                edition_id=edition_id,
                day=date(2026, 6, 15),
                at=time(6, 30),
                default_zone="America/New_York",
            )
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # New York (with the subscribers without or with an unknown zone) + 4 others.
    assert len(instants) == len(updates) == 5
    with sessions() as s:
        rows = dict(s.execute(select(Delivery.email, Delivery.not_before)).all())
    ny = utc("2026-06-15T10:30")
    assert rows["ny@example.com"] == rows["none@example.com"] == rows["mars@example.com"] == ny
    assert rows["kiri@example.com"] == utc("2026-06-14T16:30")
    assert rows["pago@example.com"] == utc("2026-06-15T17:30")
    assert rows["howe@example.com"] == utc("2026-06-14T20:00")
    assert rows["tokyo@example.com"] == utc("2026-06-14T21:30")


def test_cancel_stale_per_zone(sessions: sessionmaker[Session], settings: Settings) -> None:
    now = utc("2026-06-14T12:00")
    edition_id = _frozen_edition(sessions, settings, now)
    later = utc("2026-06-15T15:30")  # 11:30 in New York: its 11:00 deadline has passed
    with sessions.begin() as s:
        waves.set_wave_times(
            s, edition_id=edition_id, day=date(2026, 6, 15), at=time(6, 30),
            default_zone="America/New_York",
        )  # fmt: skip
        cancelled = waves.cancel_stale(
            s,
            edition_id=edition_id,
            day=date(2026, 6, 15),
            spec=time(11),
            now=later,
            default_zone="America/New_York",
            at=time(6, 30),
        )
    with sessions() as s:
        status = dict(s.execute(select(Delivery.email, Delivery.status)).all())
    # New York's group, Tokyo, Kiritimati and Lord Howe passed 11:00 local; Pago Pago not.
    assert cancelled == 6
    assert status["pago@example.com"] is DeliveryStatus.QUEUED
    assert status["ny@example.com"] is DeliveryStatus.CANCELLED
    assert status["none@example.com"] is DeliveryStatus.CANCELLED
