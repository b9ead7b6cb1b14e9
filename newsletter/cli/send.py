"""`newsletter send` and `newsletter run`: deliver editions, with progress and a summary."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from newsletter.audience.subscribers import normalise_email
from newsletter.cli.common import App, emit_rows, parse_date, pass_app
from newsletter.delivery import preview, sender
from newsletter.delivery.providers import open_providers
from newsletter.delivery.types import OutcomeStatus
from newsletter.errors import InputError
from newsletter.models import DeliveryStatus, EditionStatus
from newsletter.schedule import pipeline

log = logging.getLogger("newsletter.send")


@contextmanager
def progress_reporter() -> Iterator[sender.Progress]:
    """A rich progress bar on a terminal; plain log lines (every ~10%) otherwise."""
    if sys.stderr.isatty():
        bar = Progress(
            TextColumn("sending"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        task = bar.add_task("send", total=None)
        with bar:
            yield lambda n, total: bar.update(task, advance=n, total=total)
        return
    done = 0
    next_log = 0

    def log_line(n: int, total: int) -> None:
        nonlocal done, next_log
        done += n
        if done >= next_log or done >= total:
            log.info("handled %d of %d recipients", done, total)
            next_log = done + max(total // 10, 1)

    yield log_line


def print_summary(report: sender.SendReport) -> None:
    """The end-of-send summary table, on stdout."""
    c = report.counts
    rows = [
        {"what": "audience (frozen)", "count": report.audience},
        {"what": "newly queued this run", "count": report.newly_queued},
        {"what": "sent this run", "count": report.sent},
        {"what": "failed this run", "count": report.failed},
        {"what": "sent in total", "count": c.get(DeliveryStatus.SENT, 0)},
        {"what": "failed in total", "count": c.get(DeliveryStatus.FAILED, 0)},
        {"what": "waiting to retry", "count": c.get(DeliveryStatus.RETRY, 0)},
        {"what": "queued", "count": c.get(DeliveryStatus.QUEUED, 0)},
        {"what": "uncertain (outcome unknown)", "count": c.get(DeliveryStatus.UNCERTAIN, 0)},
        {"what": "cancelled", "count": c.get(DeliveryStatus.CANCELLED, 0)},
    ]
    emit_rows(
        rows, ["what", "count"], "table", title=f"edition {report.edition_id} ({report.newsletter})"
    )
    if report.stopped:
        click.echo(f"send stopped early: edition is {report.stopped}")
    elif report.complete and report.sent == 0 and report.failed == 0:
        click.echo(
            f"nothing to send: every recipient of edition {report.edition_id} was already handled"
        )
    elif report.complete:
        click.echo(f"edition {report.edition_id} delivered in {report.elapsed:.1f} s")


@click.command()
@click.option("--newsletter", "slug", help="Newsletter slug (builds today's edition if needed).")
@click.option("--edition", "edition_id", type=int, help="Send this edition.")
@click.option(
    "--date", "issue_date", help="With --newsletter: the edition of this date (YYYY-MM-DD)."
)
@click.option("--test-to", "test_to", help="Send one copy to this address only (no ledger rows).")
@click.option("--dry-run", is_flag=True, help="Render, check and count the audience; send nothing.")
@click.option("--pause", "pause_id", type=int, metavar="EDITION", help="Pause a running send.")
@click.option("--resume", "resume_id", type=int, metavar="EDITION", help="Resume a paused send.")
@click.option(
    "--cancel", "cancel_id", type=int, metavar="EDITION", help="Cancel an edition's send."
)
@click.option(
    "--at",
    "at",
    metavar="TIME",
    help="Schedule a one-off send instead: HH:MM or ISO date-time (newsletter's timezone).",
)
@pass_app
def send(
    app: App,
    slug: str | None,
    edition_id: int | None,
    issue_date: str | None,
    test_to: str | None,
    dry_run: bool,
    pause_id: int | None,
    resume_id: int | None,
    cancel_id: int | None,
    at: str | None,
) -> None:
    """Send an edition to every confirmed, non-suppressed subscriber (never twice)."""
    settings = app.settings
    if at is not None:
        from newsletter.cli.scheduler import schedule_at

        schedule_at(app, at, slug=slug, edition_id=edition_id, issue_date=issue_date)
        return
    if pause_id is not None:
        with app.transaction() as session:
            sender.pause(session, edition_id=pause_id)
        click.echo(f"edition {pause_id} paused; resume with `newsletter send --resume {pause_id}`")
        return
    if cancel_id is not None:
        with app.transaction() as session:
            n = sender.cancel(session, edition_id=cancel_id)
        click.echo(f"edition {cancel_id} cancelled; {n} unsent deliveries cancelled")
        return
    if resume_id is not None:
        with app.transaction() as session:
            sender.resume(session, edition_id=resume_id)
        edition_id = resume_id
    if edition_id is None:
        if not slug:
            raise InputError("give --newsletter SLUG or --edition ID")
        settings.newsletter(slug)
        if dry_run:
            with app.sessions() as session:
                _report_dry_run(
                    preview.dry_run_unbuilt(
                        session, settings=settings, slug=slug, issue_date=parse_date(issue_date)
                    )
                )
            return
        edition_id, created = pipeline.build_today(
            app.sessions, settings=settings, slug=slug, issue_date=parse_date(issue_date)
        )
        click.echo(f"{'built' if created else 'using'} edition {edition_id}", err=True)
    if dry_run:
        with app.transaction() as session:
            _report_dry_run(preview.dry_run(session, settings=settings, edition_id=edition_id))
        return
    with open_providers(settings) as (provider, secondary):
        if test_to:
            email = normalise_email(test_to)
            with app.transaction() as session:
                outcome = sender.send_test(
                    session,
                    settings=settings,
                    edition_id=edition_id,
                    email=email,
                    provider=provider,
                )
            if outcome.status is not OutcomeStatus.SENT:
                raise InputError(f"test copy to {email} not sent: {outcome.error}")
            click.echo(f"test copy of edition {edition_id} sent to {email} via {provider.name}")
            return
        with progress_reporter() as progress:
            report = sender.send_edition(
                app.sessions,
                settings=settings,
                edition_id=edition_id,
                provider=provider,
                secondary=secondary,
                progress=progress,
            )
    print_summary(report)
    if settings.delivery.provider == "outbox":
        click.echo(f"messages are in {settings.outbox_path}")


def _report_dry_run(report: preview.DryRun) -> None:
    what = f"edition {report.edition_id}" if report.edition_id else "a new edition"
    click.echo(f"dry run: {what} of {report.newsletter} for {report.issue_date}")
    click.echo(f"subject: {report.subject}")
    click.echo(f"HTML {report.html_bytes / 1024:.1f} KB, text {report.text_bytes / 1024:.1f} KB")
    click.echo(f"audience: {report.audience} recipients" + (" (frozen)" if report.frozen else ""))
    problems = report.problems
    click.echo("checks: " + ("passed" if not problems else "FAILED: " + "; ".join(problems)))
    if report.status is EditionStatus.HELD:
        click.echo(
            f"edition {report.edition_id} is held: nothing would be sent until "
            f"`newsletter edition release {report.edition_id}`"
        )
    elif report.status in (EditionStatus.PAUSED, EditionStatus.CANCELLED):
        click.echo(f"edition {report.edition_id} is {report.status.value}: nothing would be sent")
    if not report.sendable:
        raise click.exceptions.Exit(1)


@click.command()
@click.option("--newsletter", "slug", required=True, help="Newsletter slug.")
@pass_app
def run(app: App, slug: str) -> None:
    """The main job: fetch feeds, build today's edition, check it, send it."""
    with open_providers(app.settings) as (provider, secondary), progress_reporter() as progress:
        report = pipeline.run_newsletter(
            app.sessions,
            settings=app.settings,
            slug=slug,
            provider=provider,
            secondary=secondary,
            progress=progress,
        )
    for feed in report.feeds:
        state = (
            f"error: {feed.error}"
            if feed.error
            else f"{feed.added} new, {feed.duplicates} already known"
        )
        click.echo(f"feed {feed.feed}: {state}", err=True)
    print_summary(report.send)
    if app.settings.delivery.provider == "outbox":
        click.echo(f"messages are in {app.settings.outbox_path}")
