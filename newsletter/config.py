"""Typed settings: config.toml, overridden by NEWSLETTER_* environment variables.

Settings are built once by the entry point (CLI, scheduler) with :func:`load_settings`
and passed down; there is no module-level instance, so tests build their own.

Precedence, highest first: environment (``NEWSLETTER_<SECTION>__<KEY>``), then the
TOML file, then the defaults below. Secrets (token-signing key, API keys, SMTP
password, DKIM key) are read from the environment only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from newsletter.errors import ConfigError

ENV_PREFIX = "NEWSLETTER_"
DEFAULT_CONFIG = Path("config.toml")
DEV_SECRET = "development-only-secret-do-not-use-in-production"
SECRET_FIELDS = (
    "secret_key",
    "sendgrid_api_key",
    "smtp_password",
    "dkim_private_key",
    "sendgrid_webhook_key",
)
PLACEHOLDER_SECRETS = {"", "change-me", "changeme", "secret", "dev", "xxx", "todo", "placeholder"}
MIN_SECRET_LENGTH = 16


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email address {value!r}: {exc}") from None


class ServiceSettings(_Section):
    """Who the service is and how it runs."""

    name: str = "The Daily Briefing"
    environment: Literal["development", "production"] = "development"
    templates_dir: str = "templates"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class SenderSettings(_Section):
    """The From identity and the footer every message carries."""

    from_name: str = "The Daily Briefing"
    from_address: str = "briefing@news.example.com"
    reply_to: str | None = None
    postal_address: str = "1 Newsroom Way, Springfield"
    unsubscribe_mailto: str | None = None
    list_id: str | None = None

    _emails = field_validator("from_address", "reply_to", "unsubscribe_mailto")(
        lambda v: None if v is None else _check_email(v)
    )

    @property
    def domain(self) -> str:
        return self.from_address.rsplit("@", 1)[1]

    @property
    def unsubscribe_address(self) -> str:
        return self.unsubscribe_mailto or f"unsubscribe@{self.domain}"


class SiteSettings(_Section):
    """The public web site that links in emails point at (always absolute)."""

    base_url: str = "https://news.example.com"

    @field_validator("base_url")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("must be an absolute http(s) URL")
        # Links are this plus a path and a URL-safe token: they must read the same in
        # text and (escaped) in HTML, so none of these may appear; nor a query.
        if any(c in v for c in "&<>\"'?# \t"):
            raise ValueError("must be a plain base URL (no query, fragment, spaces or & < > \" ')")
        return v.rstrip("/")


class DatabaseSettings(_Section):
    """SQLAlchemy URL; a relative SQLite path is relative to the config file.

    The pool is per process (each web node, worker and sender has its own): size it
    so processes x (pool_size + max_overflow) stays under PostgreSQL's
    max_connections. Unset, pool_size is what the process needs (web.threads for
    the web, 5 otherwise)."""

    url: str = "sqlite:///var/newsletter.db"
    pool_size: int | None = Field(default=None, ge=1, le=200)
    max_overflow: int = Field(default=5, ge=0, le=200)
    # Connections older than this are replaced, and each is tested before use, so a
    # restarted PostgreSQL or a proxy's idle cut costs a reconnect, not an error.
    pool_recycle_seconds: int = Field(default=1800, ge=30)


class SendGridSettings(_Section):
    api_base_url: str = "https://api.sendgrid.com"
    timeout_seconds: float = Field(default=30.0, gt=0)


class SMTPSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    pool_size: int = Field(default=4, ge=1, le=64)
    timeout_seconds: float = Field(default=30.0, gt=0)
    return_path: str | None = None
    verp: bool = False
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"


ProviderName = Literal["outbox", "sendgrid", "smtp"]
PROVIDER_NAMES: tuple[str, ...] = get_args(ProviderName)


class DeliverySettings(_Section):
    """Which provider carries mail, and how the ledger hands it out."""

    provider: ProviderName = "outbox"
    secondary_provider: ProviderName | None = None
    failover_after: int = Field(default=5, ge=1)
    stop_after_failed_batches: int = Field(default=3, ge=1)
    outbox_dir: str = "var/outbox"
    batch_size: int = Field(default=1000, ge=1, le=1000)
    lease_seconds: int = Field(default=300, ge=1)
    # Transient faults are retried (backoff with jitter) until the retry window
    # closes, never past the newsletter's stale_after; max_attempts is only a
    # safety cap on provider calls per recipient.
    retry_window: str = "2h"
    max_attempts: int = Field(default=50, ge=1)
    retry_base_seconds: float = Field(default=2.0, ge=0)
    # Every batch failing transiently for this long pauses the send (a provider outage).
    outage_seconds: float = Field(default=300.0, gt=0)
    # Runners heartbeat this often; one silent for 4 heartbeats is taken for dead.
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    rate_per_second: float | None = Field(default=None, gt=0)
    concurrency: int = Field(default=1, ge=1, le=32)
    processes: int = Field(default=1, ge=1, le=16)
    uncertain: Literal["skip", "resend"] = "skip"
    sendgrid: SendGridSettings = SendGridSettings()
    smtp: SMTPSettings = SMTPSettings()

    @field_validator("retry_window")
    @classmethod
    def _window(cls, v: str) -> str:
        _duration(v, "retry_window")
        return v

    @property
    def retry_delay(self) -> dt.timedelta:
        """``retry_window`` parsed."""
        return _duration(self.retry_window, "retry_window")


class QueueSettings(_Section):
    """Where sends run: in the process that starts them, or on Celery workers."""

    backend: Literal["inline", "celery"] = "inline"
    # Redis or RabbitMQ; may carry credentials, so it is kept out of every log and
    # repr (NEWSLETTER_QUEUE__BROKER_URL in the environment).
    broker_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    queue_name: str = Field(default="newsletter", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    # Tasks queued per send: each busy worker slot takes one, so this caps how many
    # slots share one edition (a worker started late takes one still waiting).
    tasks_per_send: int = Field(default=8, ge=1, le=256)
    # A task waits this long for retries and other workers' batches (keep it above
    # delivery.lease_seconds); a row due later (a wave, a long backoff) is left to a
    # task queued for that time.
    wait_seconds: float = Field(default=600.0, gt=0, le=3600)


class SchedulerSettings(_Section):
    """The `newsletter scheduler` daemon: its single-runner lease and its tick."""

    lease_seconds: int = Field(default=60, ge=5)
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    dispatch_seconds: int = Field(default=60, ge=1)
    one_off_grace_minutes: int = Field(default=60, ge=1)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> SchedulerSettings:
        if self.heartbeat_seconds >= self.lease_seconds / 2:
            raise ValueError(
                f"heartbeat_seconds {self.heartbeat_seconds:g} must be under half of "
                f"lease_seconds {self.lease_seconds}"
            )
        return self


class WebSettings(_Section):
    """`newsletter serve`: the readers' pages (and, later, the console and the API)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    confirm_days: int = Field(default=7, ge=1, le=90)  # a confirmation link expires
    confirm_every_hours: float = Field(default=24.0, gt=0)  # one confirmation per address
    subscribe_per_ip_per_hour: int = Field(default=10, ge=1)
    captcha: Literal["none", "altcha"] = "none"
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Behind a reverse proxy the client's address is in X-Forwarded-For; trust it only
    # when the proxy sets it (else anyone could pick the address their requests count
    # against).
    trust_forwarded_for: bool = False
    # Requests served at once (worker threads, and database connections to match):
    # more only queue on the interpreter lock and cost a cold connection each.
    threads: int = Field(default=8, ge=1, le=200)
    # The staff console: how long a login lasts, and failed logins allowed per hour
    # for one account and for one client address.
    staff_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    login_failures_per_hour: int = Field(default=10, ge=1)


