"""Delivery providers behind one small Protocol (see base.py), chosen in config."""

from __future__ import annotations

from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.providers.base import Outcome, PreparedEdition, Provider, Recipient

__all__ = ["Outcome", "PreparedEdition", "Provider", "Recipient", "make_provider"]


def make_provider(settings: Settings, name: str | None = None) -> Provider:
    """Build the configured provider (or ``name``); raises ProviderConfigError early."""
    name = name or settings.delivery.provider
    if name == "outbox":
        from newsletter.providers.outbox import OutboxProvider

        return OutboxProvider(settings.outbox_path)
    if name == "sendgrid":
        from newsletter.providers.sendgrid import SendGridProvider

        return SendGridProvider.from_settings(settings)
    if name == "smtp":
        from newsletter.providers.smtp import SMTPProvider

        return SMTPProvider.from_settings(settings)
    raise ConfigError(f"delivery.provider {name!r} is not available in this build")
