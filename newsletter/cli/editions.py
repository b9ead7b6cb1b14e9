"""`newsletter edition …`: build, list, show, preview and check editions."""

from __future__ import annotations

from pathlib import Path

import click

from newsletter.cli.common import (
    EDITION_ID,
    LIMIT,
    App,
    after_option,
    atomic_file,
    emit_rows,
    format_option,
    more_hint,
    parse_date,
    pass_app,
)
from newsletter.content import editions, render
from newsletter.delivery import preview as preview_service
from newsletter.errors import CheckFailed, InputError


@click.group("edition")
def group() -> None:
    """Build, preview and check editions."""


@group.command("build")
@click.option("--newsletter", "slug", required=True, help="Newsletter slug.")
@click.option("--date", "issue_date", help="Issue date YYYY-MM-DD (default: today there).")
@click.option(
    "--rebuild", is_flag=True, help="Re-select the stories (refused once sending started)."
)
@pass_app
def build(app: App, slug: str, issue_date: str | None, rebuild: bool) -> None:
    """Freeze the day's top stories into an edition and print its id."""
    with app.transaction() as session:
        edition, created = editions.build_edition(
            session,
            settings=app.settings,
            slug=slug,
            issue_date=parse_date(issue_date),
            rebuild=rebuild,
        )
        verb = "rebuilt" if created and rebuild else "built" if created else "existing"
        click.echo(
            f"{verb} edition {edition.id} of {slug} for {edition.issue_date} "
            f"with {len(edition.items)} stories ({edition.status.value})",
            err=True,
        )
        click.echo(edition.id)


@group.command("list")
@click.option("--newsletter", "slug", help="Only this newsletter.")
@click.option("--limit", default=50, show_default=True, type=LIMIT)
@after_option
@format_option("table", "json")
@pass_app
def list_(app: App, slug: str | None, limit: int, after: str | None, fmt: str) -> None:
    """Editions, newest first."""
    if slug:
        app.settings.newsletter(slug)
    with app.transaction() as session:
        page = editions.list_editions(session, slug=slug, limit=limit, cursor=after)
    rows = [
        {
            "id": e.id,
            "newsletter": e.newsletter,
            "date": e.issue_date,
            "status": e.status,
            "stories": e.stories,
            "subject": e.subject,
        }
        for e in page.items
    ]
    emit_rows(rows, ["id", "newsletter", "date", "status", "stories", "subject"], fmt)
    more_hint(page.cursor)


@group.command("show")
@click.argument("edition_id", type=EDITION_ID)
@format_option("table", "json")
@pass_app
def show(app: App, edition_id: int, fmt: str) -> None:
    """An edition's frozen stories, in order."""
    with app.transaction() as session:
        edition = editions.get_edition(session, edition_id)
        rows = [
            {
                "position": i.position,
                "kicker": i.kicker,
                "title": i.title,
                "url": i.url,
                "source": i.source,
            }
            for i in edition.items
        ]
        title = (
            f"edition {edition.id} of {edition.newsletter} "
            f"for {edition.issue_date} ({edition.status.value})"
        )
    emit_rows(rows, ["position", "kicker", "title", "url", "source"], fmt, title=title)


def write_atomically(path: Path, data: str) -> None:
    """Write a file (and its folder) via a temporary sibling and rename: never half a
    file, and the ordinary permissions of a new file (see :func:`atomic_file`)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    with atomic_file(path) as fh:
        fh.write(data)


@group.command("preview")
@click.argument("edition_id", type=EDITION_ID)
@click.option(
    "--format", "fmt", type=click.Choice(["html", "text"]), default="html", show_default=True
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE.")
@pass_app
def preview(app: App, edition_id: int, fmt: str, output: Path | None) -> None:
    """Render an edition as a reader would see it (sample recipient)."""
    with app.transaction() as session:
        body = preview_service.preview(
            session,
            settings=app.settings,
            edition_id=edition_id,
            part="html" if fmt == "html" else "text",
        )
    if output is None:
        click.echo(body)
        return
    write_atomically(output, body)
    click.echo(
        f"wrote {fmt} preview of edition {edition_id} to {output} ({len(body.encode())} bytes)",
        err=True,
    )


@group.command("check")
@click.argument("edition_id", type=EDITION_ID)
@pass_app
def check(app: App, edition_id: int) -> None:
    """Run the pre-send checks; exit 1 listing every problem."""
    with app.transaction() as session:
        edition = editions.get_edition(session, edition_id)
        content = editions.frozen_content(edition) or editions.render_edition(edition, app.settings)
    problems = render.check_rendered(content)
    size = len(content.html.encode())
    if problems:
        raise CheckFailed(problems, edition_id=edition_id)
    click.echo(
        f"edition {edition_id}: all checks passed "
        f"(HTML {size / 1024:.1f} KB, subject {content.subject!r})"
    )


@group.command("hold")
@click.argument("edition_id", type=EDITION_ID)
@click.option("--reason", default="held by an editor", show_default=True)
@pass_app
def hold(app: App, edition_id: int, reason: str) -> None:
    """Hold a built edition for review: its scheduled send waits until released."""
    with app.transaction() as session:
        editions.hold_edition(session, edition_id=edition_id, reason=reason)
    click.echo(
        f"edition {edition_id} held; release it with `newsletter edition release {edition_id}`"
    )


@group.command("release")
@click.argument("edition_id", type=EDITION_ID)
@pass_app
def release(app: App, edition_id: int) -> None:
    """Release a held edition: its scheduled send goes out at the scheduler's next tick."""
    with app.transaction() as session:
        editions.release_edition(session, edition_id=edition_id)
    click.echo(f"edition {edition_id} released")


@group.command("from-file")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--newsletter", "slug", required=True, help="Newsletter whose audience gets it.")
@click.option("--subject", required=True, help="The email subject.")
@pass_app
def from_file(app: App, path: Path, slug: str, subject: str) -> None:
    """Create a special edition (breaking news) from a Markdown or MJML file."""
    from newsletter.content import special

    with app.transaction() as session:
        edition = special.create_special_edition(
            session, settings=app.settings, slug=slug, path=path, subject=subject
        )
    click.echo(
        f"special edition {edition.id} of {slug} created ({len(edition.html or '') / 1024:.1f} KB);"
        f" send it with `newsletter send --edition {edition.id}` [--at TIME]",
        err=True,
    )
    click.echo(edition.id)