class EventsSettings(_Section):
    """What happens after the hand-off: provider events, bounces, complaints."""

    max_age_seconds: int = Field(default=600, ge=10)  # a signed webhook older is refused
    soft_bounce_limit: int = Field(default=3, ge=1)  # soft bounces that suppress...
    soft_bounce_days: int = Field(default=7, ge=1)  # ...within this many days


class NewsletterSettings(_Section):
    """One newsletter: where its stories come from, when and how it goes out."""

    name: str
    description: str = ""
    feeds: list[str] = []
    schedule: str = "30 6 * * *"
    timezone: str = "UTC"
    max_stories: int = Field(default=8, ge=1, le=30)
    freshness_hours: int = Field(default=24, ge=1)
    subject: str = "{{ newsletter.name }}: {{ lead.title }}"
    template: str = "briefing"
    # Open and click tracking (SendGrid): false turns it off and stores none.
    tracking: bool = True
    # Scheduling (see newsletter/scheduler.py). local_time "HH:MM" delivers in each
    # subscriber's own timezone; stale_after is the deadline past which a run or a
    # wave is skipped: a local clock time "HH:MM" or a delay after the scheduled
    # time ("90m", "2h"); review_minutes builds the edition that long before sending.
    local_time: str | None = None
    stale_after: str = "2h"
    review_minutes: int = Field(default=0, ge=0, le=1440)

    @field_validator("local_time")
    @classmethod
    def _local_time(cls, v: str | None) -> str | None:
        if v is not None:
            _clock(v, "local_time")
        return v

    @field_validator("stale_after")
    @classmethod
    def _stale_after(cls, v: str) -> str:
        _deadline(v)
        return v

    @property
    def local_clock(self) -> dt.time | None:
        """``local_time`` as a time of day, if set."""
        return _clock(self.local_time, "local_time") if self.local_time else None

    @property
    def staleness(self) -> dt.time | dt.timedelta:
        """``stale_after`` parsed: a local clock time, or a delay after the scheduled time."""
        return _deadline(self.stale_after)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {v!r}") from None
        return v

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(v)
        except ValueError as exc:
            raise ValueError(f"invalid cron expression {v!r}: {exc}") from None
        return v


