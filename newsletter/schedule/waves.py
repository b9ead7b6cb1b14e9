"""Local-time delivery: one UTC instant per timezone for "06:30 on the issue date".

An edition is built once; its audience goes out in waves, one per subscriber
timezone, each at the same local clock time. The instants are computed with
``zoneinfo`` (the pure functions below) and written to ``Delivery.not_before`` with
one UPDATE per zone (:func:`set_wave_times`); the sender only claims due rows.

Clock rules, the same everywhere: a local time that does not exist (a DST gap) moves
forward by the length of the gap (02:30 on a spring-forward night is 03:30), and an
ambiguous one (a DST fold) means its first occurrence. Both are what ``fold=0``
gives. Subscribers without a timezone, or with one zoneinfo does not know, get the
newsletter's default zone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from newsletter.models import Delivery, DeliveryStatus, delivery_sources

log = logging.getLogger(__name__)

#: The zone whose clocks are furthest ahead (UTC+14, Pacific/Kiritimati): its local
#: time arrives first, so an edition built before it is early enough for everyone.
EARLIEST_ZONE = "Pacific/Kiritimati"

STALE_ERROR = "skipped: past the staleness deadline"


@lru_cache(maxsize=1024)
def zone(name: str | None) -> ZoneInfo | None:
    """The ZoneInfo for ``name``, or None when it is empty or unknown."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def local_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of ``at`` on ``day`` in ``tz`` (gap → later, fold → first)."""
    return datetime.combine(day, at, tzinfo=tz).replace(fold=0).astimezone(UTC)


def wave_instants(day: date, at: time, zones: Iterable[str]) -> dict[str, datetime]:
    """One UTC instant per (valid) IANA zone name for ``at`` on ``day``; unknown names
    are left out."""
    result: dict[str, datetime] = {}
    for name in zones:
        tz = zone(name)
        if tz is not None:
            result[name] = local_instant(day, at, tz)
    return result


def issue_date_for(start: datetime, at: time) -> date:
    """The first issue date whose earliest wave (``at`` in UTC+14) is not before ``start``.

    A run at ``start`` then reaches every subscriber on Earth before their local ``at``.
    """
    first = ZoneInfo(EARLIEST_ZONE)
    local = start.astimezone(first)
    day = local.date()
    return day if local_instant(day, at, first) >= start else day + timedelta(days=1)


def deadline(spec: time | timedelta, *, day: date, tz: ZoneInfo, scheduled: datetime) -> datetime:
    """The staleness deadline: ``spec`` o'clock on ``day`` in ``tz``, or ``scheduled + spec``."""
    if isinstance(spec, timedelta):
        return scheduled + spec
    return local_instant(day, spec, tz)


def _groups(
    session: Session, *, edition_id: int, statuses: Iterable[DeliveryStatus], default_zone: str
) -> dict[str, ColumnElement[bool]]:
    """Each zone among the edition's rows → the WHERE clause selecting its rows.

    Rows without a timezone or with an unknown one join the default zone's group.
    """
    names = session.scalars(
        select(Delivery.timezone)
        .where(Delivery.edition_id == edition_id, Delivery.status.in_(list(statuses)))
        .distinct()
    )
    known = sorted({n for n in names if n and n != default_zone and zone(n) is not None})
    groups: dict[str, ColumnElement[bool]] = {z: Delivery.timezone == z for z in known}
    groups[default_zone] = or_(Delivery.timezone.is_(None), Delivery.timezone.not_in(known))
    return groups


def set_wave_times(
    session: Session, *, edition_id: int, day: date, at: time, default_zone: str
) -> dict[str, datetime]:
    """Set ``not_before`` on the edition's queued rows: ``at`` on ``day`` in each row's zone.

    One UPDATE per zone. Returns zone → UTC instant (the default zone included).
    """
    groups = _groups(
        session, edition_id=edition_id, statuses=[DeliveryStatus.QUEUED], default_zone=default_zone
    )
    instants = wave_instants(day, at, groups)
    for name, where in groups.items():
        session.execute(
            update(Delivery)
            .where(Delivery.edition_id == edition_id, Delivery.status == DeliveryStatus.QUEUED)
            .where(where)
            .values(not_before=instants[name])
            .execution_options(synchronize_session=False)
        )
    if instants:
        log.info(
            "edition %s: %d waves at %s local, from %s to %s",
            edition_id,
            len(instants),
            at.strftime("%H:%M"),
            min(instants.values()).isoformat(timespec="minutes"),
            max(instants.values()).isoformat(timespec="minutes"),
        )
    return instants


def _cancel(session: Session, where: ColumnElement[bool], *, edition_id: int, now: datetime) -> int:
    result = session.connection().execute(
        update(Delivery)
        .where(
            Delivery.edition_id == edition_id,
            Delivery.status.in_(delivery_sources(DeliveryStatus.CANCELLED)),
            where,
        )
        .values(status=DeliveryStatus.CANCELLED, error=STALE_ERROR, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)


def cancel_stale(
    session: Session,
    *,
    edition_id: int,
    day: date,
    spec: time | timedelta,
    now: datetime,
    default_zone: str,
    at: time | None = None,
    scheduled: datetime | None = None,
) -> int:
    """Cancel the unsent rows whose staleness deadline has passed; returns how many.

    With ``at`` (local-time delivery) each zone has its own deadline: ``spec`` o'clock
    there, or its wave instant + ``spec``. Without, the whole edition shares one:
    ``spec`` o'clock in ``default_zone``, or ``scheduled + spec``. Late mail is never
    sent: a row that missed its deadline is cancelled, not delivered hours late.
    """
    default_tz = ZoneInfo(default_zone)
    if at is None:
        limit = deadline(spec, day=day, tz=default_tz, scheduled=scheduled or now)
        if now <= limit:
            return 0
        return _cancel(session, Delivery.id.is_not(None), edition_id=edition_id, now=now)
    groups = _groups(
        session,
        edition_id=edition_id,
        statuses=delivery_sources(DeliveryStatus.CANCELLED),
        default_zone=default_zone,
    )
    cancelled = 0
    for name, where in groups.items():
        tz = zone(name) or default_tz
        limit = deadline(spec, day=day, tz=tz, scheduled=local_instant(day, at, tz))
        if now > limit:
            n = _cancel(session, where, edition_id=edition_id, now=now)
            if n:
                log.warning(
                    "edition %s: %d deliveries in %s skipped (deadline %s passed)",
                    edition_id,
                    n,
                    name,
                    limit.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z"),
                )
            cancelled += n
    return cancelled
