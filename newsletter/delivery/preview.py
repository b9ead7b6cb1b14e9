"""What a send would do, without sending: previews and dry runs.

Staff look at an edition as a reader would (the web console and the CLI show the
same thing), and a dry run says what a send would do now: the subject, the sizes,
the audience, the pre-send checks, and whether the edition may go at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.content import editions, render
from newsletter.content.types import RenderedEdition
from newsletter.delivery import ledger, links, log
from newsletter.delivery.personalise import Personaliser
from newsletter.models import Edition, EditionStatus

Part = Literal["html", "text"]


def content_of(edition: Edition, settings: Settings) -> RenderedEdition:
    """The edition's content: frozen when sending started, else rendered now."""
    return editions.frozen_content(edition) or editions.render_edition(edition, settings)


def preview(session: Session, *, settings: Settings, edition_id: int, part: Part) -> str:
    """One part of an edition as a reader sees it, with sample recipient values.

    Raises NotFoundError for an unknown edition and RenderError for a template fault.
    """
    edition = editions.get_edition(session, edition_id)
    personal = Personaliser(content_of(edition, settings))
    values = links.preview_values(settings)
    return personal.html(values) if part == "html" else personal.text(values)


@dataclass(frozen=True)
class DryRun:
    """What a send of one edition would do now."""

    edition_id: int | None  # None: built for the dry run only, not stored
    newsletter: str
    issue_date: date
    status: EditionStatus
    subject: str
    html_bytes: int
    text_bytes: int
    audience: int
    frozen: bool  # the audience is already frozen (a send started)
    problems: tuple[str, ...]

    @property
    def sendable(self) -> bool:
        """Whether a send would start: checks pass and the edition is not held."""
        return not self.problems and self.status in (
            EditionStatus.BUILT,
            EditionStatus.SENDING,
            EditionStatus.SENT,
        )


def _dry_run(session: Session, settings: Settings, edition: Edition, *, stored: bool) -> DryRun:
    content = content_of(edition, settings)
    frozen = sum(log.stats(session, edition_id=edition.id).values()) if stored else 0
    audience = frozen or ledger.audience_count(session, slug=edition.newsletter)
    return DryRun(
        edition_id=edition.id if stored else None,
        newsletter=edition.newsletter,
        issue_date=edition.issue_date,
        status=edition.status,
        subject=content.subject,
        html_bytes=len(content.html.encode()),
        text_bytes=len(content.text.encode()),
        audience=audience,
        frozen=bool(frozen),
        problems=tuple(render.check_rendered(content)),
    )


def dry_run(session: Session, *, settings: Settings, edition_id: int) -> DryRun:
    """A dry run of a stored edition."""
    edition = editions.get_edition(session, edition_id)
    return _dry_run(session, settings, edition, stored=True)


def dry_run_unbuilt(
    session: Session, *, settings: Settings, slug: str, issue_date: date | None
) -> DryRun:
    """A dry run of the edition a send would build: built, reported, then rolled back.

    The caller's transaction is rolled back afterwards, so nothing is stored.
    """
    try:
        edition, created = editions.build_edition(
            session, settings=settings, slug=slug, issue_date=issue_date
        )
        return _dry_run(session, settings, edition, stored=not created)
    finally:
        session.rollback()
