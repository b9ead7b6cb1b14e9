"""CSV import of subscribers, in bulk.

The file must have a header row. Columns (names case-insensitive, trimmed; extra
columns ignored): ``email`` (required), ``name``, ``timezone`` (IANA, empty = none),
``newsletters`` (slugs separated by ``;``) and ``status`` (pending or confirmed; one
value, or one per newsletter as written by ``subscribers export``). UTF-8 with or
without BOM; quoted fields with commas and newlines; any line ending.

Decisions:

- ``--newsletter`` / ``--status`` are defaults for rows whose cell is empty; a
  row's own value wins. Without ``--newsletter`` the default is the configured
  newsletter if there is only one; a file with no newsletters column and no
  default is refused.
- A row with too few fields is read with the missing cells empty; one with more
  non-empty fields than the header is an error (usually an unquoted comma).
- Each bad row is reported with its physical line number and every reason; good
  rows are imported. The second occurrence of an address (any spelling) is an error.
- Existing subscribers keep their name/timezone unless the row gives a new one;
  pending subscriptions may be confirmed, confirmed ones are never downgraded,
  unsubscribed ones are never re-subscribed, suppressed addresses are skipped.
- A leading ``'`` that ``subscribers export`` adds to neutralise spreadsheet
  formulas (``'=...``) is removed again, so an export re-imports unchanged.

Size: the file is read as a stream of lines, never whole, and refused beyond
``MAX_CSV_BYTES`` (100 MB, about a million subscribers), so a wrong path such as
``/dev/zero`` ends with one clear error instead of filling the memory.

Speed: rows are validated in Python a batch at a time, then existing rows are loaded
in chunks and new ones inserted with executemany — no ORM object per row.
"""

from __future__ import annotations

import codecs
import csv
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.audience.addresses import email_problem
from newsletter.audience.subscribers import clean_name, normalise_timezone
from newsletter.audience.suppression import email_hash
from newsletter.config import Settings
from newsletter.errors import CSVImportError, InputError, StateError
from newsletter.models import (
    Base,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    new_key,
    transition_subscription,
    utcnow,
)

CHUNK = 500  # parameters per IN (...): well under SQLite's and PostgreSQL's limits
INSERT_CHUNK = 5000
BATCH = 20_000  # rows validated, then written, at a time: memory stays flat
MAX_CSV_BYTES = 100 * 1024 * 1024
READ_BYTES = 64 * 1024
#: The line endings the csv module recognises (not the other Unicode separators).
_EOL = re.compile(r"\r\n|\r|\n")
COLUMNS = {
    "email": ("email", "email address", "e-mail", "e-mail address"),
    "name": ("name", "full name"),
    "timezone": ("timezone", "time zone", "tz"),
    "newsletters": ("newsletters", "newsletter"),
    "status": ("status",),
}
ROW_STATUSES = {s.value: s for s in (SubscriptionStatus.PENDING, SubscriptionStatus.CONFIRMED)}

T = TypeVar("T")


@dataclass(frozen=True)
class RowError:
    """One rejected row: physical line number (1 = header), the email cell, why."""

    line: int
    email: str
    reason: str


@dataclass
class ImportReport:
    """Counts of what an import did, and the rows it rejected.

    ``updated`` and ``unchanged`` count rows for existing subscribers (updated: a
    name/timezone changed, a subscription was added or confirmed);
    ``skipped_unsubscribed`` counts subscriptions left unsubscribed.
    """

    rows: int = 0
    added_subscribers: int = 0
    added_subscriptions: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_suppressed: int = 0
    skipped_unsubscribed: int = 0
    errors: list[RowError] = field(default_factory=list)


@dataclass
class _Row:
    line: int
    email: str
    name: str
    timezone: str | None
    wants: dict[str, SubscriptionStatus]


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _shown(value: str) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in value.strip())
    return text if len(text) <= 80 else text[:77] + "..."


