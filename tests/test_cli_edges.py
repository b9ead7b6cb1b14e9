"""The CLI's rough edges (issue 7), each pinned by a command run as a user runs it.

Most go through the in-process runner (``run_cli`` refuses any traceback); the ones
about log lines on stderr run ``python -m newsletter`` in a subprocess, because the
log handler is installed once per process.
"""

from __future__ import annotations

import email
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from email import policy
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from click.testing import CliRunner, Result
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.audience import imports
from newsletter.cli import cli
from newsletter.config import Settings
from newsletter.errors import CSVImportError, InputError
from newsletter.models import Subscriber, Suppression
from newsletter.schedule import oneoff, scheduler, waves
from tests import factories
from tests.conftest import ROOT, CliRun, write_config

SAMPLE = ROOT / "subscribers" / "sample.csv"
NY = ZoneInfo("America/New_York")
LONG_ADDRESS = "amara.okafor-lefevre.correspondent@newsroom.subdomain.example.org"


def errors(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("Error")]


def newsletter_cmd(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m newsletter --config CONFIG ARGS`` in a subprocess (its own logging)."""
    return subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def build_edition(run_cli: CliRun, sessions: sessionmaker[Session], title: str) -> int:
    with sessions.begin() as db:
        factories.story(db, title=title)
    return int(run_cli("edition", "build", "--newsletter", "daily-briefing").stdout)


# ----- an unknown newsletter is bad input (exit 2) in every command -------------------


@pytest.mark.parametrize(
    "args",
    [
        ("send", "--newsletter", "nope"),
        ("send", "--newsletter", "nope", "--dry-run"),
        ("send", "--newsletter", "nope", "--at", "14:30"),
        ("run", "--newsletter", "nope"),
        ("edition", "build", "--newsletter", "nope"),
        ("edition", "list", "--newsletter", "nope"),
        ("edition", "from-file", "{md}", "--newsletter", "nope", "--subject", "Bridge closed"),
        ("stories", "fetch", "--newsletter", "nope"),
        ("stories", "fetch", "--feed", "feeds/world.xml", "--newsletter", "nope"),
        ("stories", "add", "--title", "T", "--url", "https://e.org/t", "--newsletter", "nope"),
        ("stories", "list", "--newsletter", "nope"),
        ("subscribers", "add", "a@example.org", "--newsletter", "nope"),
        ("subscribers", "list", "--newsletter", "nope"),
        ("subscribers", "import", str(SAMPLE), "--newsletter", "nope"),
        ("subscribers", "export", "--newsletter", "nope"),
        ("jobs", "history", "--newsletter", "nope"),
        ("jobs", "pause", "newsletter:nope"),
    ],
    ids=lambda args: " ".join(a for a in args if a != "{md}")[:60],
)
def test_unknown_newsletter_exits_2_everywhere(
    run_cli: CliRun, tmp_path: Path, args: tuple[str, ...]
) -> None:
    md = tmp_path / "breaking.md"
    md.write_text("# The bridge is closed\n\nUntil further notice.\n", encoding="utf-8")
    result = run_cli(*(str(md) if a == "{md}" else a for a in args), expect=2)
    [line] = errors(result)
    assert "nope" in line, result.output


# ----- the delivery log of an edition that does not exist ---------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("deliveries", "stats", "--edition", "5"),
        ("deliveries", "list", "--edition", "5"),
        ("deliveries", "requeue", "--edition", "5", "--status", "failed"),
    ],
)
def test_deliveries_of_an_unknown_edition_say_so(run_cli: CliRun, args: tuple[str, ...]) -> None:
    result = run_cli(*args, expect=2)
    assert errors(result) == ["Error: no edition with id 5"]


def test_deliveries_of_an_edition_not_sent_yet_are_zeros(
    run_cli: CliRun, sessions: sessionmaker[Session]
) -> None:
    edition_id = build_edition(run_cli, sessions, "Council approves budget")
    stats = json.loads(
        run_cli("deliveries", "stats", "--edition", str(edition_id), "--format", "json").stdout
    )
    assert stats["total"] == 0


# ----- removing an address that was never subscribed ---------------------------------


def suppressed(sessions: sessionmaker[Session]) -> int:
    with sessions() as db:
        return int(db.scalar(select(func.count()).select_from(Suppression)) or 0)


@pytest.mark.parametrize("forget", [False, True])
def test_removing_an_unknown_address_says_so_and_suppresses_nothing(
    run_cli: CliRun, sessions: sessionmaker[Session], forget: bool
) -> None:
    args = ["subscribers", "remove", "Never@Example.org"] + (["--forget"] if forget else [])
    result = run_cli(*args, expect=2)
    [line] = errors(result)
    assert "no subscriber never@example.org" in line
    assert suppressed(sessions) == 0


def test_forgetting_an_address_held_only_as_a_suppression_keeps_just_its_hash(
    run_cli: CliRun, sessions: sessionmaker[Session]
) -> None:
    # We hold the address (a manual suppression): erasing it is not a no-op.
    run_cli("subscribers", "suppress", "held@example.org")
    run_cli("subscribers", "remove", "held@example.org", "--forget")
    with sessions() as db:
        [entry] = db.scalars(select(Suppression)).all()
    assert entry.email is None and entry.email_hash


# ----- CSV import: rejected rows on stderr, the exit status tells -------------------


def test_import_lists_rejected_rows_on_stderr_and_exits_1(
    run_cli: CliRun, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        "email,name,newsletters\n"
        "ana@example.org,Ana,daily-briefing\n"
        "not-an-address,Bad,daily-briefing\n"
        "ben@example.org,Ben,weekly-gossip\n"
        "cy@example.org,Cy,good-news\n",
        encoding="utf-8",
    )
    result = run_cli("subscribers", "import", str(path), expect=1)
    rejected = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert [line.split(":")[0] for line in rejected] == ["line 3", "line 4"]
    assert "invalid address" in rejected[0] and "unknown newsletter" in rejected[1]
    assert "line " not in result.stdout and "2 of 4 rows rejected" in result.stderr
    with sessions() as db:
        emails = set(db.scalars(select(Subscriber.email)))
    assert emails == {"ana@example.org", "cy@example.org"}


def test_import_of_good_rows_exits_0_with_nothing_on_stderr(run_cli: CliRun) -> None:
    result = run_cli("subscribers", "import", str(SAMPLE))
    assert result.stderr == ""


def test_import_of_dev_zero_is_one_clear_error(
    run_cli: CliRun, sessions: sessionmaker[Session]
) -> None:
    result = run_cli("subscribers", "import", "/dev/zero", expect=2)
    assert result.output.count("\n") == 1
    [line] = errors(result)
    assert "zero is larger than 100 MB" in line and "split it" in line
    with sessions() as db:
        assert db.scalar(select(func.count()).select_from(Subscriber)) == 0


def test_import_refuses_a_file_over_the_cap_before_reading_it(
    session: Session, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "big.csv"
    path.write_text("email,newsletters\n" + "a@example.org,good-news\n" * 100, encoding="utf-8")
    with pytest.raises(CSVImportError, match="big.csv is larger than 1000 bytes") as err:
        imports.import_csv(session, path=path, settings=settings, max_bytes=1000)
    assert err.value.code == "import.too_large"


def test_import_streams_blocks_with_exact_line_numbers(
    run_cli: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small read blocks, so a CRLF and a multi-byte character straddle block edges.
    monkeypatch.setattr(imports, "READ_BYTES", 7)
    path = tmp_path / "crlf.csv"
    rows = [f"reader{n}@example.org,Zoë {n},daily-briefing" for n in range(1, 40)]
    rows[20] = "broken,Bad,daily-briefing"  # line 22
    path.write_bytes(("email,name,newsletters\r\n" + "\r\n".join(rows) + "\r\n").encode())
    result = run_cli("subscribers", "import", str(path), expect=1)
    rejected = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert [line.split(":")[0] for line in rejected] == ["line 22"]
    assert "added subscribers" in result.stdout and "38" in result.stdout
    bad = tmp_path / "latin.csv"
    bad.write_bytes(("email,name\r\n" + "x@example.org,A\r\n" * 30).encode() + b"y@e.org,\xeb\r\n")
    result = run_cli("subscribers", "import", str(bad), "--newsletter", "good-news", expect=2)
    assert errors(result) == [
        "Error: latin.csv is not UTF-8 text (byte 0xeb on line 32); save it as CSV UTF-8"
    ]


# ----- the scheduler commands: no traceback, no APScheduler chatter ------------------


def make_dispatch_due(settings: Settings, engine: Engine) -> None:
    """Store the jobs with the dispatcher's next run in the past (due right now)."""
    with scheduler.open_scheduler(settings, engine, paused=True) as sched:
        sched.modify_job("dispatch", next_run_time=datetime.now(UTC) - timedelta(minutes=5))


def test_scheduler_commands_print_no_traceback_and_no_apscheduler_lines(
    run_cli: CliRun, config_file: Path, settings: Settings, engine: Engine
) -> None:
    run_cli("send", "--newsletter", "daily-briefing", "--at", "23:59")
    commands = [
        ("scheduler", "--once"),
        ("jobs", "list"),
        ("jobs", "pause", "newsletter:good-news"),
        ("jobs", "resume", "newsletter:good-news"),
        ("jobs", "pause", "send:1"),
        ("jobs", "remove", "send:1"),
    ]
    for args in commands:
        make_dispatch_due(settings, engine)  # the case that used to print a traceback
        done = newsletter_cmd(config_file, *args)
        assert done.returncode == 0, (args, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)
        assert "apscheduler" not in done.stderr.lower(), (args, done.stderr)


def test_a_stopped_scheduler_submits_no_job(caplog: pytest.LogCaptureFixture) -> None:
    """The daemon's scheduler: after shutdown APScheduler's loop makes one more pass;
    ours must not hand a due job to the executor that was just shut down."""

    def noop() -> None:
        pass

    class KeptStore(MemoryJobStore):  # type: ignore[misc]
        """Like the project's store, it keeps its jobs when the scheduler shuts down."""

        def shutdown(self) -> None:
            pass

    def run(cls: type[BackgroundScheduler]) -> list[str]:
        caplog.clear()
        sched = cls(
            jobstores={"default": KeptStore()},
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            timezone=UTC,
        )
        sched.start(paused=True)
        sched.add_job(noop, "interval", minutes=1, next_run_time=datetime.now(UTC))
        with caplog.at_level(logging.ERROR, logger="apscheduler"):
            sched.shutdown(wait=True)
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]

    assert any("Error submitting job" in m for m in run(BackgroundScheduler))  # the bug
    assert run(scheduler._Scheduler) == []


