"""`newsletter scheduler` (the daemon, or `--once`) and `newsletter jobs …`."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime, time, timedelta
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

import click

from newsletter.cli.common import App, emit_rows, format_option, parse_date, pass_app
from newsletter.content import editions
from newsletter.errors import InputError, NotFoundError, StateError
from newsletter.models import JobOutcome, ScheduledSendStatus, utcnow
from newsletter.schedule import records, scheduler, waves

WAITING = [ScheduledSendStatus.PENDING, ScheduledSendStatus.PAUSED, ScheduledSendStatus.STARTED]


def _runtime(app: App) -> records.Runtime:
    return records.Runtime(settings=app.settings, sessions=app.sessions)


@click.command("scheduler")
@click.option("--once", is_flag=True, help="Run what is due now and exit (for cron/systemd).")
@pass_app
def scheduler_command(app: App, once: bool) -> None:
    """Run each newsletter on its schedule (one active scheduler per database)."""
    rt = _runtime(app)
    if once:
        if not scheduler.run_once(rt, app.engine):
            click.echo("another scheduler holds the lease: nothing was run", err=True)
        return
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        click.echo(f"signal {signum}: stopping after the job in progress", err=True)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        click.echo(
            f"scheduler {rt.holder}: {len(app.settings.newsletters)} newsletters; Ctrl-C to stop",
            err=True,
        )
        scheduler.serve(rt, app.engine, stop=stop)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@click.group("jobs")
def group() -> None:
    """List, pause, resume and remove scheduled jobs; read the run history."""


def _when(value: datetime | None) -> str:
    return value.astimezone().isoformat(timespec="seconds") if value else ""


@group.command("list")
@format_option("table", "json")
@pass_app
def list_(app: App, fmt: str) -> None:
    """Scheduled jobs (newsletters, dispatcher) and one-off sends still to come."""
    rows: list[dict[str, Any]] = []
    with scheduler.open_scheduler(app.settings, app.engine, paused=True) as sched:
        for job in sched.get_jobs():
            rows.append(
                {
                    "id": job.id,
                    "what": _describe(app, job.id, job.trigger),
                    "next_run": _when(job.next_run_time),
                    "status": "paused" if job.next_run_time is None else "scheduled",
                }
            )
    with app.transaction() as session:
        for send in records.list_sends(session, statuses=WAITING):
            target = f"edition {send.edition_id}" if send.edition_id else "today's edition"
            rows.append(
                {
                    "id": records.send_job_id(send.id),
                    "what": f"send {target} of {send.newsletter}"
                    + (f" at {send.local_time} local" if send.local_time else ""),
                    "next_run": _when(send.send_at),
                    "status": send.status,
                }
            )
    emit_rows(rows, ["id", "what", "next_run", "status"], fmt)


def _describe(app: App, job_id: str, trigger: Any) -> str:
    slug = job_id.removeprefix("newsletter:")
    if slug == job_id or slug not in app.settings.newsletters:
        return str(trigger)
    nl = app.settings.newsletters[slug]
    what = f"{slug}: cron '{nl.schedule}' {nl.timezone}"
    if nl.review_minutes:
        what += f", built {nl.review_minutes} min early"
    return what + (f", waves at {nl.local_time} local" if nl.local_time else "")


def _send_id(job_id: str) -> int | None:
    if not job_id.startswith("send:"):
        return None
    try:
        return int(job_id.removeprefix("send:"))
    except ValueError:
        raise InputError(f"{job_id!r} is not a job id (send:N)") from None


def _change(app: App, job_id: str, action: str) -> None:
    send_id = _send_id(job_id)
    if send_id is not None:
        target = {
            "pause": ScheduledSendStatus.PAUSED,
            "resume": ScheduledSendStatus.PENDING,
            "remove": ScheduledSendStatus.CANCELLED,
        }[action]
        with app.transaction() as session:
            records.set_send_status(session, send_id=send_id, status=target)
        return
    with scheduler.open_scheduler(app.settings, app.engine, paused=True) as sched:
        job = sched.get_job(job_id)
        if job is None:
            known = ", ".join(j.id for j in sched.get_jobs())
            raise NotFoundError(f"no job {job_id!r} (jobs: {known})")
        if action == "remove":
            raise StateError(
                f"{job_id} comes from config.toml and would come back: "
                f"pause it with `newsletter jobs pause {job_id}` or change the config"
            )
        if action == "pause":
            sched.pause_job(job_id)
        else:
            sched.resume_job(job_id)


@group.command("pause")
@click.argument("job_id")
@pass_app
def pause(app: App, job_id: str) -> None:
    """Pause a job (it does not run until resumed)."""
    _change(app, job_id, "pause")
    click.echo(f"{job_id} paused")


@group.command("resume")
@click.argument("job_id")
@pass_app
def resume(app: App, job_id: str) -> None:
    """Resume a paused job (from its next scheduled time)."""
    _change(app, job_id, "resume")
    click.echo(f"{job_id} resumed")


@group.command("remove")
@click.argument("job_id")
@pass_app
def remove(app: App, job_id: str) -> None:
    """Cancel a one-off scheduled send (send:N)."""
    _change(app, job_id, "remove")
    click.echo(f"{job_id} removed")


@group.command("history")
@click.option("--job", "job_id", help="Only this job id (newsletter:SLUG, dispatch, send:N).")
@click.option("--newsletter", "slug", help="Only this newsletter.")
@click.option("--outcome", type=click.Choice([o.value for o in JobOutcome]))
@click.option("--limit", default=30, show_default=True)
@click.option("--errors", is_flag=True, help="Print the traceback of failed runs.")
@format_option("table", "json")
@pass_app
def history(
    app: App,
    job_id: str | None,
    slug: str | None,
    outcome: str | None,
    limit: int,
    errors: bool,
    fmt: str,
) -> None:
    """Recorded job runs, newest first: start, end, outcome, counts, reason."""
    with app.transaction() as session:
        runs = records.list_runs(
            session,
            job_id=job_id,
            newsletter=slug,
            outcome=JobOutcome(outcome) if outcome else None,
            limit=limit,
        )
    rows = [
        {
            "id": r.id,
            "job": r.job_id,
            "scheduled": _when(r.scheduled_for),
            "started": _when(r.started_at),
            "ended": _when(r.ended_at),
            "outcome": r.outcome,
            "edition": r.edition_id,
            "counts": r.counts if fmt == "json" else _counts(r.counts),
            "detail": r.detail,
            "error": r.error,
        }
        for r in runs
    ]
    columns = ["id", "job", "scheduled", "started", "ended", "outcome", "edition", "counts"]
    emit_rows(rows, [*columns, "detail", "error"] if fmt == "json" else [*columns, "detail"], fmt)
    if errors and fmt == "table":
        for r in runs:
            if r.error:
                click.echo(f"--- run {r.id} ({r.job_id}) ---\n{r.error}")


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items() if v)


def schedule_at(
    app: App, at: str, *, slug: str | None, edition_id: int | None, issue_date: str | None
) -> None:
    """`send --at TIME`: record a one-off send for the scheduler instead of sending now."""
    settings = app.settings
    with app.transaction() as session:
        if edition_id is not None:
            edition = editions.get_edition(session, edition_id)
            slug = edition.newsletter
        elif not slug:
            raise InputError("give --newsletter SLUG or --edition ID with --at")
        newsletter = settings.newsletter(slug)
        now = utcnow()
        send_at = parse_send_time(at, timezone=newsletter.timezone, now=now)
        send = records.schedule_send(
            session,
            newsletter=slug,
            send_at=send_at,
            source="at",
            edition_id=edition_id,
            issue_date=parse_date(issue_date),
            deadline=send_at + timedelta(minutes=settings.scheduler.one_off_grace_minutes),
        )
        what = f"edition {edition_id}" if edition_id else f"{slug}'s edition of the day"
        click.echo(
            f"scheduled {records.send_job_id(send.id)}: {what} at {_when(send_at)} "
            "(the running scheduler, or `newsletter scheduler --once`, sends it)"
        )


def parse_send_time(value: str, *, timezone: str, now: datetime) -> datetime:
    """``send --at``: an ISO date-time (naive = in ``timezone``) or ``HH:MM`` (the next
    such time in ``timezone``). Returns UTC; InputError if unreadable or past."""
    tz = ZoneInfo(timezone)
    text = value.strip()
    try:
        if len(text) == 5 and text[2] == ":":
            at = time.fromisoformat(text)
            local = now.astimezone(tz)
            when = waves.local_instant(local.date(), at, tz)
            if when <= now:
                when = waves.local_instant(local.date() + timedelta(days=1), at, tz)
            return when
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(
            f"--at {value!r} is not a time: use HH:MM or an ISO date-time like 2026-03-08T06:30"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    when = parsed.astimezone(UTC)
    if when <= now:
        raise InputError(f"--at {value!r} is in the past")
    return when