#: What a spreadsheet reads as the start of a formula (and tab/CR, which some strip first).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """Neutralise spreadsheet formula injection in a CSV cell we write: a text that
    starts with = + - @ (or tab/CR) gets a leading ``'``; :func:`_cell` removes it
    again on import, so an export re-imports unchanged. Other values pass as they are.
    """
    if isinstance(value, str) and value[:1] in FORMULA_START:
        return "'" + value
    return value


def _cell(value: str) -> str:
    value = value.strip()
    if len(value) > 1 and value[0] == "'" and value[1] in FORMULA_START:
        value = value[1:]
    return value.strip()


def _too_large(path: Path, max_bytes: int) -> CSVImportError:
    mb = 1024 * 1024
    cap = f"{max_bytes / mb:g} MB" if max_bytes >= mb else f"{max_bytes} bytes"
    return CSVImportError(
        f"{path.name} is larger than {cap}, the most one import reads; split it into smaller files",
        code="import.too_large",
        max_bytes=max_bytes,
    )


def _lines(path: Path, *, max_bytes: int) -> Iterator[str]:
    """The file's physical lines (with their endings) decoded from UTF-8 (BOM or not),
    read in blocks. Raises CSVImportError when the file cannot be read, is not UTF-8
    (naming the line) or grows beyond ``max_bytes``."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    newlines = 0  # before the current block, for the line number of a bad byte
    size = 0
    parts: list[str] = []  # the line read so far: a list, so a huge line costs no copies
    carry = ""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise CSVImportError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        if os.fstat(fh.fileno()).st_size > max_bytes:  # a regular file says so at once
            raise _too_large(path, max_bytes)
        while True:
            try:
                block = fh.read(READ_BYTES)
            except OSError as exc:
                raise CSVImportError(f"cannot read {path}: {exc.strerror or exc}") from None
            size += len(block)
            if size > max_bytes:
                raise _too_large(path, max_bytes)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                # exc.object is this block after at most 3 buffered bytes (no newline).
                line = newlines + exc.object.count(b"\n", 0, exc.start) + 1
                raise CSVImportError(
                    f"{path.name} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on "
                    f"line {line}); save it as CSV UTF-8"
                ) from None
            newlines += block.count(b"\n")
            text, carry = carry + text, ""
            if block and text.endswith("\r"):
                text, carry = text[:-1], "\r"  # it may be the first half of "\r\n"
            start = 0
            for eol in _EOL.finditer(text):
                parts.append(text[start : eol.end()])
                yield "".join(parts)
                parts, start = [], eol.end()
            if start < len(text):
                parts.append(text[start:])
            if not block:
                if parts:
                    yield "".join(parts)
                return


def _header(record: list[str], path: Path) -> dict[str, int]:
    wanted = {alias: key for key, aliases in COLUMNS.items() for alias in aliases}
    found: dict[str, int] = {}
    for index, raw in enumerate(record):
        key = wanted.get(" ".join(raw.strip().lower().split()))
        if key is None:
            continue
        if key in found:
            raise CSVImportError(f"{path.name}: more than one {key} column in the header")
        found[key] = index
    if "email" not in found:
        names = ", ".join(repr(c.strip()) for c in record[:10]) or "nothing"
        raise CSVImportError(
            f"{path.name}: the header has no email column (found {names}); the first row "
            "must name the columns: email,name,timezone,newsletters"
        )
    return found


def _parse(
    path: Path,
    *,
    settings: Settings,
    newsletters: Sequence[str],
    status: SubscriptionStatus,
    report: ImportReport,
    max_bytes: int,
) -> Iterator[_Row]:
    """The file's good rows, one at a time; bad ones go to ``report.errors``."""
    reader = csv.reader(_lines(path, max_bytes=max_bytes))
    try:
        header = next(reader)
        while not any(c.strip() for c in header):  # leading blank lines
            header = next(reader)
    except StopIteration:
        raise CSVImportError(
            f"{path.name} is empty (a header row with email is required)"
        ) from None
    except csv.Error as exc:
        raise CSVImportError(f"{path.name}: unreadable header row: {exc}") from None
    columns = _header(header, path)
    width = len(header)
    only = list(settings.newsletters) if len(settings.newsletters) == 1 else []
    default_slugs = list(newsletters) or only
    if "newsletters" not in columns and not default_slugs:
        raise CSVImportError(
            f"{path.name} has no newsletters column: say which newsletter with --newsletter"
        )

    seen: dict[str, int] = {}
    previous = reader.line_num
    while True:
        line = previous + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            report.rows += 1
            report.errors.append(RowError(line, "", f"unreadable row: {exc}"))
            previous = reader.line_num
            continue
        previous = reader.line_num
        if not any(c.strip() for c in record):
            continue  # blank line, or a spreadsheet's empty ",,," row
        report.rows += 1

        def get(key: str, record: list[str] = record) -> str:
            index = columns.get(key)
            return _cell(record[index]) if index is not None and index < len(record) else ""

        raw_email = get("email")
        problems: list[str] = []
        if any(c.strip() for c in record[width:]):
            problems.append(f"too many fields ({len(record)}; the header has {width})")
        address, problem = email_problem(raw_email)
        if problem:
            problems.append(f"invalid address: {problem}")
        elif address in seen:
            problems.append(f"duplicate of line {seen[address]}")
        else:
            seen[address] = line
        name, zone = "", None
        try:
            name = clean_name(get("name"))
        except InputError as exc:
            problems.append(str(exc))
        try:
            zone = normalise_timezone(get("timezone"))
        except InputError as exc:
            problems.append(str(exc))
        slugs = _slugs(get("newsletters"), settings, problems) or default_slugs
        if not slugs and not problems:
            problems.append("no newsletter (fill the newsletters column or pass --newsletter)")
        wants = _statuses(get("status"), slugs, status, problems)
        if problems:
            report.errors.append(RowError(line, _shown(raw_email), "; ".join(problems)))
            continue
        yield _Row(line, address, name, zone, wants)


