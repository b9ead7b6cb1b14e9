"""Delivery providers behind one small Protocol (see base.py), chosen in config."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from newsletter.config import Settings
from newsletter.delivery.providers.base import Outcome, PreparedEdition, Provider, Recipient
from newsletter.errors import ConfigError

__all__ = [
    "Outcome",
    "PreparedEdition",
    "Provider",
    "Recipient",
    "make_provider",
    "open_providers",
]


def make_provider(settings: Settings, name: str | None = None) -> Provider:
    """Build the configured provider (or ``name``); raises ProviderConfigError early."""
    name = name or settings.delivery.provider
    if name == "outbox":
        from newsletter.delivery.providers.files import OutboxProvider

        return OutboxProvider(settings.outbox_path)
    if name == "sendgrid":
        from newsletter.delivery.providers.sendgrid import SendGridProvider

        return SendGridProvider.from_settings(settings)
    if name == "smtp":
        from newsletter.delivery.providers.smtp import SMTPProvider

        return SMTPProvider.from_settings(settings)
    raise ConfigError(
        f"delivery.provider {name!r} is not available in this build",
        code="config.provider_unknown",
        provider=name,
    )


@contextmanager
def open_providers(settings: Settings) -> Iterator[tuple[Provider, Provider | None]]:
    """The configured provider and its failover (if any), closed afterwards."""
    primary = make_provider(settings)
    try:
        name = settings.delivery.secondary_provider
        secondary = make_provider(settings, name) if name else None
        try:
            yield primary, secondary
        finally:
            if secondary is not None:
                secondary.close()
    finally:
        primary.close()
