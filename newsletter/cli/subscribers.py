"""`newsletter subscribers` commands: a thin layer over newsletter.subscribers.

Defaults chosen for safety: new subscriptions are ``pending`` unless staff pass
``--status confirmed``; ``add`` needs ``--newsletter`` when more than one newsletter
is configured (nobody is signed up for everything by accident); an unsubscribed
person is re-subscribed only with ``--resubscribe``; suppressed addresses never.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

import click

from newsletter.audience import imports, suppression
from newsletter.audience import subscribers as svc
from newsletter.cli.common import (
    LIMIT,
    App,
    Group,
    after_option,
    atomic_file,
    emit_rows,
    format_option,
    more_hint,
    pass_app,
    safe_cell,
)
from newsletter.config import Settings
from newsletter.delivery import links
from newsletter.errors import InputError
from newsletter.models import Subscriber, SubscriptionStatus, SuppressionReason

NEW_STATUSES = click.Choice([SubscriptionStatus.PENDING.value, SubscriptionStatus.CONFIRMED.value])
ALL_STATUSES = click.Choice([s.value for s in SubscriptionStatus])
MANUAL_REASONS = click.Choice(
    [r.value for r in SuppressionReason if r is not SuppressionReason.FORGOTTEN]
)
LIST_COLUMNS = (
    "email",
    "name",
    "timezone",
    "newsletter",
    "status",
    "source",
    "created_at",
    "confirmed_at",
    "suppressed",
)


def _default_newsletters(settings: Settings, given: tuple[str, ...]) -> list[str]:
    if given:
        return list(given)
    if len(settings.newsletters) == 1:
        return list(settings.newsletters)
    known = ", ".join(settings.newsletters)
    raise InputError(f"choose a newsletter with --newsletter (configured: {known})")


def _statuses(subscriber: Subscriber) -> str:
    return ", ".join(f"{s.newsletter}={s.status.value}" for s in subscriber.subscriptions)


@click.group("subscribers", cls=Group)
def group() -> None:
    """Manage subscribers, subscriptions and the suppression list."""


@group.command("add")
@click.argument("email")
@click.option("--name", default="", help="Display name.")
@click.option("--timezone", default=None, help="IANA timezone, e.g. Europe/Paris.")
@click.option(
    "--newsletter",
    "newsletters",
    multiple=True,
    help="Newsletter slug (repeatable; required when several are configured).",
)
@click.option("--status", type=NEW_STATUSES, default="pending", show_default=True)
@click.option("--resubscribe", is_flag=True, help="Re-subscribe someone who unsubscribed.")
@pass_app
def add(
    app: App,
    email: str,
    name: str,
    timezone: str | None,
    newsletters: tuple[str, ...],
    status: str,
    resubscribe: bool,
) -> None:
    """Add EMAIL (or update them) and subscribe them."""
    settings = app.settings
    slugs = _default_newsletters(settings, newsletters)
    with app.transaction() as session:
        sub = svc.add_subscriber(
            session,
            email=email,
            name=name,
            timezone=timezone,
            newsletters=slugs,
            status=SubscriptionStatus(status),
            source="cli",
            settings=settings,
            resubscribe=resubscribe,
        )
        click.echo(f"{sub.email}: {_statuses(sub)}")


@group.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--newsletter",
    "newsletters",
    multiple=True,
    help="Newsletter for rows with an empty newsletters cell (repeatable).",
)
@click.option(
    "--status",
    type=NEW_STATUSES,
    default="pending",
    show_default=True,
    help="Status for rows with an empty status cell.",
)
@pass_app
def import_(app: App, file: Path, newsletters: tuple[str, ...], status: str) -> None:
    """Import subscribers from a CSV FILE (header: email,name,timezone,newsletters).

    Bad rows are listed on stderr as `line N: email: reason` and skipped; the rest is
    imported in one transaction. Exit status 0 when every row was imported, 1 when
    some were rejected, 2 when the file cannot be read at all (nothing imported).
    Re-importing a file changes nothing; unsubscribed and suppressed addresses are
    never re-subscribed.
    """
    settings = app.settings
    with app.transaction() as session:
        report = imports.import_csv(
            session,
            path=file,
            settings=settings,
            newsletters=newsletters,
            status=SubscriptionStatus(status),
        )
    click.echo(f"{file}: {report.rows} rows")
    for label, value in (
        ("added subscribers", report.added_subscribers),
        ("added subscriptions", report.added_subscriptions),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
        ("skipped (suppressed)", report.skipped_suppressed),
        ("skipped (unsubscribed)", report.skipped_unsubscribed),
        ("skipped (errors)", len(report.errors)),
    ):
        click.echo(f"  {label:<24}{value:>8}")
    for err in report.errors:
        click.echo(f"line {err.line}: {err.email or '-'}: {err.reason}", err=True)
    if report.errors:
        click.echo(
            f"{len(report.errors)} of {report.rows} rows rejected (listed above); "
            "the others were imported",
            err=True,
        )
        raise click.exceptions.Exit(1)


@group.command("list")
@click.option("--newsletter", default=None, help="Only this newsletter.")
@click.option("--status", type=ALL_STATUSES, default=None, help="Only this status.")
@click.option("--limit", type=LIMIT, default=None, help="At most N rows (a page).")
@after_option
@format_option()
@pass_app
def list_(
    app: App,
    newsletter: str | None,
    status: str | None,
    limit: int | None,
    after: str | None,
    fmt: str,
) -> None:
    """List subscriptions (one row per subscriber and newsletter)."""
    if newsletter is not None:
        app.settings.newsletter(newsletter)
    with app.transaction() as session:
        page = svc.list_subscribers(
            session,
            newsletter=newsletter,
            status=SubscriptionStatus(status) if status else None,
            limit=limit,
            cursor=after,
        )
    emit_rows([asdict(r) for r in page.items], LIST_COLUMNS, fmt, title="Subscribers")
    more_hint(page.cursor)


def _write_export(out: TextIO, rows: Iterable[dict[str, str]]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(svc.EXPORT_COLUMNS)
    count = 0
    for row in rows:
        writer.writerow([safe_cell(row[c]) for c in svc.EXPORT_COLUMNS])
        count += 1
    return count


@group.command("export")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write to FILE (atomically) instead of stdout.",
)
@click.option("--newsletter", default=None, help="Only this newsletter's subscribers.")
@pass_app
def export(app: App, output: Path | None, newsletter: str | None) -> None:
    """Export active subscribers as re-importable CSV (formula-safe cells)."""
    if newsletter is not None:
        app.settings.newsletter(newsletter)
    with app.transaction() as session:
        rows = svc.export_rows(session, newsletter=newsletter)
        if output is None:
            _write_export(sys.stdout, rows)
            return
        # Write beside the target and rename, so a reader never sees half a file.
        with atomic_file(output, newline="") as fh:
            count = _write_export(fh, rows)
    click.echo(f"exported {count} subscribers to {output}", err=True)


@group.command("remove")
@click.argument("email")
@click.option("--newsletter", default=None, help="Only from this newsletter.")
@click.option(
    "--forget",
    is_flag=True,
    help="Erase the person: delete them, anonymise deliveries, keep a hashed suppression.",
)
@pass_app
def remove(app: App, email: str, newsletter: str | None, forget: bool) -> None:
    """Unsubscribe EMAIL (from one newsletter, or all), or erase them with --forget."""
    with app.transaction() as session:
        result = svc.remove(session, email=email, newsletter=newsletter, forget=forget)
    if forget:
        click.echo(
            f"forgotten: {'deleted' if result.subscriber_deleted else 'no'} subscriber, "
            f"{result.subscriptions_deleted} subscriptions deleted, "
            f"{result.deliveries_anonymised} deliveries anonymised; address kept only as a hash"
        )
    else:
        target = newsletter or "all newsletters (address suppressed)"
        click.echo(f"unsubscribed from {target}: {result.unsubscribed} changed")


@group.command("confirm")
@click.argument("email")
@click.option("--newsletter", default=None, help="Only this newsletter (default: all pending).")
@pass_app
def confirm(app: App, email: str, newsletter: str | None) -> None:
    """Confirm EMAIL's pending subscriptions."""
    with app.transaction() as session:
        subs = svc.confirm(session, email=email, newsletter=newsletter)
        click.echo("confirmed: " + ", ".join(s.newsletter for s in subs))


