"""End to end through the CLI, as a new user runs it from the README.

Real database, the sample feeds and subscribers shipped in the repo, the `outbox`
provider writing real .eml files that are parsed back with the stdlib parser.
"""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
from email import policy
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from newsletter.config import Settings
from newsletter.tokens import read_token
from tests.conftest import ROOT, CliRun

SAMPLE = ROOT / "subscribers" / "sample.csv"
REQUIRED = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)


def daily_audience() -> set[str]:
    """The sample subscribers of the daily briefing (the CSV is the source of truth)."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[1:]
    return {line.split(",")[0].lower() for line in lines if "daily-briefing" in line.split(",")[-1]}


def emls(settings: Settings) -> list[Path]:
    return sorted(settings.outbox_path.rglob("*.eml"))


def parse(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def quickstart(run_cli: CliRun) -> None:
    run_cli("subscribers", "import", str(SAMPLE), "--status", "confirmed")
    run_cli("run", "--newsletter", "daily-briefing")


def test_quickstart_delivers_the_briefing_to_every_sample_subscriber(
    run_cli: CliRun, settings: Settings
) -> None:
    run_cli("subscribers", "import", str(SAMPLE), "--status", "confirmed")
    result = run_cli("run", "--newsletter", "daily-briefing")
    audience = daily_audience()
    assert len(audience) >= 10
    files = emls(settings)
    assert len(files) == len(audience)
    assert "sent this run" in result.stdout and "delivered in" in result.stdout
    recipients = set()
    for path in files:
        msg = parse(path)
        for header in REQUIRED:
            assert msg[header], (header, path)
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        recipients.add(msg["To"].addresses[0].addr_spec.lower())
        assert msg.get_content_type() == "multipart/alternative"
        parts = list(msg.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
        assert all(p.get_content_charset() == "utf-8" for p in parts)
        text, html = parts[0].get_content(), parts[1].get_content()
        assert "%%" not in text and "%%" not in html  # every placeholder filled
        # List-Unsubscribe: an https URL with a signed token, then a mailto
        https, mailto = [v.strip(" <>") for v in msg["List-Unsubscribe"].split(",")]
        assert https.startswith("https://news.example.com/unsubscribe/")
        assert mailto.startswith("mailto:unsubscribe@news.example.com?subject=")
        token = urlsplit(https).path.rsplit("/", 1)[1]
        data = read_token(settings.signing_key, token, purpose="unsubscribe")
        assert data.newsletter == "daily-briefing"
        address = msg["To"].addresses[0].addr_spec
        assert address.lower() not in https.lower() and address.lower() not in unquote(mailto)
        assert https in html and https in text
        assert msg["List-Id"].endswith("<daily-briefing.news.example.com>")
    assert recipients == audience


def test_send_again_sends_nothing_twice(run_cli: CliRun, settings: Settings) -> None:
    quickstart(run_cli)
    before = {p: p.stat().st_mtime_ns for p in emls(settings)}
    again = run_cli("send", "--newsletter", "daily-briefing")
    assert "nothing to send" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in emls(settings)} == before
    stats = json.loads(run_cli("deliveries", "stats", "--format", "json").stdout)
    assert stats["sent"] == len(daily_audience()) == stats["total"]


def test_step_by_step_build_preview_check_send_and_log(
    run_cli: CliRun, settings: Settings, tmp_path: Path
) -> None:
    run_cli("subscribers", "import", str(SAMPLE), "--status", "confirmed")
    run_cli("stories", "fetch", "--newsletter", "daily-briefing")
    built = run_cli("edition", "build", "--newsletter", "daily-briefing")
    edition_id = built.stdout.strip()
    assert edition_id.isdigit()
    # building again returns the same edition
    assert (
        run_cli("edition", "build", "--newsletter", "daily-briefing").stdout.strip() == edition_id
    )

    out = tmp_path / "preview.html"
    run_cli("edition", "preview", edition_id, "--output", str(out))
    assert out.read_text(encoding="utf-8").lower().startswith("<!doctype html>")
    text = run_cli("edition", "preview", edition_id, "--format", "text").stdout
    assert "unsubscribe/preview" in text
    assert "all checks passed" in run_cli("edition", "check", edition_id).stdout

    dry = run_cli("send", "--edition", edition_id, "--dry-run")
    assert f"audience: {len(daily_audience())} recipients" in dry.stdout
    assert emls(settings) == []

    test_copy = run_cli("send", "--edition", edition_id, "--test-to", "Editor@Example.org")
    assert "editor@example.org" in test_copy.stdout
    assert [p.name for p in emls(settings)] == ["test-editor@example.org.eml"]
    assert json.loads(run_cli("deliveries", "stats", "--format", "json").stdout)["total"] == 0

    run_cli("send", "--edition", edition_id)
    rows = json.loads(
        run_cli("deliveries", "list", "--edition", edition_id, "--format", "json").stdout
    )
    assert len(rows) == len(daily_audience())
    assert {r["status"] for r in rows} == {"sent"}
    assert all(r["provider"] == "outbox" and r["message_id"] for r in rows)
    one = sorted(daily_audience())[0]
    mine = json.loads(run_cli("deliveries", "list", "--email", one, "--format", "json").stdout)
    assert [r["email"] for r in mine] == [one]
    # once sending started, a rebuild is refused
    refused = run_cli("edition", "build", "--newsletter", "daily-briefing", "--rebuild", expect=1)
    assert "cannot be rebuilt" in refused.output


def test_unsubscribed_and_suppressed_readers_are_not_sent(
    run_cli: CliRun, settings: Settings
) -> None:
    run_cli("subscribers", "import", str(SAMPLE), "--status", "confirmed")
    gone, bounced = sorted(daily_audience())[:2]
    run_cli("subscribers", "remove", gone, "--newsletter", "daily-briefing")
    run_cli("subscribers", "suppress", bounced, "--reason", "bounced")
    run_cli("run", "--newsletter", "daily-briefing")
    sent_to = {parse(p)["To"].addresses[0].addr_spec.lower() for p in emls(settings)}
    assert sent_to == daily_audience() - {gone, bounced}


def test_no_stories_is_a_clear_error(run_cli: CliRun) -> None:
    result = run_cli("edition", "build", "--newsletter", "good-news", expect=1)
    assert "no eligible stories" in result.output
    assert result.output.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("edition", "preview", "999"), 2, "no edition with id 999"),
        (("send", "--newsletter", "nope"), 2, "unknown newsletter 'nope'"),
        (("send",), 2, "give --newsletter SLUG or --edition ID"),
        (("deliveries", "list", "--email", "not-an-address"), 2, "invalid email address"),
        (
            ("edition", "build", "--newsletter", "daily-briefing", "--date", "2026-13-01"),
            2,
            "not a date",
        ),
        (("subscribers", "import", "/nonexistent.csv"), 2, ""),
        (("send", "--cancel", "42"), 2, "no edition with id 42"),
    ],
)
def test_user_errors_are_one_line(
    run_cli: CliRun, args: tuple[str, ...], code: int, message: str
) -> None:
    result = run_cli(*args, expect=code)
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0], result.output


def test_uninitialised_database_says_run_init(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/fresh.db"\n')
    env = {**os.environ, "NEWSLETTER_CONFIG": str(cfg)}
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "deliveries", "stats"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert "newsletter init" in result.stderr and "Traceback" not in result.stderr
    init = subprocess.run(
        [sys.executable, "-m", "newsletter", "init"], capture_output=True, text=True, env=env
    )
    assert init.returncode == 0 and "schema revision" in init.stdout
    again = subprocess.run(
        [sys.executable, "-m", "newsletter", "init"], capture_output=True, text=True, env=env
    )
    assert again.returncode == 0
