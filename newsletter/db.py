"""Engine and session factories, and schema creation/upgrade through Alembic.

No queries live here. SQLite gets WAL, foreign keys and a busy timeout on every
connection; PostgreSQL is used as configured (``postgresql+psycopg://``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.errors import ConfigError, InputError, NewsletterError

MIGRATIONS = Path(__file__).parent / "migrations"

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing: its rows and the cursor that continues it.

    Listings page by keyset (the last row's sort key), never by offset, so a page
    deep in a long list costs what the first does. ``cursor`` is opaque text for
    the faces to hand back; None means this was the last page.
    """

    items: Sequence[T]
    cursor: str | None


def cursor_parts(cursor: str, count: int) -> list[str]:
    """The ``count`` fields of a cursor (``a|b``); InputError for one not made by us."""
    parts = cursor.split("|")
    if len(parts) != count or not all(parts):
        raise InputError(f"invalid page cursor {cursor!r}", code="input.cursor")
    return parts


def cursor_int(text: str) -> int:
    """A cursor field that is a row id."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise InputError(f"invalid page cursor {text!r}", code="input.cursor")
    return int(text)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA cache_size=-65536")  # 64 MiB: the ledger of a big send stays in memory
    cur.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url``; a SQLite file's folder is created if missing.

    Raises ConfigError for a bad URL, a missing driver, or a SQLite folder that
    cannot be created (under a file, in /proc, no permission)."""
    try:
        if url.startswith("sqlite:///") and ":memory:" not in url:
            folder = Path(url.removeprefix("sqlite:///")).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                # mkdir says "File exists" when a file is in the way: name that file.
                there = next((p for p in (folder, *folder.parents) if p.exists()), None)
                why = (
                    f"{there} is a file, not a folder"
                    if there is not None and not there.is_dir()
                    else exc.strerror or str(exc)
                )
                raise ConfigError(
                    f"database.url: cannot create the SQLite database's folder {folder}: {why}",
                    code="config.database_folder",
                    path=str(folder),
                ) from None
        engine = create_engine(url, **kwargs)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(f"invalid database.url: {exc}") from None
    except ImportError as exc:
        raise ConfigError(f"database driver missing for database.url: {exc.name}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        _WRITERS[engine] = threading.RLock()
    return engine


def open_engine(settings: Settings, *, pool_size: int | None = None) -> Engine:
    """The engine of ``settings.database``, with this process's pool: ``pool_size``
    is what the caller needs when ``database.pool_size`` does not say."""
    d, url = settings.database, settings.database_url
    if ":memory:" in url:  # one connection per thread: no pool to size
        return make_engine(url)
    options: dict[str, Any] = {
        "pool_size": d.pool_size or pool_size or 5,
        "max_overflow": d.max_overflow,
    }
    if not url.startswith("sqlite"):
        options.update(pool_pre_ping=True, pool_recycle=d.pool_recycle_seconds)
    return make_engine(url, **options)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


#: One writer at a time per SQLite engine, queued in the process (see transaction).
_WRITERS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
#: How long a writer waits for the queue before leaving it to SQLite's busy timeout.
WRITER_WAIT_SECONDS = 30.0


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one transaction: commit on success, roll back on any error.

    SQLite takes one writer at a time; threads that all write at once (the web's
    thread pool, sender threads) would otherwise wait in SQLite's busy handler,
    which sleeps up to 100 ms between tries, so writers queue here first.
    """
    bind = factory.kw.get("bind")
    lock = _WRITERS.get(bind) if isinstance(bind, Engine) else None
    held = lock.acquire(timeout=WRITER_WAIT_SECONDS) if lock is not None else False
    try:
        with factory() as session, session.begin():
            yield session
    finally:
        if held and lock is not None:
            lock.release()


def executemany(session: Session, sql: str, rows: Sequence[Sequence[Any]]) -> int:
    """Run one hot-path statement for many rows straight through the driver.

    ``sql`` uses ``?`` placeholders (rewritten for the driver); datetimes in ``rows``
    must come from :func:`driver_time`. Skips SQLAlchemy's per-row parameter
    processing, which costs more than the insert itself on a large batch. Returns
    the driver's rowcount (-1 when it does not say).
    """
    if not rows:
        return 0
    conn = session.connection()
    if conn.dialect.name != "sqlite":
        sql = sql.replace("?", "%s")
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(sql, rows)
        return int(cursor.rowcount if cursor.rowcount is not None else -1)
    finally:
        cursor.close()


def select_in(
    session: Session, sql: str, values: Sequence[Any], *, size: int = 500
) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` for many ``values``, straight through the driver.

    ``sql`` holds one ``IN ({})``, filled with ``size`` placeholders at a time; this
    skips SQLAlchemy's per-value expansion, which dominates a large lookup.
    """
    conn = session.connection()
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    rows: list[tuple[Any, ...]] = []
    try:
        for start in range(0, len(values), size):
            chunk = list(values[start : start + size])
            cursor.execute(sql.format(", ".join([mark] * len(chunk))), chunk)
            rows.extend(tuple(row) for row in cursor.fetchall())
    finally:
        cursor.close()
    return rows


def driver_time(session: Session) -> Callable[[datetime | None], Any]:
    """A converter of aware datetimes into what the UTC column type stores, for
    :func:`executemany` (SQLite keeps naive UTC text; PostgreSQL takes them as they are)."""
    if session.get_bind().dialect.name != "sqlite":
        return lambda value: None if value is None else value.astimezone(UTC)

    def sqlite_text(value: datetime | None) -> str | None:
        if value is None:
            return None
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None).isoformat(" ", "microseconds")

    return sqlite_text


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> str:
    """Create or upgrade the schema to the newest revision; returns that revision."""
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(engine)
    try:
        command.upgrade(cfg, "head")
    except OperationalError as exc:
        raise NewsletterError(
            f"cannot reach the database: {exc.orig}", code="db.unreachable"
        ) from None
    head = ScriptDirectory.from_config(cfg).get_current_head()
    return head or ""


def check_schema(engine: Engine) -> None:
    """Raise a clear error when the database has not been initialised."""
    try:
        tables = set(inspect(engine).get_table_names())
    except OperationalError as exc:
        raise NewsletterError(
            f"cannot reach the database: {exc.orig}", code="db.unreachable"
        ) from None
    if "deliveries" not in tables:
        raise NewsletterError("the database is not initialised", code="db.uninitialised")
