"""The `newsletter` command: a thin layer over the service modules.

Each command group lives in its own module; this one holds the root group, `init`
and the entry point that makes every user error one line with a non-zero exit.
"""

from __future__ import annotations

import sys

import click

from newsletter import __version__, db
from newsletter.cli.common import App, Group, pass_app


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="NEWSLETTER_CONFIG",
    type=click.Path(dir_okay=False),
    help="Config file (default: ./config.toml; env NEWSLETTER_CONFIG).",
)
@click.version_option(__version__, prog_name="newsletter")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Compose the day's stories into editions and deliver them to subscribers."""
    app = App(config_path)
    ctx.obj = app
    ctx.call_on_close(app.close)


@cli.command()
@pass_app
def init(app: App) -> None:
    """Create the database, or upgrade it to the newest schema (idempotent)."""
    revision = db.upgrade(app.engine)
    click.echo(f"database ready at schema revision {revision}")


def _register() -> None:
    from newsletter.cli import (
        deliveries,
        editions,
        events,
        scheduler,
        send,
        serve,
        staff,
        stories,
        subscribers,
        workers,
    )

    cli.add_command(subscribers.group)
    cli.add_command(stories.group)
    cli.add_command(editions.group)
    cli.add_command(send.send)
    cli.add_command(send.run)
    cli.add_command(deliveries.group)
    cli.add_command(scheduler.scheduler_command)
    cli.add_command(scheduler.group)
    cli.add_command(serve.serve)
    cli.add_command(events.group)
    cli.add_command(staff.group)
    cli.add_command(workers.worker)
    cli.add_command(workers.workers)


_register()


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="newsletter"))
