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
from newsletter.cli.common import EDITION_ID, App, after_send, emit_rows, parse_date, pass_app
from newsletter.content import editions
from newsletter.delivery import preview, queue, runner, sender
from newsletter.delivery.providers import open_providers
from newsletter.delivery.providers.base import Provider
from newsletter.delivery.types import OutcomeStatus
from newsletter.errors import InputError
from newsletter.models import DeliveryFailure, DeliveryStatus, EditionStatus
from newsletter.schedule import pipeline

log = logging.getLogger("newsletter.send")


@contextmanager
def progress_reporter() -> Iterator[runner.Progress]:
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


def print_summary(report: runner.SendReport) -> int:
    """The end-of-send summary on stdout; returns the exit status it stands for.

    0 only when every recipient was sent, or failed for a reason of their own
    (a rejected address); 1 when anyone is failed for another reason, uncertain,
    still waiting, or the send stopped.
    """
    c, s, eid = report.counts, report.summary, report.edition_id
    failures = s.failures
    own = failures.get(DeliveryFailure.RECIPIENT, 0)
    rows = [
        {"what": "audience (frozen)", "count": report.audience},
        {"what": "newly queued this run", "count": report.newly_queued},
        {"what": "sent this run", "count": report.sent},
        {"what": "failed this run", "count": report.failed},
        {"what": "sent in total", "count": s.accepted},
        {"what": "failed: rejected for their own address", "count": own},
        {"what": "failed: retry window closed", "count": failures.get(DeliveryFailure.EXPIRED, 0)},
        {"what": "failed: the send was stopped", "count": failures.get(DeliveryFailure.STOPPED, 0)},
        {"what": "uncertain (may have been accepted)", "count": c[DeliveryStatus.UNCERTAIN]},
        {"what": "waiting (queued or to retry)", "count": s.waiting},
        {"what": "cancelled", "count": c[DeliveryStatus.CANCELLED]},
    ]
    emit_rows(rows, ["what", "count"], "table", title=f"edition {eid} ({report.newsletter})")
    for reason, n in s.reasons:
        click.echo(f"  {n} failed: {reason}")
    steps: list[str] = []
    if report.outage:
        steps.append(
            f"the provider went away ({report.stopped}): the send is paused and nobody "
            f"failed; the scheduler resumes it when the provider answers, or resume it "
            f"with `newsletter send --resume {eid}`"
        )
    elif report.stopped == "paused":
        steps.append(f"the send is paused; resume it with `newsletter send --resume {eid}`")
    elif report.stopped == "cancelled":
        steps.append(f"edition {eid} was cancelled; nothing more is sent")
    elif report.stopped == "interrupted":
        steps.append(f"interrupted; run `newsletter send --edition {eid}` to go on")
    elif report.stopped:
        steps.append(
            f"the send stopped: {report.stopped}; fix the cause, then "
            f"`newsletter deliveries requeue --edition {eid} --status failed` and send again"
        )
    if c[DeliveryStatus.UNCERTAIN]:
        steps.append(
            f"{c[DeliveryStatus.UNCERTAIN]} may or may not have been delivered; to send them "
            f"again: `newsletter deliveries requeue --edition {eid} --status uncertain`"
        )
    other = s.counts[DeliveryStatus.FAILED] - own
    if other and not report.stopped:
        steps.append(
            f"{other} failed for reasons not of their own; to try them again: "
            f"`newsletter deliveries requeue --edition {eid} --status failed`"
        )
    if s.waiting and not report.stopped:
        steps.append(f"{s.waiting} still wait; `newsletter send --edition {eid}` sends them")
    for step in steps:
        click.echo(step)
    if report.ok and report.sent == 0 and report.failed == 0:
        click.echo(f"nothing to send: every recipient of edition {eid} was already handled")
    elif report.ok:
        click.echo(f"edition {eid} delivered in {report.elapsed:.1f} s")
        return 0
    else:
        click.echo(f"edition {eid} not delivered to everyone: see above")
        return 1
    return 0


def _one_action(**given: object) -> None:
    """Refuse contradictory actions (``--pause 1 --resume 1``)."""
    chosen = [name for name, value in given.items() if value not in (None, False)]
    if len(chosen) > 1:
        raise InputError(
            "choose one of " + ", ".join(f"--{n.replace('_', '-')}" for n in chosen),
            code="input.conflicting_options",
        )


