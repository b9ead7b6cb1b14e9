"""What every command group shares: the App context, output formatting, errors."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from newsletter import db
from newsletter.audience.imports import safe_cell as safe_cell  # moved: the web exports too
from newsletter.config import Settings, load_settings
from newsletter.errors import (
    ConfigError,
    InputError,
    NewsletterError,
    NotFoundError,
    ProviderConfigError,
)

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("table", "json", "csv")

#: A row id typed on the command line (an edition, a story): 1 up to the largest
#: INTEGER both SQLite and PostgreSQL store, so a huge number is a usage error, not
#: an overflow deep in the database driver.
ROW_ID = click.IntRange(1, 2**31 - 1)
#: Every edition id option and argument (``--edition N``, ``edition preview N``).
EDITION_ID = ROW_ID
#: A listing's ``--limit``: at least one row, and a number the database takes.
LIMIT = click.IntRange(1, 1_000_000)


@dataclass
class App:
    """Per-invocation state: settings (loaded once) and a lazily created engine."""

    config_path: str | None
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
            configure_logging(self._settings.service.log_level)
        return self._settings

    @cached_property
    def engine(self) -> Engine:
        return db.open_engine(self.settings)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        db.check_schema(self.engine)
        return db.session_factory(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One session in one transaction (commit on success, rollback on error)."""
        with db.transaction(self.sessions) as session:
            yield session

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()


pass_app = click.make_pass_decorator(App)


def configure_logging(level: str) -> None:
    """Log to stderr: rich on a terminal, plain timestamped lines otherwise."""
    root = logging.getLogger()
    if getattr(root, "_newsletter_configured", False):
        root.setLevel(level)
        return
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root._newsletter_configured = True  # type: ignore[attr-defined]
    # APScheduler says "Scheduler started", "Added job" and "Running job" at INFO for
    # every command that opens the job store; our own job records say what ran.
    for noisy in ("alembic", "apscheduler", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def format_option(*choices: str, default: str = "table") -> Callable[[F], F]:
    """The --format option shared by listing commands."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices or FORMATS),
        default=default,
        show_default=True,
        help="Output format.",
    )


def after_send(app: App, edition_id: int) -> None:
    """What follows every send: its rejected addresses become hard bounces (suppressed)."""
    from newsletter.events.ingest import rejections

    with app.transaction() as session:
        rejections(session, settings=app.settings, edition_id=edition_id)


def after_option(f: F) -> F:
    """The --after option of a paged listing (the cursor the last page printed)."""
    return click.option(
        "--after", "after", metavar="CURSOR", help="Continue a listing after this cursor."
    )(f)


def more_hint(cursor: str | None) -> None:
    """Tell, on stderr, how to see the next page (when there is one)."""
    if cursor is not None:
        click.echo(f"more rows: add --after '{cursor}'", err=True)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def emit_rows(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    fmt: str,
    *,
    title: str | None = None,
    out: io.TextIOBase | None = None,
) -> None:
    """Print rows as a rich table, a JSON array or CSV (formula-safe) on stdout."""
    plain = [{c: _plain(r.get(c)) for c in columns} for r in rows]
    if fmt == "json":
        click.echo(json.dumps(plain, indent=2, ensure_ascii=False))
    elif fmt == "csv":
        buf = io.StringIO()
        write_csv(buf, columns, plain)
        click.echo(buf.getvalue(), nl=False)
    else:
        table = Table(title=title, show_lines=False)
        for c in columns:
            # Fold long cells (addresses, titles, URLs) onto more lines instead of
            # cutting them to "amara…": a table must stay usable at 80 columns.
            table.add_column(c.replace("_", " "), overflow="fold")
        for r in plain:
            table.add_row(*("" if r[c] is None else str(r[c]) for c in columns))
        Console(soft_wrap=False).print(table)


@contextmanager
def atomic_file(path: Path, *, newline: str | None = None) -> Iterator[TextIO]:
    """Open ``path`` for writing text through a temporary sibling renamed into place on
    success, so a reader never sees half a file. The file gets ordinary permissions:
    the mode of the file it replaces, else 0666 less the umask (mkstemp's are 0600).
    Raises InputError naming the file when it cannot be written."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def write_csv(stream: Any, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Write rows as CSV with a header, every cell made formula-safe."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([safe_cell(_plain(r.get(c))) for c in columns])


def parse_date(value: str | None) -> date | None:
    """Parse YYYY-MM-DD or raise a click error naming the bad value."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InputError(f"{value!r} is not a date (use YYYY-MM-DD)") from None


class UserError(click.ClickException):
    """A NewsletterError shown as one line; exit code 1."""


class BadInput(UserError):
    """A NewsletterError about input or configuration; exit code 2."""

    exit_code = 2


#: Errors caused by what the user typed or configured: exit status 2.
BAD_INPUT = (ConfigError, InputError, NotFoundError, ProviderConfigError)

#: The next step the CLI suggests for an error code (formatted with its fields).
HINTS = {
    "config.not_found": "pass --config PATH or set NEWSLETTER_CONFIG",
    "db.uninitialised": "run `newsletter init` first",
    "edition.held": "release it with `newsletter edition release {edition_id}`",
    "edition.paused": "resume it with `newsletter send --resume {edition_id}`",
    "edition.not_holdable": "pause a running send with `newsletter send --pause {edition_id}`",
    "edition.no_stories": "run `newsletter stories fetch --newsletter {slug}` "
    "or add one with `newsletter stories add`",
    "edition.checks_failed": "see `newsletter edition check {edition_id}`",
    "send.failing": "fix the cause, then `newsletter deliveries requeue --edition {edition_id} "
    "--status failed` and send again",
    "subscription.unsubscribed": "add --resubscribe only at their own request",
    "subscriber.forget_one": "drop --newsletter",
    "import.conflict": "run it again",
    "job.configured": "pause it with `newsletter jobs pause {job_id}`, or change the config file",
}


def error_line(err: NewsletterError) -> str:
    """The one line the CLI prints for a service error: what, then what to do."""
    hint = HINTS.get(err.code)
    if hint:
        try:
            return f"{err}; {hint.format(**err.fields)}"
        except (KeyError, IndexError):
            pass  # a field the hint needs is missing: the message alone still says what
    return str(err)


class Group(click.Group):
    """A click group that turns NewsletterError into a one-line error and exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NewsletterError as err:
            raise (BadInput if isinstance(err, BAD_INPUT) else UserError)(error_line(err)) from None
