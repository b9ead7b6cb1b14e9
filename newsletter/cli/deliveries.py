"""`newsletter deliveries …`: the delivery log, for operators."""

from __future__ import annotations

import json
from datetime import datetime

import click

from newsletter.audience.addresses import normalise_email
from newsletter.cli.common import (
    EDITION_ID,
    LIMIT,
    App,
    after_option,
    emit_rows,
    format_option,
    more_hint,
    pass_app,
)
from newsletter.content.editions import get_edition
from newsletter.delivery import log, sender
from newsletter.models import DeliveryStatus, utcnow

STATUS = click.Choice([s.value for s in DeliveryStatus])


@click.group("deliveries")
def group() -> None:
    """Read the delivery log: who was sent what, and why not."""


@group.command("list")
@click.option("--edition", "edition_id", type=EDITION_ID, help="Only this edition.")
@click.option("--status", type=STATUS, help="Only this status.")
@click.option("--email", help="Only this address.")
@click.option("--limit", default=100, show_default=True, type=LIMIT)
@after_option
@format_option("table", "json")
@pass_app
def list_(
    app: App,
    edition_id: int | None,
    status: str | None,
    email: str | None,
    limit: int,
    after: str | None,
    fmt: str,
) -> None:
    """Delivery rows, newest first."""
    with app.transaction() as session:
        if edition_id is not None:
            get_edition(session, edition_id)  # an unknown edition is an error, not no rows
        page = log.list_deliveries(
            session,
            edition_id=edition_id,
            status=DeliveryStatus(status) if status else None,
            email=normalise_email(email) if email else None,
            limit=limit,
            cursor=after,
        )
        rows = [
            {
                "id": d.id,
                "edition": d.edition_id,
                "email": d.email,
                "status": d.status,
                "attempts": d.attempts,
                "provider": d.provider,
                "message_id": d.message_id,
                "sent_at": d.sent_at,
                "error": d.error,
            }
            for d in page.items
        ]
    emit_rows(
        rows,
        [
            "id",
            "edition",
            "email",
            "status",
            "attempts",
            "provider",
            "message_id",
            "sent_at",
            "error",
        ],
        fmt,
    )
    more_hint(page.cursor)


@group.command("stats")
@click.option("--edition", "edition_id", type=EDITION_ID, help="Only this edition.")
@format_option("table", "json")
@pass_app
def stats(app: App, edition_id: int | None, fmt: str) -> None:
    """Counts per delivery status."""
    with app.transaction() as session:
        if edition_id is not None:
            get_edition(session, edition_id)  # an unknown edition is an error, not zeros
        counts = log.stats(session, edition_id=edition_id)
        reached = log.funnel(session, edition_id=edition_id)
    if fmt == "json":
        plain = {s.value: n for s, n in counts.items()} | {"total": sum(counts.values())}
        click.echo(json.dumps(plain | {"funnel": reached}))
        return
    rows = [{"status": s, "count": n} for s, n in counts.items()]
    rows.append({"status": "total", "count": sum(counts.values())})
    rows += [{"status": f"reached: {name}", "count": n} for name, n in reached.items()]
    emit_rows(
        rows,
        ["status", "count"],
        fmt,
        title=f"edition {edition_id}" if edition_id else "all editions",
    )


@group.command("requeue")
@click.option("--edition", "edition_id", type=EDITION_ID, required=True)
@click.option("--status", type=click.Choice(["uncertain", "failed"]), required=True)
@pass_app
def requeue(app: App, edition_id: int, status: str) -> None:
    """Queue uncertain or failed deliveries again (then run `send --edition`)."""
    with app.transaction() as session:
        get_edition(session, edition_id)
        n = sender.requeue(
            session,
            settings=app.settings,
            edition_id=edition_id,
            statuses=[DeliveryStatus(status)],
            now=utcnow(),
        )
    click.echo(f"{n} {status} deliveries of edition {edition_id} queued again")


@group.command("why")
@click.argument("email")
@click.option("--edition", "edition_id", type=EDITION_ID, help="About this edition.")
@click.option("--newsletter", "slug", help="About this newsletter's latest edition.")
@pass_app
def why(app: App, email: str, edition_id: int | None, slug: str | None) -> None:
    """Why EMAIL did or did not get an edition: one line, then the timeline."""
    from newsletter.events.why import why as explain

    with app.transaction() as session:
        answer = explain(
            session, settings=app.settings, email=email, edition_id=edition_id, newsletter=slug
        )
    click.echo(answer.line)
    for entry in answer.timeline:
        click.echo(f"  {_when(entry.when)}  {entry.what}")


@group.command("timeline")
@click.argument("email")
@pass_app
def timeline(app: App, email: str) -> None:
    """Everything that happened to EMAIL: subscriptions, sends, events, suppressions."""
    from newsletter.events.why import timeline as history

    with app.transaction() as session:
        entries = history(session, email=email)
    if not entries:
        click.echo("nothing is known about this address")
    for entry in entries:
        click.echo(f"{_when(entry.when)}  {entry.what}")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "                "
