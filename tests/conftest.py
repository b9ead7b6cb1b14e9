"""Shared fixtures: a config file per test, a real database (SQLite, and PostgreSQL
when NEWSLETTER_TEST_DATABASE_URL is set), and a CLI runner bound to that config."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from newsletter import db
from newsletter.cli import cli
from newsletter.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PG_ENV = "NEWSLETTER_TEST_DATABASE_URL"

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(
                not os.environ.get(PG_ENV),
                reason=f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1/test)",
            ),
        ],
    ),
]

CONFIG_TEMPLATE = """
[service]
name = "The Test Ledger"
environment = "development"
templates_dir = "{templates}"
log_level = "INFO"

[sender]
from_name = "The Test Ledger"
from_address = "briefing@news.example.com"
reply_to = "editors@news.example.com"
postal_address = "1 Newsroom Way, Springfield"

[site]
base_url = "https://news.example.com"

[database]
url = "{db_url}"

[delivery]
provider = "outbox"
outbox_dir = "{outbox}"

[newsletters.daily-briefing]
name = "The Daily Ledger"
feeds = [{feeds}]
schedule = "30 6 * * *"
timezone = "America/New_York"
max_stories = 8
freshness_hours = 24
subject = "{{{{ newsletter.name }}}}: {{{{ lead.title }}}}"
template = "briefing"

[newsletters.good-news]
name = "Good News Weekly"
feeds = ["{good_news}"]
schedule = "0 8 * * sat"
timezone = "Europe/London"
max_stories = 6
freshness_hours = 168
subject = "{{{{ newsletter.name }}}}: {{{{ lead.title }}}}"
template = "briefing"
"""


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL for each test and backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'newsletter.db'}"
    url = os.environ[PG_ENV]
    _reset_postgres(url)
    return url


def write_config(path: Path, db_url: str, **overrides: str) -> Path:
    """Write a test config.toml using the repository's templates and sample feeds."""
    feeds = ", ".join(
        f'"{ROOT / "feeds" / n}"' for n in ("world.xml", "business.xml", "science.xml")
    )
    values = {
        "templates": str(ROOT / "templates"),
        "db_url": db_url,
        "outbox": str(path.parent / "outbox"),
        "feeds": feeds,
        "good_news": str(ROOT / "feeds" / "good-news.xml"),
    }
    values.update(overrides)
    path.write_text(CONFIG_TEMPLATE.format(**values), encoding="utf-8")
    return path


@pytest.fixture
def config_file(tmp_path: Path, db_url: str) -> Path:
    return write_config(tmp_path / "config.toml", db_url)


@pytest.fixture
def settings(config_file: Path) -> Settings:
    return load_settings(config_file)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = db.make_engine(settings.database_url)
    db.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return db.session_factory(engine)


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions() as s:
        yield s


CliRun = Callable[..., Result]


@pytest.fixture
def run_cli(config_file: Path, engine: Engine) -> CliRun:
    """Invoke `newsletter --config <test config> ARGS...` on an initialised database."""

    def run(*args: str, input: str | None = None, expect: int | None = 0) -> Result:
        result = CliRunner().invoke(cli, ["--config", str(config_file), *args], input=input)
        assert "Traceback" not in result.output, result.output
        if expect is not None:
            assert result.exit_code == expect, (result.exit_code, result.output, result.exception)
        return result

    return run