# ----- tables at 80 columns -----------------------------------------------------------


def column(output: str, name: str) -> str:
    """Every fragment of a rich table column, joined: a folded cell reads whole."""
    lines = output.splitlines()
    header = next(line for line in lines if "┃" in line and name in line)
    index = [c.strip() for c in header.split("┃")].index(name)
    body = [line for line in lines if "│" in line]
    return "".join(line.split("│")[index].strip() for line in body)


def test_tables_fold_long_cells_at_80_columns(
    run_cli: CliRun, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    title = "Council approves the budget after a marathon overnight session of debate"
    with sessions.begin() as db:
        factories.subscriber(db, LONG_ADDRESS, name="Amara Okafor-Lefèvre")
        factories.story(db, title=title)
    listing = run_cli("subscribers", "list").stdout
    assert "…" not in listing
    assert max(len(line) for line in listing.splitlines()) <= 80
    assert LONG_ADDRESS in column(listing, "email")
    stories = run_cli("stories", "list").stdout
    assert "…" not in stories and max(len(line) for line in stories.splitlines()) <= 80
    assert title.replace(" ", "") in column(stories, "title").replace(" ", "")


# ----- editions: subjects in the list, previews with ordinary permissions ------------


def test_edition_list_shows_a_built_editions_subject(
    run_cli: CliRun, sessions: sessionmaker[Session]
) -> None:
    edition_id = build_edition(run_cli, sessions, "Council approves budget")
    [row] = json.loads(run_cli("edition", "list", "--format", "json").stdout)
    assert row["id"] == edition_id and row["status"] == "built"
    assert row["subject"] == "The Daily Ledger: Council approves budget"


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_preview_output_gets_ordinary_permissions(
    run_cli: CliRun, sessions: sessionmaker[Session], tmp_path: Path, mask: int
) -> None:
    edition_id = build_edition(run_cli, sessions, "Council approves budget")
    os.umask(mask)
    out = tmp_path / "previews" / "preview.html"
    run_cli("edition", "preview", str(edition_id), "--output", str(out))
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    exported = tmp_path / "subscribers.csv"
    run_cli("subscribers", "export", "--output", str(exported))
    assert exported.stat().st_mode & 0o777 == 0o666 & ~mask


# ----- pinning a story that was already sent -----------------------------------------


def test_pinning_a_sent_story_says_it_will_not_be_repeated(
    run_cli: CliRun, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as db:
        factories.subscriber(db)
        sent = factories.story(db, title="Council approves budget").id
        fresh = factories.story(db, title="Bridge reopens", age=timedelta(hours=30)).id
    edition_id = run_cli("edition", "build", "--newsletter", "daily-briefing").stdout.strip()
    run_cli("send", "--edition", edition_id)
    result = run_cli("stories", "pin", str(sent))
    assert f"story {sent} pinned" in result.stdout
    assert f"already sent in edition {edition_id}" in result.stderr
    assert "will not be in the next one" in result.stderr
    quiet = run_cli("stories", "pin", str(fresh))
    assert quiet.stderr == "" and f"story {fresh} pinned" in quiet.stdout


# ----- the quick start reports each feed once -----------------------------------------


def test_run_reports_each_feed_once(run_cli: CliRun, config_file: Path) -> None:
    run_cli("subscribers", "import", str(SAMPLE), "--status", "confirmed")
    done = newsletter_cmd(config_file, "run", "--newsletter", "daily-briefing")
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    for feed in ("world.xml", "business.xml", "science.xml"):
        assert said.count(feed) == 1, said


# ----- no traceback for bad values from the environment, the command line, the disk ---


def test_bad_json_in_the_environment_names_the_variable(
    run_cli: CliRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_DELIVERY", "{oops")
    result = run_cli("deliveries", "stats", expect=2)
    [line] = errors(result)
    assert line.startswith("Error: environment variable NEWSLETTER_DELIVERY is not valid JSON")


HUGE = "999999999999999999999"


@pytest.mark.parametrize(
    "args",
    [
        ("deliveries", "stats", "--edition", HUGE),
        ("deliveries", "list", "--edition", HUGE),
        ("deliveries", "requeue", "--edition", HUGE, "--status", "failed"),
        ("edition", "show", HUGE),
        ("edition", "preview", HUGE),
        ("edition", "check", HUGE),
        ("edition", "hold", HUGE),
        ("edition", "release", HUGE),
        ("stories", "hide", HUGE),
        ("stories", "pin", HUGE),
        ("jobs", "remove", f"send:{HUGE}"),
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_huge_id_is_a_usage_error(run_cli: CliRun, args: tuple[str, ...]) -> None:
    result = run_cli(*args, expect=2)
    assert "Traceback" not in result.output and len(errors(result)) == 1, result.output


@pytest.mark.parametrize("option", ["--edition", "--pause", "--resume", "--cancel"])
def test_a_huge_edition_id_in_send_is_a_usage_error(run_cli: CliRun, option: str) -> None:
    result = run_cli("send", option, HUGE, expect=2)
    assert len(errors(result)) == 1, result.output


@pytest.mark.parametrize("where", ["/proc/nope", "{file}"])
def test_an_impossible_sqlite_folder_is_one_config_error(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    folder = where.replace("{file}", str(blocker))
    config = write_config(tmp_path / "config.toml", f"sqlite:///{folder}/sub/newsletter.db")
    for args in (("init",), ("deliveries", "stats")):
        result = CliRunner().invoke(cli, ["--config", str(config), *args])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
        assert "cannot create the SQLite database's folder" in result.output
    if where == "{file}":
        assert f"{blocker} is a file, not a folder" in result.output


# ----- one-off sends: the newsletter's timezone, UTC, and "tomorrow" -----------------


def test_send_at_answers_in_the_newsletters_timezone_and_utc(run_cli: CliRun) -> None:
    now = datetime.now(NY)
    earlier = now - timedelta(hours=1)
    moved = earlier.date() == now.date()  # past today, so tomorrow (unless just after 0:00)
    out = run_cli("send", "--newsletter", "daily-briefing", "--at", f"{earlier:%H:%M}").stdout
    first = out.splitlines()[0]
    assert first.startswith("scheduled send:1: daily-briefing's edition of the day at ")
    assert "(America/New_York)" in first and first.endswith(" UTC")
    assert f"{earlier:%H:%M} E" in first  # 14:30 EST / EDT: the local time as typed
    assert ("moved to tomorrow" in out) is moved


def test_one_off_policy_as_a_service(session: Session, settings: Settings) -> None:
    now = datetime(2026, 3, 9, 15, 0, tzinfo=UTC)  # 11:00 in New York (EDT)
    one = oneoff.schedule_one_off(
        session,
        settings=settings,
        at="10:30",
        slug="daily-briefing",
        edition_id=None,
        issue_date=None,
        now=now,
    )
    assert one.tomorrow and one.timezone == "America/New_York"
    assert one.send_at == waves.local_instant(date(2026, 3, 10), time(10, 30), NY)
    assert one.local_send_at.strftime("%Y-%m-%d %H:%M") == "2026-03-10 10:30"
    assert one.deadline == one.send_at + timedelta(minutes=settings.scheduler.one_off_grace_minutes)
    assert str(one.job_id) == "send:1"
    with pytest.raises(InputError) as err:
        oneoff.schedule_one_off(
            session,
            settings=settings,
            at="10:30",
            slug=None,
            edition_id=None,
            issue_date=None,
            now=now,
        )
    assert err.value.code == "oneoff.no_target"


def test_send_at_refuses_an_edition_of_another_newsletter(
    run_cli: CliRun, sessions: sessionmaker[Session]
) -> None:
    edition_id = build_edition(run_cli, sessions, "Council approves budget")
    result = run_cli(
        "send", "--newsletter", "good-news", "--edition", str(edition_id), "--at", "23:59",
        expect=2,
    )  # fmt: skip
    assert errors(result) == [
        f"Error: edition {edition_id} belongs to daily-briefing, not good-news"
    ]


@pytest.mark.parametrize("text", ["send:abc", "send:0", "newsletter:", "dispatch:x", "nope"])
def test_job_ids_are_parsed_in_one_place(run_cli: CliRun, text: str) -> None:
    result = run_cli("jobs", "remove", text, expect=2)
    assert errors(result) == [
        f"Error: {text!r} is not a job id (newsletter:SLUG, dispatch or send:N)"
    ]


# ----- a test send's subject -----------------------------------------------------------


def test_a_test_sends_subject_starts_with_the_test_mark(
    run_cli: CliRun, sessions: sessionmaker[Session], settings: Settings
) -> None:
    edition_id = build_edition(run_cli, sessions, "Council approves budget")
    run_cli("send", "--edition", str(edition_id), "--test-to", "me@example.org")
    [path] = settings.outbox_path.rglob("*.eml")
    msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    raw = msg.get("Subject", "")
    assert raw == "[TEST] The Daily Ledger: Council approves budget"
