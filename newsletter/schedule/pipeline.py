"""The main job: fetch a newsletter's feeds, build today's edition, check, send.

The scheduler's jobs and `newsletter run` call :func:`run_newsletter`; each stage is
the same service function the individual CLI commands use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions, stories
from newsletter.content.stories import FetchReport
from newsletter.db import transaction
from newsletter.delivery import sender
from newsletter.delivery.providers import Provider

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What one pipeline run did."""

    newsletter: str
    feeds: list[FetchReport]
    edition_id: int
    edition_created: bool
    send: sender.SendReport


def build_today(
    sessions: sessionmaker[Session],
    *,
    settings: Settings,
    slug: str,
    issue_date: date | None = None,
) -> tuple[int, bool]:
    """Build (or find) the edition for ``issue_date`` (default: today); returns (id, created)."""
    with transaction(sessions) as session:
        edition, created = editions.build_edition(
            session, settings=settings, slug=slug, issue_date=issue_date
        )
        return edition.id, created


def run_newsletter(
    sessions: sessionmaker[Session],
    *,
    settings: Settings,
    slug: str,
    provider: Provider,
    secondary: Provider | None = None,
    progress: sender.Progress | None = None,
) -> RunReport:
    """Fetch → build → check → send for one newsletter. Raises like its stages do."""
    settings.newsletter(slug)
    with transaction(sessions) as session:
        feeds = stories.fetch_newsletter(session, newsletter=slug, settings=settings)
    for report in feeds:
        if report.error:
            log.warning("feed %s skipped: %s", report.feed, report.error)
    edition_id, created = build_today(sessions, settings=settings, slug=slug)
    result = sender.send_edition(
        sessions,
        settings=settings,
        edition_id=edition_id,
        provider=provider,
        secondary=secondary,
        progress=progress,
    )
    return RunReport(slug, feeds, edition_id, created, result)
