"""APScheduler wiring: triggers, the job store, the single-runner lease, the daemon loop.

Each newsletter gets one persistent job, ``newsletter:<slug>``, on
``CronTrigger.from_crontab(schedule, timezone=ZoneInfo(timezone))`` (shifted
``review_minutes`` earlier when there is a review window), plus one ``dispatch``
job every ``scheduler.dispatch_seconds`` that starts due sends and waves and runs
any newsletter run that is due but did not happen (missed while down, or
interrupted by a crash; each fire time runs once). Jobs live in the project database
(``SQLAlchemyJobStore``, table ``apscheduler_jobs``) with ``coalesce=True`` and
``max_instances=1``, so a scheduler restarted after downtime runs once, not a burst.
What the jobs do lives in :mod:`newsletter.jobs`, their records in :mod:`newsletter.records`.

APScheduler 3 does not coordinate schedulers sharing a job store, so only the
holder of the database lease (:func:`newsletter.records.acquire_lease`) starts one:
another ``newsletter scheduler`` waits in standby and takes over when the lease
expires. Jobs are stored by reference (``newsletter.scheduler:fire``) and find the
running process's :class:`~newsletter.records.Runtime` here, because the job store
can only hold picklable references, not settings or sessions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING, BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from newsletter.config import NewsletterSettings, Settings
from newsletter.db import transaction
from newsletter.models import JobKind
from newsletter.schedule import jobs, records
from newsletter.schedule.records import JobId, JobTarget

log = logging.getLogger(__name__)

JOB_TABLE = "apscheduler_jobs"
#: The longest a clock-time deadline ("11:00") can lie after its scheduled run.
DAY = timedelta(days=1)

_runtime: records.Runtime | None = None
_store: Any = None


class ShiftedTrigger(BaseTrigger):  # type: ignore[misc]
    """A trigger firing ``lead`` before each fire time of ``trigger`` (the review window)."""

    def __init__(self, trigger: Any, lead: timedelta) -> None:
        self.trigger = trigger
        self.lead = lead

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> Any:
        previous = previous_fire_time + self.lead if previous_fire_time else None
        nxt = self.trigger.get_next_fire_time(previous, now + self.lead)
        return nxt - self.lead if nxt else None

    def __str__(self) -> str:
        return f"{self.trigger} minus {self.lead}"

    def __repr__(self) -> str:
        return f"<ShiftedTrigger ({self.trigger!r}, lead={self.lead!r})>"


class _Scheduler(BackgroundScheduler):  # type: ignore[misc]
    """The daemon's scheduler. APScheduler 3's loop makes one more pass after
    ``shutdown()`` (its check is for "paused", and "stopped" is not paused), handing
    due jobs to the executor just shut down: "cannot schedule new futures after
    shutdown", with a traceback. Only a running scheduler processes jobs here."""

    def _process_jobs(self) -> float | None:
        if self.state != STATE_RUNNING:
            return None
        wait: float | None = super()._process_jobs()
        return wait


class _OfflineScheduler(BaseScheduler):  # type: ignore[misc]
    """A scheduler opened only to read or change the stored jobs (``jobs …``,
    ``--once``): it has no loop thread, so it can never run or submit a job."""

    def wakeup(self) -> None:
        pass

    def shutdown(self, wait: bool = True) -> None:  # abstract in BaseScheduler
        super().shutdown(wait)


class _JobStore(SQLAlchemyJobStore):  # type: ignore[misc]
    """The job store on the project's engine, which it must not dispose when the
    scheduler shuts down (other threads may be using it)."""

    def shutdown(self) -> None:
        pass


def build_trigger(newsletter: NewsletterSettings) -> Any:
    """The trigger of a newsletter's regular job: its cron in its zone, minus the review."""
    cron = CronTrigger.from_crontab(newsletter.schedule, timezone=ZoneInfo(newsletter.timezone))
    if newsletter.review_minutes:
        return ShiftedTrigger(cron, timedelta(minutes=newsletter.review_minutes))
    return cron


def misfire_grace(newsletter: NewsletterSettings) -> timedelta:
    """How late a regular run may still start: its staleness window (a clock-time
    deadline is checked by the job itself, within a day)."""
    spec = newsletter.staleness
    window = spec if isinstance(spec, timedelta) else DAY
    return window + timedelta(minutes=newsletter.review_minutes)


def last_fire_time(trigger: Any, *, now: datetime, lookback: timedelta) -> datetime | None:
    """The trigger's latest fire time in ``(now - lookback, now]``, if any (UTC)."""
    last: datetime | None = None
    fire = trigger.get_next_fire_time(None, now - lookback)
    # Step in UTC: aware local arithmetic would lose the fold of a repeated hour.
    while fire is not None and fire <= now and (last is None or fire > last):
        last = fire.astimezone(UTC)
        fire = trigger.get_next_fire_time(fire, last + timedelta(microseconds=1))
    return last


# ----- the jobs as APScheduler sees them ---------------------------------------