@click.command()
@click.option("--newsletter", "slug", help="Newsletter slug (builds today's edition if needed).")
@click.option("--edition", "edition_id", type=EDITION_ID, help="Send this edition.")
@click.option(
    "--date", "issue_date", help="With --newsletter: the edition of this date (YYYY-MM-DD)."
)
@click.option("--test-to", "test_to", help="Send one copy to this address only (no ledger rows).")
@click.option("--dry-run", is_flag=True, help="Render, check and count the audience; send nothing.")
@click.option(
    "--pause", "pause_id", type=EDITION_ID, metavar="EDITION", help="Pause a running send."
)
@click.option(
    "--resume", "resume_id", type=EDITION_ID, metavar="EDITION", help="Resume a paused send."
)
@click.option(
    "--cancel", "cancel_id", type=EDITION_ID, metavar="EDITION", help="Cancel an edition's send."
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
    """Send an edition to every confirmed, non-suppressed subscriber (never twice).

    Exit status 0 when everyone was sent it (or refused for their own address), 1
    when some are failed, uncertain or still waiting, 2 for bad input or a provider
    that cannot work (then nothing was frozen or sent).
    """
    settings = app.settings
    _one_action(
        pause=pause_id, resume=resume_id, cancel=cancel_id, at=at, dry_run=dry_run, test_to=test_to
    )
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
    if slug is not None:
        settings.newsletter(slug)
    if resume_id is not None:
        edition_id = resume_id
    if edition_id is not None and slug is not None:
        with app.transaction() as session:
            owner = editions.get_edition(session, edition_id).newsletter
        if owner != slug:
            raise InputError(
                f"edition {edition_id} belongs to {owner}, not {slug}",
                code="edition.other_newsletter",
                edition_id=edition_id,
            )
    if edition_id is None and not slug:
        raise InputError("give --newsletter SLUG or --edition ID")
    if dry_run:
        with app.sessions() as session:
            if edition_id is None:
                assert slug is not None
                found = preview.dry_run_unbuilt(
                    session, settings=settings, slug=slug, issue_date=parse_date(issue_date)
                )
            else:
                found = preview.dry_run(session, settings=settings, edition_id=edition_id)
        _report_dry_run(found)
        return
    with open_providers(settings) as (provider, secondary):
        # Prove the provider works before anything is built, resumed or frozen.
        sender.preflight(provider, secondary if not test_to else None)
        if resume_id is not None:
            with app.transaction() as session:
                sender.resume(session, edition_id=resume_id)
        if edition_id is None:
            assert slug is not None
            edition_id, created = pipeline.build_issue(
                app.sessions, settings=settings, slug=slug, issue_date=parse_date(issue_date)
            )
            click.echo(f"{'built' if created else 'using'} edition {edition_id}", err=True)
        if test_to:
            _send_test(app, edition_id, test_to, provider)
            return
        with progress_reporter() as progress:
            report = queue.send(
                app.sessions,
                settings=settings,
                edition_id=edition_id,
                provider=provider,
                secondary=secondary,
                progress=progress,
            )
    after_send(app, edition_id)
    status = print_summary(report)
    if settings.delivery.provider == "outbox":
        click.echo(f"messages are in {settings.outbox_path}")
    if status:
        raise click.exceptions.Exit(status)


def _send_test(app: App, edition_id: int, to: str, provider: Provider) -> None:
    email = normalise_email(to)
    with app.transaction() as session:
        outcome = sender.send_test(
            session, settings=app.settings, edition_id=edition_id, email=email, provider=provider
        )
    if outcome.status is not OutcomeStatus.SENT:
        raise InputError(f"test copy to {email} not sent: {outcome.error}", code="send.test_failed")
    click.echo(f"test copy of edition {edition_id} sent to {email} via {provider.name}")


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
    """The main job: fetch feeds, build today's edition, check it, send it.

    The same steps as the scheduler's run: a failed check holds the edition, and
    with ``review_minutes`` the send is scheduled after the review window.
    Exit status as for `send`.
    """
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
    eid = report.edition_id
    if report.held:
        click.echo(
            f"edition {eid} is held, nothing was sent: {report.held}; release it with "
            f"`newsletter edition release {eid}`"
        )
        raise click.exceptions.Exit(1)
    if report.send is None:
        when = report.send_at.isoformat(timespec="minutes") if report.send_at else "later"
        click.echo(
            f"edition {eid} built; it goes out at {when} after its review window "
            f"(hold it with `newsletter edition hold {eid}`; the scheduler sends it)"
        )
        return
    after_send(app, eid)
    status = print_summary(report.send)
    if app.settings.delivery.provider == "outbox":
        click.echo(f"messages are in {app.settings.outbox_path}")
    if status:
        raise click.exceptions.Exit(status)
