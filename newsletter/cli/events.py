"""`newsletter events …`: mail that comes back (bounces, mailto unsubscribes)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import click

from newsletter.cli.common import App, pass_app
from newsletter.events.mail import MailReport, handle, messages


@click.group("events")
def group() -> None:
    """Read bounce reports and unsubscribe mail, from a mailbox or over SMTP."""


def _print(report: MailReport) -> None:
    e = report.events
    click.echo(
        f"{report.messages} messages: {report.bounces} bounces, {report.unsubscribes} "
        f"unsubscribe requests, {report.ignored} other, {report.unreadable} unreadable; "
        f"{e.suppressed} addresses suppressed, {e.unknown} bounces matched no delivery"
    )


@group.command("read-mail")
@click.argument("path", type=click.Path(path_type=Path))
@pass_app
def read_mail(app: App, path: Path) -> None:
    """Read a Maildir or an mbox of returned mail (each message is handled once)."""
    report = MailReport()
    for raw in messages(path):
        with app.transaction() as session:
            handle(session, app.settings, raw, report)
    _print(report)


@group.command("listen")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=2525, show_default=True)
@pass_app
def listen(app: App, host: str, port: int) -> None:
    """Receive returned mail over SMTP (behind the MTA of the return path) until stopped."""
    from newsletter.events.listen import Listener

    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Listener(app.settings, app.sessions, host=host, port=port) as listener:
            click.echo(f"listening for returned mail on {host}:{port} (Ctrl-C to stop)", err=True)
            stop.wait()
        _print(listener.report)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