def fire(kind: str, slug: str | None = None) -> None:
    """The function every stored job calls: run ``kind`` (a :class:`JobKind` value,
    stored as a plain string) if this process holds the lease."""
    rt = _runtime
    if rt is None:
        log.warning("job %s fired outside a running scheduler; ignored", kind)
        return
    with transaction(rt.sessions) as session:
        if not records.holds_lease(session, holder=rt.holder, now=rt.clock()):
            log.warning("standby: not running %s %s (the lease is not ours)", kind, slug or "")
            return
    if kind == JobKind.BUILD and slug in rt.settings.newsletters:
        run_newsletter_job(rt, slug=slug)
    elif kind == JobKind.DISPATCH:
        # Each tick also runs any newsletter run that is due but did not happen
        # (missed while down, or interrupted): run_newsletter_job runs each once.
        # (Never ask the scheduler itself here: its shutdown holds the lock it would need.)
        paused = (
            {j.id for j in _store.get_all_jobs() if j.next_run_time is None} if _store else set()
        )
        run_due(rt, paused=paused)


def run_newsletter_job(rt: records.Runtime, *, slug: str) -> None:
    """Run a newsletter's regular job for its latest fire time (within a day past its
    grace window, so a run missed during downtime is recorded as skipped)."""
    newsletter = rt.settings.newsletter(slug)
    fire_time = last_fire_time(
        build_trigger(newsletter), now=rt.clock(), lookback=misfire_grace(newsletter) + DAY
    )
    if fire_time is not None:
        jobs.run_build(rt, slug=slug, fire_time=fire_time)


@dataclass(frozen=True)
class JobSpec:
    """A job the configuration asks for."""

    id: str
    trigger: Any
    args: tuple[str, ...]
    grace: int | None


def configured_jobs(settings: Settings) -> list[JobSpec]:
    """The jobs config.toml asks for: one per newsletter, and the dispatcher."""
    # The arguments are stored pickled: plain strings, not enum members.
    specs = [
        JobSpec(
            str(JobId.newsletter(slug)),
            build_trigger(nl),
            (JobKind.BUILD.value, slug),
            int(misfire_grace(nl).total_seconds()),
        )
        for slug, nl in settings.newsletters.items()
    ]
    every = settings.scheduler.dispatch_seconds
    specs.append(
        JobSpec(
            str(records.DISPATCH),
            IntervalTrigger(seconds=every, timezone=UTC),
            (JobKind.DISPATCH.value,),
            None,
        )
    )
    return specs


def _describe(trigger: Any) -> str:
    # An interval trigger's repr carries its creation time; its str does not.
    return str(trigger) if isinstance(trigger, IntervalTrigger) else repr(trigger)


def sync_jobs(scheduler: Any, settings: Settings) -> None:
    """Make the job store match the config: add new jobs, update changed triggers,
    drop newsletters no longer configured. A paused job stays paused; an unchanged
    job keeps its next run time (so a missed run still fires once after downtime)."""
    wanted = {spec.id: spec for spec in configured_jobs(settings)}
    for job in scheduler.get_jobs(jobstore="default"):
        if job.id not in wanted:
            log.info("removing job %s (no longer configured)", job.id)
            job.remove()
    for spec in wanted.values():
        job = scheduler.get_job(spec.id)
        same = (
            job is not None
            and _describe(job.trigger) == _describe(spec.trigger)
            and job.misfire_grace_time == spec.grace
        )
        if same:
            continue
        extra = {"next_run_time": None} if job is not None and job.next_run_time is None else {}
        scheduler.add_job(
            fire,
            spec.trigger,
            args=spec.args,
            id=spec.id,
            name=spec.id,
            replace_existing=True,
            misfire_grace_time=spec.grace,
            **extra,
        )


@contextmanager
def open_scheduler(
    settings: Settings, engine: Engine, *, paused: bool, store: Any = None
) -> Iterator[Any]:
    """A scheduler on the project database with the configured jobs synced.

    ``paused`` opens it only to read or change the jobs (the CLI, ``--once``): it
    then never runs a job, not even one due while it is open. Otherwise it runs them
    in a background thread until the block ends."""
    with _started(settings, engine, offline=paused, store=store) as scheduler:
        if not paused:
            scheduler.resume()
        yield scheduler


@contextmanager
def _started(settings: Settings, engine: Engine, *, offline: bool, store: Any) -> Iterator[Any]:
    """A scheduler started paused, jobs synced; shut down at the end of the block."""
    cls = _OfflineScheduler if offline else _Scheduler
    scheduler = cls(
        jobstores={"default": store or _JobStore(engine=engine, tablename=JOB_TABLE)},
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone=UTC,
    )
    scheduler.start(paused=True)
    try:
        sync_jobs(scheduler, settings)
        yield scheduler
    finally:
        if scheduler.running:
            scheduler.shutdown(wait=True)


def _record_missed(event: JobExecutionEvent) -> None:
    rt = _runtime
    if rt is None or not event.job_id.startswith(JobTarget.NEWSLETTER + ":"):
        return
    job = JobId.parse(event.job_id)
    records.record_missed(
        rt, job_id=str(job), newsletter=job.slug, scheduled_for=event.scheduled_run_time
    )