_DAY_NAMES = ("Sundays", "Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays")
_DAY_KEYS = {name[:3].lower(): i for i, name in enumerate(_DAY_NAMES)}


def _days(field: str) -> str | None:
    """A cron day-of-week field in words, or None when it is not a simple one."""
    if field in ("*", "?"):
        return "every day"
    if field.lower() in ("1-5", "mon-fri"):
        return "weekdays"
    days = []
    for part in field.lower().split(","):
        index = int(part) % 7 if part.isdigit() else _DAY_KEYS.get(part)
        if index is None:
            return None  # a range or step: said as the cron expression would be clearer
        days.append(_DAY_NAMES[index])
    return " and ".join([", ".join(days[:-1]), days[-1]] if len(days) > 1 else days)


def describe_cadence(newsletter: NewsletterSettings) -> str:
    """When a newsletter comes, in words: "every morning at 06:30 your time",
    "Saturdays at 08:00 London time"; "" for a schedule too irregular to say simply."""
    fields = newsletter.schedule.split()
    if len(fields) != 5 or fields[2] != "*" or fields[3] != "*":
        return ""
    days = _days(fields[4])
    if days is None:
        return ""
    if newsletter.local_time:
        at, where = newsletter.local_time, "your time"
    elif fields[0].isdigit() and fields[1].isdigit():
        at = f"{int(fields[1]):02d}:{int(fields[0]):02d}"
        where = newsletter.timezone.rsplit("/", 1)[-1].replace("_", " ") + " time"
    else:
        return ""
    if days == "every day":
        days = "every morning" if at < "12:00" else "every evening" if at >= "17:00" else days
    return f"{days} at {at} {where}"


def _clock(value: str, what: str) -> dt.time:
    if re.fullmatch(r"\d\d:\d\d", value):
        try:
            return dt.time.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{what} {value!r} is not a time of day HH:MM")


def _duration(value: str, what: str, *, least: str = "1s") -> dt.timedelta:
    """``"90s"``, ``"90m"`` or ``"2h"``: between ``least`` and 7 days."""
    match = re.fullmatch(r"(\d+)\s*([smh])", value.strip())
    if not match:
        raise ValueError(f"{what} {value!r} is not a duration like 90s, 30m or 2h")
    amount, unit = int(match.group(1)), match.group(2)
    delay = dt.timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours"}[unit]: amount})
    floor = dt.timedelta(minutes=1) if least == "1m" else dt.timedelta(seconds=1)
    if not floor <= delay <= dt.timedelta(days=7):
        raise ValueError(f"{what} {value!r} must be between {least} and 168h")
    return delay


def _deadline(value: str) -> dt.time | dt.timedelta:
    if re.fullmatch(r"(\d+)\s*([mh])", value.strip()):
        return _duration(value, "stale_after", least="1m")
    try:
        return _clock(value, "stale_after")
    except ValueError:
        raise ValueError(
            f"stale_after {value!r} is neither a local time HH:MM nor a delay like 90m or 2h"
        ) from None


def _default_newsletters() -> dict[str, NewsletterSettings]:
    return {
        "daily-briefing": NewsletterSettings(name="The Daily Briefing"),
    }


