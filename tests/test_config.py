"""Settings: TOML file, environment overrides, secrets, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import cli
from newsletter.config import DEV_SECRET, load_settings
from newsletter.errors import ConfigError
from tests.conftest import ROOT


def test_repository_config_loads_with_two_newsletters() -> None:
    s = load_settings(ROOT / "config.toml")
    assert {"daily-briefing", "good-news"} <= set(s.newsletters)
    daily = s.newsletter("daily-briefing")
    assert daily.max_stories == 8 and daily.freshness_hours == 24
    assert s.delivery.provider == "outbox"
    assert s.database_url == f"sqlite:///{ROOT / 'var' / 'newsletter.db'}"
    assert s.outbox_path == ROOT / "var" / "outbox"
    assert s.signing_key == DEV_SECRET  # development mode


def test_environment_overrides_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEWSLETTER_DATABASE__URL", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.setenv("NEWSLETTER_DELIVERY__OUTBOX_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("NEWSLETTER_DELIVERY__BATCH_SIZE", "250")
    s = load_settings(ROOT / "config.toml")
    assert s.database_url == f"sqlite:///{tmp_path}/x.db"
    assert s.outbox_path == tmp_path / "out"
    assert s.delivery.batch_size == 250
    # the file's other settings survive a nested override
    assert s.delivery.uncertain == "skip"


def test_config_chosen_by_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[service]\nname = "Env Chosen"\n')
    monkeypatch.setenv("NEWSLETTER_CONFIG", str(cfg))
    assert load_settings().service.name == "Env Chosen"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[service\nname=1", "is not valid TOML"),
        ('[delivery]\nbatch_size = "many"', "delivery.batch_size"),
        ("[delivery]\nbatch_size = 5000", "delivery.batch_size"),
        ('[delivery]\nprovider = "pigeon"', "delivery.provider"),
        ('[service]\nnmae = "typo"', "service.nmae"),
        ('[site]\nbase_url = "news.example.com"', "site.base_url"),
        ('[sender]\nfrom_address = "not an address"', "sender.from_address"),
        ('[newsletters.daily]\nname = "D"\nschedule = "61 * * * *"', "invalid cron expression"),
        ('[newsletters.daily]\nname = "D"\ntimezone = "Mars/Olympus"', "unknown IANA timezone"),
        ('[newsletters.Bad_Slug]\nname = "D"', "must be lower-case"),
        ('secret_key = "hunter2hunter2hunter2"', "must not be in the config file"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
    assert "hunter2" not in str(err.value)


def test_bad_config_cli_exit_2_no_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[delivery]\nbatch_size = -1\n")
    result = CliRunner().invoke(cli, ["--config", str(cfg), "deliveries", "stats"])
    assert result.exit_code == 2
    assert "delivery.batch_size" in result.output and str(cfg) in result.output
    assert "Traceback" not in result.output
    missing = CliRunner().invoke(cli, ["--config", str(tmp_path / "nope.toml"), "init"])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_production_refuses_missing_or_placeholder_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "prod.toml"
    cfg.write_text('[service]\nenvironment = "production"\n')
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="NEWSLETTER_SECRET_KEY"):
        load_settings(cfg)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "change-me")
    with pytest.raises(ConfigError, match="NEWSLETTER_SECRET_KEY"):
        load_settings(cfg)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "a-real-random-secret-0123456789")
    monkeypatch.setenv("NEWSLETTER_SENDGRID_API_KEY", "changeme")
    with pytest.raises(ConfigError, match="NEWSLETTER_SENDGRID_API_KEY") as err:
        load_settings(cfg)
    assert "a-real-random-secret" not in str(err.value)
    monkeypatch.delenv("NEWSLETTER_SENDGRID_API_KEY")
    s = load_settings(cfg)
    assert s.signing_key == "a-real-random-secret-0123456789"
    assert "a-real-random-secret" not in repr(s)


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    cfg = tmp_path / "sub" / "c.toml"
    cfg.write_text('[database]\nurl = "sqlite:///data/n.db"\n[delivery]\noutbox_dir = "mail"\n')
    s = load_settings(cfg)
    assert s.database_url == f"sqlite:///{tmp_path / 'sub' / 'data' / 'n.db'}"
    assert s.outbox_path == tmp_path / "sub" / "mail"


def test_the_broker_url_comes_from_the_environment_and_never_shows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEWSLETTER_QUEUE__BROKER_URL", "redis://:s3cret-broker-pw@10.0.0.5:6379/2")
    monkeypatch.setenv("NEWSLETTER_QUEUE__BACKEND", "celery")
    monkeypatch.setenv("NEWSLETTER_DATABASE__URL", "postgresql+psycopg://app@db.internal/news")
    settings = load_settings(ROOT / "config.toml")
    assert settings.queue.backend == "celery"
    assert settings.queue.broker_url.get_secret_value().endswith("@10.0.0.5:6379/2")
    assert "s3cret-broker-pw" not in repr(settings) + str(settings.queue)
    from newsletter.delivery.queue import safe_url

    assert "s3cret-broker-pw" not in safe_url(settings.queue.broker_url.get_secret_value())