@group.command("unsubscribe-token")
@click.argument("token")
@pass_app
def unsubscribe_token(app: App, token: str) -> None:
    """Process TOKEN: a token, an unsubscribe URL, a mailto: URL or its subject (idempotent)."""
    settings = app.settings
    with app.transaction() as session:
        subs = svc.unsubscribe_by_token(session, token=links.token_from(token), settings=settings)
        done = ", ".join(f"{s.subscriber.email} from {s.newsletter}" for s in subs)
    click.echo(f"unsubscribed {done}" if done else "nothing to do (already unsubscribed)")


@group.command("suppress")
@click.argument("email")
@click.option("--reason", type=MANUAL_REASONS, default="manual", show_default=True)
@click.option("--detail", default="", help="A note kept with the entry.")
@pass_app
def suppress(app: App, email: str, reason: str, detail: str) -> None:
    """Never mail EMAIL again (until `unsuppress`)."""
    with app.transaction() as session:
        entry = suppression.suppress(
            session, email=email, reason=SuppressionReason(reason), detail=detail
        )
        click.echo(f"suppressed {entry.email} ({entry.reason.value})")


@group.command("unsuppress")
@click.argument("email")
@click.option("--reason", required=True, help="Why it may be mailed again (kept on record).")
@pass_app
def unsuppress(app: App, email: str, reason: str) -> None:
    """Take EMAIL off the suppression list (subscriptions stay as they are)."""
    with app.transaction() as session:
        was = suppression.unsuppress(session, email=email, reason=reason)
    click.echo(f"removed suppression ({was.value})" if was else "not suppressed")


@group.command("suppressions")
@click.option("--reason", type=click.Choice([r.value for r in SuppressionReason]), default=None)
@format_option()
@pass_app
def suppressions(app: App, reason: str | None, fmt: str) -> None:
    """List the suppression list (forgotten entries show only their hash)."""
    with app.transaction() as session:
        entries = suppression.list_suppressions(
            session, reason=SuppressionReason(reason) if reason else None
        )
        rows = [
            {
                "email": e.email or "",
                "email_hash": e.email_hash,
                "reason": e.reason,
                "detail": e.detail,
                "created_at": e.created_at,
            }
            for e in entries
        ]
    emit_rows(rows, ("email", "email_hash", "reason", "detail", "created_at"), fmt)