class Settings(BaseSettings):
    """The whole configuration. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    service: ServiceSettings = ServiceSettings()
    sender: SenderSettings = SenderSettings()
    site: SiteSettings = SiteSettings()
    database: DatabaseSettings = DatabaseSettings()
    delivery: DeliverySettings = DeliverySettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    queue: QueueSettings = QueueSettings()
    web: WebSettings = WebSettings()
    events: EventsSettings = EventsSettings()
    newsletters: dict[str, NewsletterSettings] = Field(default_factory=_default_newsletters)

    # Secrets: environment only (NEWSLETTER_SECRET_KEY, ...).
    secret_key: SecretStr | None = None
    sendgrid_api_key: SecretStr | None = None
    smtp_password: SecretStr | None = None
    dkim_private_key: SecretStr | None = None
    sendgrid_webhook_key: SecretStr | None = None  # the Signed Event Webhook's public key

    # Where the config file lives; relative paths in settings resolve against it.
    base_dir: Path = Path(".")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)

    @field_validator("newsletters")
    @classmethod
    def _slugs(cls, v: dict[str, NewsletterSettings]) -> dict[str, NewsletterSettings]:
        if not v:
            raise ValueError("at least one newsletter must be configured")
        for slug in v:
            if not slug.replace("-", "").replace("_", "").isalnum() or slug != slug.lower():
                raise ValueError(f"newsletter slug {slug!r} must be lower-case letters, digits, -")
        return v

    # ----- derived values -------------------------------------------------

    @property
    def dev_mode(self) -> bool:
        return self.service.environment == "development"

    def path(self, value: str | Path) -> Path:
        """Resolve a path setting relative to the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def database_url(self) -> str:
        """The database URL with a relative SQLite path made absolute."""
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            rest = url[len(prefix) :]
            if rest and rest != ":memory:" and not rest.startswith("file:"):
                return prefix + str(self.path(rest).resolve())
        return url

    @property
    def templates_path(self) -> Path:
        return self.path(self.service.templates_dir)

    @property
    def outbox_path(self) -> Path:
        return self.path(self.delivery.outbox_dir)

    @property
    def signing_key(self) -> str:
        """The token-signing secret (validated by :func:`load_settings`)."""
        return self.secret_key.get_secret_value() if self.secret_key else DEV_SECRET

    def newsletter(self, slug: str) -> NewsletterSettings:
        """Return one newsletter's settings; NotFoundError names the known slugs."""
        from newsletter.errors import NotFoundError

        try:
            return self.newsletters[slug]
        except KeyError:
            known = ", ".join(sorted(self.newsletters))
            raise NotFoundError(
                f"unknown newsletter {slug!r} (configured: {known})",
                code="newsletter.unknown",
                slug=slug,
            ) from None


def _format_validation_error(exc: ValidationError, source: Path) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    env_name = ENV_PREFIX + "__".join(str(p) for p in first["loc"]).upper()
    origin = f"environment {env_name}" if env_name in os.environ else str(source)
    return f"invalid setting {loc} in {origin}: {msg}{more}"


def _format_settings_error(exc: SettingsError) -> str:
    """One line naming the environment variable behind a SettingsError.

    pydantic-settings names only the top-level field ("delivery"); the variable may be
    ``NEWSLETTER_DELIVERY`` or a nested ``NEWSLETTER_DELIVERY__SMTP`` holding bad JSON.
    """
    match = re.search(r'field "(\w+)"', str(exc))
    field = match.group(1) if match else ""
    prefix = (ENV_PREFIX + field).upper()
    names = sorted(
        n for n in os.environ if n.upper() == prefix or n.upper().startswith(prefix + "__")
    )
    bad = [n for n in names if not _is_json(os.environ[n])] or names
    name = bad[0] if bad else prefix
    cause = exc.__cause__
    reason = f" ({cause})" if isinstance(cause, ValueError) else ""
    return (
        f"environment variable {name} is not valid JSON{reason}; set one key with {name}__KEY=value"
    )


def _is_json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def config_path(explicit: str | Path | None = None) -> Path:
    """The config file to read: --config, then NEWSLETTER_CONFIG, then ./config.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def _check_secrets(settings: Settings) -> None:
    if settings.dev_mode:
        return
    key = settings.secret_key.get_secret_value() if settings.secret_key else ""
    if key.strip().lower() in PLACEHOLDER_SECRETS or len(key) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"{ENV_PREFIX}SECRET_KEY must be set to a random value of at least "
            f"{MIN_SECRET_LENGTH} characters when service.environment is 'production'"
        )
    for name in SECRET_FIELDS[1:]:
        value: SecretStr | None = getattr(settings, name)
        if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} is a placeholder; set the real value")


def load_settings(path: str | Path | None = None) -> Settings:
    """Read the TOML file, apply environment overrides, validate.

    Raises ConfigError (one line, naming the file and key) on any problem.
    """
    source = config_path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {source} not found", code="config.not_found", path=str(source)
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {source}: {exc.strerror}") from None
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {source} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {source} is not valid TOML: {exc}") from None
    for name in (*SECRET_FIELDS, "base_dir"):
        if name in data:
            raise ConfigError(
                f"{source}: '{name}' must not be in the config file; "
                f"set {ENV_PREFIX}{name.upper()} in the environment"
                if name != "base_dir"
                else f"{source}: 'base_dir' is not a setting"
            )
    data["base_dir"] = source.resolve().parent
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    except SettingsError as exc:  # an environment value pydantic-settings cannot decode
        raise ConfigError(_format_settings_error(exc), code="config.environment") from None
    _check_secrets(settings)
    if settings.queue.backend == "celery" and settings.database_url.startswith("sqlite"):
        raise ConfigError(
            f'{source}: queue.backend = "celery" needs PostgreSQL (database.url): '
            "SQLite has one writer, so workers on other processes or machines cannot share it",
            code="config.queue_sqlite",
        )
    return settings
