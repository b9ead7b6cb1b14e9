"""`newsletter scheduler` (the daemon, or `--once`) and `newsletter jobs …`."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import datetime
from types import FrameType

import click

from newsletter.cli.common import (
    LIMIT,
    App,
    after_send,
    emit_rows,
    format_option,
    parse_date,
    pass_app,
)
from newsletter.errors import InputError
from newsletter.models import JobOutcome, utcnow
from newsletter.schedule import control, oneoff, records, scheduler
from newsletter.schedule.records import JobId


def _runtime(app: App) -> records.Runtime:
    return records.Runtime(
        settings=app.settings,
        sessions=app.sessions,
        after_send=lambda edition_id: after_send(app, edition_id),
    )


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
    with app.transaction() as session:
        entries = control.list_jobs(session, settings=app.settings, engine=app.engine)
    rows = [
        {"id": str(e.id), "what": e.what, "next_run": _when(e.next_run), "status": e.status}
        for e in entries
    ]
    emit_rows(rows, ["id", "what", "next_run", "status"], fmt)


def _change(app: App, job_id: str, action: Callable[..., None]) -> None:
    with app.transaction() as session:
        action(session, settings=app.settings, engine=app.engine, job_id=JobId.parse(job_id))


@group.command("pause")
@click.argument("job_id")
@pass_app
def pause(app: App, job_id: str) -> None:
    """Pause a job (it does not run until resumed)."""
    _change(app, job_id, control.pause_job)
    click.echo(f"{job_id} paused")


@group.command("resume")
@click.argument("job_id")
@pass_app
def resume(app: App, job_id: str) -> None:
    """Resume a paused job (from its next scheduled time)."""
    _change(app, job_id, control.resume_job)
    click.echo(f"{job_id} resumed")


@group.command("remove")
@click.argument("job_id")
@pass_app
def remove(app: App, job_id: str) -> None:
    """Cancel a one-off scheduled send (send:N)."""
    _change(app, job_id, control.remove_job)
    click.echo(f"{job_id} removed")


@group.command("history")
@click.option("--job", "job_id", help="Only this job id (newsletter:SLUG, dispatch, send:N).")
@click.option("--newsletter", "slug", help="Only this newsletter.")
@click.option("--outcome", type=click.Choice([o.value for o in JobOutcome]))
@click.option("--limit", default=30, show_default=True, type=LIMIT)
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
    job = JobId.parse(job_id) if job_id is not None else None
    if slug is not None:
        app.settings.newsletter(slug)  # an unknown newsletter is an error, not no runs
    with app.transaction() as session:
        runs = records.list_runs(
            session,
            job_id=str(job) if job else None,
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
    """`send --at TIME`: record a one-off send for the scheduler instead of sending now,
    and say when that is in the newsletter's timezone and in UTC."""
    if edition_id is None and not slug:
        raise InputError("give --newsletter SLUG or --edition ID with --at")
    with app.transaction() as session:
        one = oneoff.schedule_one_off(
            session,
            settings=app.settings,
            at=at,
            slug=slug,
            edition_id=edition_id,
            issue_date=parse_date(issue_date),
            now=utcnow(),
        )
    what = (
        f"edition {one.edition_id}" if one.edition_id else f"{one.newsletter}'s edition of the day"
    )
    local = one.local_send_at
    click.echo(
        f"scheduled {one.job_id}: {what} at {local:%Y-%m-%d %H:%M %Z} ({one.timezone}), "
        f"{one.send_at:%Y-%m-%d %H:%M} UTC"
    )
    if one.tomorrow:
        click.echo(f"{at.strip()} has already passed today in {one.timezone}: moved to tomorrow")
    click.echo(
        f"the running scheduler, or `newsletter scheduler --once`, sends it; not started by "
        f"{one.deadline.astimezone(local.tzinfo):%H:%M %Z}, it is skipped"
    )