# ----- running ----------------------------------------------------------------


def paused_jobs(scheduler: Any) -> set[str]:
    """Ids of the stored jobs that an operator paused."""
    return {job.id for job in scheduler.get_jobs(jobstore="default") if job.next_run_time is None}


def run_due(rt: records.Runtime, *, paused: set[str]) -> None:
    """Run what is due now: each newsletter's latest fire time within its grace window
    (unless it already ran), then one dispatcher tick. Used by ``--once`` and on
    taking over the lease (it re-runs a run its dead predecessor left unfinished)."""
    for slug in rt.settings.newsletters:
        if str(JobId.newsletter(slug)) not in paused:
            run_newsletter_job(rt, slug=slug)
    if records.DISPATCH_JOB not in paused:
        jobs.dispatch(rt)


def _take_over(rt: records.Runtime) -> None:
    with transaction(rt.sessions) as session:
        n = records.interrupt_orphans(session, holder=rt.holder, now=rt.clock())
    if n:
        log.warning("%d job runs of a previous scheduler were interrupted", n)


def _try_lease(rt: records.Runtime) -> bool:
    cfg = rt.settings.scheduler
    with transaction(rt.sessions) as session:
        return records.acquire_lease(
            session, holder=rt.holder, ttl=cfg.lease_seconds, now=rt.clock()
        )


def _release(rt: records.Runtime) -> None:
    with transaction(rt.sessions) as session:
        records.release_lease(session, holder=rt.holder)


def run_once(rt: records.Runtime, engine: Engine) -> bool:
    """``scheduler --once``: take the lease, run what is due, release it.

    Returns False (and does nothing) when another scheduler holds the lease."""
    if not _try_lease(rt):
        _log_standby(rt)
        return False
    done = threading.Event()
    heartbeat = threading.Thread(target=_heartbeat, args=(rt, done), daemon=True)
    heartbeat.start()
    try:
        _take_over(rt)
        with open_scheduler(rt.settings, engine, paused=True) as scheduler:
            run_due(rt, paused=paused_jobs(scheduler))
    finally:
        done.set()
        heartbeat.join()
        _release(rt)
    return True


def _heartbeat(rt: records.Runtime, done: threading.Event) -> None:
    """Renew the lease until ``done`` (a long `--once` send must keep it)."""
    while not done.wait(rt.settings.scheduler.heartbeat_seconds):
        if not _renew(rt):
            log.error("lost the scheduler lease while running; another scheduler took over")
            return


def _log_standby(rt: records.Runtime) -> None:
    with transaction(rt.sessions) as session:
        lease = records.get_lease(session)
    if lease is not None:
        log.info(
            "standby: %s holds the scheduler lease until %s",
            lease.holder,
            lease.expires_at.isoformat(timespec="seconds"),
        )


def serve(rt: records.Runtime, engine: Engine, *, stop: threading.Event) -> None:
    """The daemon: wait for the lease, run the scheduler while holding it, and go back
    to standby if it is lost; returns when ``stop`` is set (SIGTERM, Ctrl-C)."""
    global _runtime
    cfg = rt.settings.scheduler
    announced = False
    while not stop.is_set():
        if not _try_lease(rt):
            if not announced:
                _log_standby(rt)
                announced = True
            stop.wait(cfg.heartbeat_seconds)
            continue
        announced = False
        log.info("scheduler %s holds the lease; running jobs", rt.holder)
        _runtime = rt
        try:
            _take_over(rt)
            _lead(rt, engine, stop)
        finally:
            _runtime = None
            _release(rt)
    log.info("scheduler %s stopped", rt.holder)


def _lead(rt: records.Runtime, engine: Engine, stop: threading.Event) -> None:
    global _store
    heartbeat = rt.settings.scheduler.heartbeat_seconds
    store = _JobStore(engine=engine, tablename=JOB_TABLE)
    with _started(rt.settings, engine, offline=False, store=store) as scheduler:
        scheduler.add_listener(_record_missed, EVENT_JOB_MISSED)
        # The first tick catches up at once, in the worker: this thread keeps the lease.
        if records.DISPATCH_JOB not in paused_jobs(scheduler):
            scheduler.modify_job(records.DISPATCH_JOB, next_run_time=datetime.now(UTC))
        _store = store
        try:
            scheduler.resume()
            while not stop.wait(heartbeat):
                if not _renew(rt):
                    log.error("lost the scheduler lease; back to standby")
                    break
            # Keep the lease alive while a running job finishes.
            closing = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True})
            closing.start()
            while closing.is_alive():
                closing.join(heartbeat)
                _renew(rt)
        finally:
            _store = None


def _renew(rt: records.Runtime) -> bool:
    cfg = rt.settings.scheduler
    with transaction(rt.sessions) as session:
        return records.renew_lease(session, holder=rt.holder, ttl=cfg.lease_seconds, now=rt.clock())