def _slugs(cell: str, settings: Settings, problems: list[str]) -> list[str]:
    slugs: list[str] = []
    for part in cell.split(";"):
        slug = part.strip().lower()
        if not slug or slug in slugs:
            continue
        if slug not in settings.newsletters:
            known = ", ".join(sorted(settings.newsletters))
            problems.append(f"unknown newsletter {_shown(slug)!r} (configured: {known})")
            continue
        slugs.append(slug)
    return slugs


def _statuses(
    cell: str, slugs: list[str], default: SubscriptionStatus, problems: list[str]
) -> dict[str, SubscriptionStatus]:
    values = [v.strip().lower() for v in cell.split(";")] if cell else []
    bad = [v for v in values if v not in ROW_STATUSES]
    if bad:
        problems.append(f"status {_shown(bad[0])!r} is not pending or confirmed")
        return {}
    if not values:
        return dict.fromkeys(slugs, default)
    if len(values) == 1:
        return dict.fromkeys(slugs, ROW_STATUSES[values[0]])
    if len(values) != len(slugs):
        problems.append(f"{len(values)} statuses for {len(slugs)} newsletters")
        return {}
    return {slug: ROW_STATUSES[v] for slug, v in zip(slugs, values, strict=True)}


def import_csv(
    session: Session,
    *,
    path: Path,
    settings: Settings,
    newsletters: Sequence[str] = (),
    status: SubscriptionStatus = SubscriptionStatus.PENDING,
    source: str = "import",
    max_bytes: int = MAX_CSV_BYTES,
) -> ImportReport:
    """Import subscribers from the CSV file at ``path`` (format in the module doc).

    ``newsletters`` and ``status`` apply to rows whose own cell is empty. Bad rows
    land in ``report.errors``; good rows are written in the caller's transaction,
    a batch at a time (the caller's rollback undoes them all). Re-importing the same
    file changes nothing. Raises CSVImportError when the file cannot be read at all
    (not UTF-8, empty, no email column, larger than ``max_bytes``), NotFoundError for
    an unknown ``newsletters`` slug, StateError if the list changed underneath.
    """
    if status is SubscriptionStatus.UNSUBSCRIBED:
        raise InputError("imported subscriptions must be pending or confirmed")
    for slug in newsletters:
        settings.newsletter(slug)
    report = ImportReport()
    rows = _parse(
        path,
        settings=settings,
        newsletters=newsletters,
        status=status,
        report=report,
        max_bytes=max_bytes,
    )
    try:
        for batch in _batches(rows, BATCH):
            _apply(session, batch, report, source)
    except IntegrityError:
        raise StateError(
            "the subscriber list changed while importing (another import or sign-up?); "
            "nothing was imported",
            code="import.conflict",
        ) from None
    return report


