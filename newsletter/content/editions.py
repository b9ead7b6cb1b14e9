"""Editions: choose the day's top stories, freeze them, and render the result.

An edition is one issue of a newsletter for one date (UNIQUE(newsletter, date)).
Building freezes copies of the chosen stories, so later edits to a story never
change an edition that was previewed or sent. The rendered content is frozen too,
when sending starts (:func:`freeze_content`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from newsletter.config import NewsletterSettings, Settings
from newsletter.content import render, types
from newsletter.content.sanitise import clean_summary, summary_text
from newsletter.db import Page, cursor_int, cursor_parts
from newsletter.errors import InputError, NoStoriesError, NotFoundError, RenderError, StateError
from newsletter.models import (
    Edition,
    EditionKind,
    EditionStatus,
    EditionStory,
    Story,
    transition_edition,
    utcnow,
)

log = logging.getLogger(__name__)

# A story dated slightly in the future (a feed's clock skew) is still eligible.
CLOCK_SKEW = timedelta(hours=1)
# How many fresh candidates per edition slot are considered when mixing sources.
CANDIDATES_PER_SLOT = 10


def local_today(newsletter: NewsletterSettings, now: datetime | None = None) -> date:
    """Today's date in the newsletter's own timezone."""
    return (now or utcnow()).astimezone(ZoneInfo(newsletter.timezone)).date()


def select_stories(
    session: Session, *, slug: str, newsletter: NewsletterSettings, issue_date: date, now: datetime
) -> list[Story]:
    """The edition's stories: pinned first, then newest within the freshness window.

    Hidden stories never qualify, nor stories already frozen into another edition of
    the same newsletter (readers should not get yesterday's news again). Undated
    stories count from when they were first fetched. Sources take turns (see
    :func:`mix_sources`) so one busy feed cannot fill the whole edition.
    """
    when = func.coalesce(Story.published_at, Story.fetched_at)
    in_other_edition = exists().where(
        EditionStory.story_id == Story.id,
        EditionStory.edition_id == Edition.id,
        Edition.newsletter == slug,
        Edition.issue_date != issue_date,
    )
    query = (
        select(Story)
        .where(
            Story.newsletter == slug,
            Story.hidden.is_(False),
            when >= now - timedelta(hours=newsletter.freshness_hours),
            when <= now + CLOCK_SKEW,
            ~in_other_edition,
        )
        .order_by(Story.pinned.desc(), when.desc(), Story.id.desc())
        .limit(newsletter.max_stories * CANDIDATES_PER_SLOT)
    )
    return mix_sources(list(session.scalars(query)), newsletter.max_stories)


def mix_sources(ranked: Sequence[Story], limit: int) -> list[Story]:
    """Pinned stories first, then each source's next-newest story in turn.

    ``ranked`` is newest first; the result keeps that order within each source and
    starts with the newest story overall, which becomes the lead.
    """
    picked = [s for s in ranked if s.pinned][:limit]
    queues: dict[str, deque[Story]] = {}
    for story in ranked:
        if not story.pinned:
            queues.setdefault(story.source, deque()).append(story)
    while len(picked) < limit and queues:
        for source in list(queues):
            picked.append(queues[source].popleft())
            if not queues[source]:
                del queues[source]
            if len(picked) == limit:
                break
    return picked


def _inert(text: str) -> str:
    """Break up any per-recipient placeholder a feed smuggles into a story's text."""
    for placeholder in types.PLACEHOLDERS:
        text = text.replace(placeholder, placeholder.replace("%%", "%\u200b%"))
    return text


def _freeze_items(edition: Edition, stories: Sequence[Story]) -> None:
    edition.items = [
        EditionStory(
            story_id=s.id,
            position=i,
            title=_inert(s.title),
            url=s.url,
            summary=_inert(clean_summary(s.summary)),
            kicker=_inert(s.kicker),
            source=_inert(s.source),
            published_at=s.published_at,
        )
        for i, s in enumerate(stories, start=1)
    ]


def find_edition(session: Session, *, slug: str, issue_date: date) -> Edition | None:
    """The edition of ``slug`` for ``issue_date``, if built."""
    return session.scalar(
        select(Edition).where(
            Edition.newsletter == slug,
            Edition.issue_date == issue_date,
            Edition.kind == EditionKind.REGULAR,
        )
    )


def build_edition(
    session: Session,
    *,
    settings: Settings,
    slug: str,
    issue_date: date | None = None,
    rebuild: bool = False,
    now: datetime | None = None,
) -> tuple[Edition, bool]:
    """Build (or return) the edition of ``slug`` for ``issue_date`` (default: today there).

    Returns ``(edition, created)``. An existing edition is returned unchanged unless
    ``rebuild``, which re-selects its stories and is refused once sending started.
    Raises NotFoundError (unknown newsletter), NoStoriesError, StateError.
    """
    newsletter = settings.newsletter(slug)
    now = now or utcnow()
    issue_date = issue_date or local_today(newsletter, now)
    edition = find_edition(session, slug=slug, issue_date=issue_date)
    if edition is not None and not rebuild:
        return edition, False
    if edition is not None and edition.status not in (EditionStatus.BUILT, EditionStatus.HELD):
        raise StateError(
            f"edition {edition.id} is {edition.status.value}: it cannot be rebuilt once "
            "sending has started",
            code="edition.not_rebuildable",
            edition_id=edition.id,
        )
    stories = select_stories(
        session, slug=slug, newsletter=newsletter, issue_date=issue_date, now=now
    )
    if not stories:
        raise NoStoriesError(
            f"no eligible stories for {slug} on {issue_date} (none fresher than "
            f"{newsletter.freshness_hours} h)",
            slug=slug,
            issue_date=issue_date,
        )
    if edition is None:
        edition = Edition(newsletter=slug, issue_date=issue_date, status=EditionStatus.BUILT)
        _freeze_items(edition, stories)
        try:
            with session.begin_nested():
                session.add(edition)
        except IntegrityError:
            # Another builder won the race: theirs is the edition.
            existing = find_edition(session, slug=slug, issue_date=issue_date)
            if existing is None:  # pragma: no cover - constraint fired for another reason
                raise
            return existing, False
        edition.subject = draft_subject(edition, settings)
        log.info(
            "built edition %s of %s for %s with %d stories",
            edition.id,
            slug,
            issue_date,
            len(stories),
        )
        return edition, True
    edition.items.clear()
    session.flush()
    _freeze_items(edition, stories)
    session.flush()
    edition.subject, edition.html, edition.text = draft_subject(edition, settings), None, None
    session.flush()
    log.info("rebuilt edition %s of %s with %d stories", edition.id, slug, len(stories))
    return edition, True


def get_edition(session: Session, edition_id: int, *, for_update: bool = False) -> Edition:
    """Load an edition with its stories; NotFoundError if there is none."""
    query = select(Edition).where(Edition.id == edition_id).options(selectinload(Edition.items))
    if for_update:
        query = query.with_for_update()
    edition = session.scalar(query)
    if edition is None:
        raise NotFoundError(
            f"no edition with id {edition_id}", code="edition.not_found", edition_id=edition_id
        )
    return edition


def edition_status(session: Session, edition_id: int) -> EditionStatus:
    """Just the edition's status (cheap: checked before every batch)."""
    status = session.scalar(select(Edition.status).where(Edition.id == edition_id))
    if status is None:
        raise NotFoundError(
            f"no edition with id {edition_id}", code="edition.not_found", edition_id=edition_id
        )
    return status


@dataclass(frozen=True)
class EditionRow:
    """One edition in a listing."""

    id: int
    newsletter: str
    issue_date: date
    kind: EditionKind
    status: EditionStatus
    subject: str
    stories: int


#: Editions readers may see in the archive: their send has started (never a built,
#: held or cancelled one).
PUBLISHED = (EditionStatus.SENDING, EditionStatus.PAUSED, EditionStatus.SENT)


def list_editions(
    session: Session,
    *,
    slug: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    published: bool = False,
) -> Page[EditionRow]:
    """Editions, newest issue first, with their story counts; ``cursor`` continues.

    ``published`` keeps only those readers may see (see :data:`PUBLISHED`).
    """
    count = (
        select(func.count(EditionStory.id))
        .where(EditionStory.edition_id == Edition.id)
        .scalar_subquery()
    )
    query = (
        select(Edition, count)
        .order_by(Edition.issue_date.desc(), Edition.id.desc())
        .limit(limit + 1)
    )
    if slug:
        query = query.where(Edition.newsletter == slug)
    if published:
        query = query.where(Edition.status.in_(PUBLISHED), Edition.send_started_at.is_not(None))
    if cursor is not None:
        day_text, id_text = cursor_parts(cursor, 2)
        try:
            day = date.fromisoformat(day_text)
        except ValueError:
            raise InputError(f"invalid page cursor {cursor!r}", code="input.cursor") from None
        last = cursor_int(id_text)
        query = query.where(
            or_(Edition.issue_date < day, and_(Edition.issue_date == day, Edition.id < last))
        )
    found = [
        EditionRow(e.id, e.newsletter, e.issue_date, e.kind, e.status, e.subject, int(n))
        for e, n in session.execute(query)
    ]
    rows = found[:limit]
    more = len(found) > limit
    return Page(rows, f"{rows[-1].issue_date.isoformat()}|{rows[-1].id}" if more else None)


def edition_view(edition: Edition, settings: Settings) -> types.EditionView:
    """The pure data the renderer needs for ``edition``."""
    newsletter = settings.newsletter(edition.newsletter)
    return types.EditionView(
        id=edition.id,
        newsletter_slug=edition.newsletter,
        newsletter_name=newsletter.name,
        newsletter_description=newsletter.description,
        issue_date=edition.issue_date,
        stories=tuple(
            types.StoryView(
                title=item.title,
                url=item.url,
                summary_html=item.summary,
                summary_text=summary_text(item.summary),
                kicker=item.kicker,
                source=item.source,
                published_at=item.published_at,
            )
            for item in edition.items
        ),
    )


def draft_subject(edition: Edition, settings: Settings) -> str:
    """The subject a built edition will carry, shown (``edition list``) before sending
    starts and renders it for good; "" when the subject template fails (the pre-send
    checks report why), so a broken template never stops a build."""
    newsletter = settings.newsletter(edition.newsletter)
    try:
        return render.render_subject(
            edition_view(edition, settings),
            brand=types.Brand.from_settings(settings),
            subject_template=newsletter.subject,
            templates_dir=settings.templates_path,
        )
    except RenderError as exc:
        log.warning("edition %s: no subject yet: %s", edition.id, exc)
        return ""


def render_edition(edition: Edition, settings: Settings) -> types.RenderedEdition:
    """Render ``edition`` with the newsletter's templates (no side effects)."""
    newsletter = settings.newsletter(edition.newsletter)
    return render.render_edition(
        edition_view(edition, settings),
        brand=types.Brand.from_settings(settings),
        subject_template=newsletter.subject,
        template=newsletter.template,
        templates_dir=settings.templates_path,
    )


def frozen_content(edition: Edition) -> types.RenderedEdition | None:
    """The content frozen when sending started, if any."""
    if edition.html is None or edition.text is None:
        return None
    return types.RenderedEdition(subject=edition.subject, html=edition.html, text=edition.text)


def freeze_content(
    session: Session, *, edition: Edition, settings: Settings
) -> types.RenderedEdition:
    """Render once, run the pre-send checks, and store the content on the edition.

    Every recipient, and any resumed send, then gets exactly this content.
    Raises RenderError / CheckFailed; nothing is stored when the checks fail.
    """
    content = frozen_content(edition)
    if content is not None:
        return content
    if not edition.items:
        raise StateError(
            f"edition {edition.id} has no stories", code="edition.empty", edition_id=edition.id
        )
    content = render_edition(edition, settings)
    render.check_or_raise(content, edition_id=edition.id)
    edition.subject, edition.html, edition.text = content.subject, content.html, content.text
    session.flush()
    return content


def hold_edition(
    session: Session, *, edition_id: int, reason: str = "held by an editor"
) -> Edition:
    """Hold a built edition for review: no scheduled send starts until it is released.

    Holding a held edition is a no-op. Raises StateError once sending has started
    (pause a running send with `newsletter send --pause`), NotFoundError.
    """
    edition = get_edition(session, edition_id, for_update=True)
    if edition.status is EditionStatus.HELD:
        return edition
    if edition.status is not EditionStatus.BUILT:
        raise StateError(
            f"edition {edition_id} is {edition.status.value}: only a built edition can be held",
            code="edition.not_holdable",
            edition_id=edition_id,
            status=edition.status.value,
        )
    transition_edition(edition, EditionStatus.HELD)
    edition.status_reason = reason
    log.warning("edition %s of %s held: %s", edition.id, edition.newsletter, reason)
    return edition


def release_edition(session: Session, *, edition_id: int) -> Edition:
    """Release a held edition: its scheduled send goes out at the scheduler's next tick
    (unless past the newsletter's staleness deadline). Raises StateError, NotFoundError."""
    edition = get_edition(session, edition_id, for_update=True)
    if edition.status is not EditionStatus.HELD:
        raise StateError(
            f"edition {edition_id} is {edition.status.value}, not held",
            code="edition.not_held",
            edition_id=edition_id,
        )
    transition_edition(edition, EditionStatus.BUILT)
    edition.status_reason = None
    log.info("edition %s of %s released", edition.id, edition.newsletter)
    return edition