def _existing(
    session: Session, rows: list[_Row]
) -> tuple[set[str], dict[str, Any], dict[Any, Any]]:
    """Suppressed hashes, subscribers by email, subscriptions by (subscriber, slug)."""
    hashes = [email_hash(r.email) for r in rows]
    suppressed: set[str] = set()
    for chunk in _chunks(hashes, CHUNK):
        stmt = select(Suppression.email_hash).where(Suppression.email_hash.in_(chunk))
        suppressed.update(session.scalars(stmt))
    people: dict[str, Any] = {}
    for chunk in _chunks([r.email for r in rows], CHUNK):
        cols = select(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.timezone)
        people.update(
            (p.email, p) for p in session.execute(cols.where(Subscriber.email.in_(chunk)))
        )
    subs: dict[Any, Any] = {}
    ids = [p.id for p in people.values()]
    for chunk in _chunks(ids, CHUNK):
        query = select(
            Subscription.id,
            Subscription.subscriber_id,
            Subscription.newsletter,
            Subscription.status,
        ).where(Subscription.subscriber_id.in_(chunk))
        subs.update(((s.subscriber_id, s.newsletter), s) for s in session.execute(query))
    return suppressed, people, subs


def _apply(session: Session, rows: list[_Row], report: ImportReport, source: str) -> None:
    suppressed, people, subs = _existing(session, rows)
    now = utcnow()
    new_people: list[dict[str, Any]] = []
    new_subs: list[dict[str, Any]] = []  # subscriber_id filled in once known
    changes: list[dict[str, Any]] = []
    to_confirm: list[int] = []

    def subscription(slug: str, status: SubscriptionStatus, **extra: Any) -> dict[str, Any]:
        return {
            "newsletter": slug,
            "status": status,
            "source": source,
            "created_at": now,
            "confirmed_at": now if status is SubscriptionStatus.CONFIRMED else None,
            "unsubscribed_at": None,
            **extra,
        }

    for row in rows:
        if email_hash(row.email) in suppressed:
            report.skipped_suppressed += 1
            continue
        person = people.get(row.email)
        if person is None:
            # Set key and timestamps explicitly: every dict then has the same keys,
            # so SQLAlchemy sends one executemany rather than grouping by key set.
            new_people.append(
                {
                    "email": row.email,
                    "name": row.name,
                    "timezone": row.timezone,
                    "key": new_key(),
                    "created_at": now,
                    "updated_at": now,
                }
            )
            new_subs.extend(subscription(s, st, email=row.email) for s, st in row.wants.items())
            report.added_subscribers += 1
            report.added_subscriptions += len(row.wants)
            continue
        changed = False
        name = row.name or person.name
        zone = row.timezone or person.timezone
        if (name, zone) != (person.name, person.timezone):
            changes.append({"id": person.id, "name": name, "timezone": zone, "updated_at": now})
            changed = True
        for slug, status in row.wants.items():
            current = subs.get((person.id, slug))
            if current is None:
                new_subs.append(subscription(slug, status, subscriber_id=person.id))
                report.added_subscriptions += 1
                changed = True
            elif current.status is SubscriptionStatus.UNSUBSCRIBED:
                report.skipped_unsubscribed += 1
            elif (current.status, status) == (
                SubscriptionStatus.PENDING,
                SubscriptionStatus.CONFIRMED,
            ):
                to_confirm.append(current.id)
                changed = True
        if changed:
            report.updated += 1
        else:
            report.unchanged += 1

    # Core executemany on the tables: the ORM bulk path (and RETURNING through
    # insertmanyvalues) costs several times more for 100k rows; ids are read back.
    for people_chunk in _chunks(new_people, INSERT_CHUNK):
        session.execute(insert(_table(Subscriber)), list(people_chunk))
    ids: dict[str, int] = {}
    for email_chunk in _chunks([p["email"] for p in new_people], CHUNK):
        query = select(Subscriber.email, Subscriber.id).where(Subscriber.email.in_(email_chunk))
        ids.update((r.email, r.id) for r in session.execute(query))
    for sub in new_subs:
        if "email" in sub:
            sub["subscriber_id"] = ids[sub.pop("email")]
    for subs_chunk in _chunks(new_subs, INSERT_CHUNK):
        session.execute(insert(_table(Subscription)), list(subs_chunk))
    for change_chunk in _chunks(changes, INSERT_CHUNK):
        session.execute(update(Subscriber), list(change_chunk))
    # Confirmations are rarer (a re-import with --status confirmed): go through the
    # model's transition function like every other status change.
    for id_chunk in _chunks(to_confirm, CHUNK):
        for sub_obj in session.scalars(select(Subscription).where(Subscription.id.in_(id_chunk))):
            transition_subscription(sub_obj, SubscriptionStatus.CONFIRMED)
        session.flush()
