"""The API's stories: list (filtered, paged by keyset), add an editor's pick, pin, hide.

Over :mod:`newsletter.content.stories`, as the console's Stories page and the
``newsletter stories`` commands. Errors are the API's problems, from its handlers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from newsletter.content import stories
from newsletter.content.stories import StoryFilter
from newsletter.db import transaction
from newsletter.models import Story, StoryOrigin
from newsletter.staff.access import Permission
from newsletter.web.api.auth import require
from newsletter.web.api.routes import AFTER, LIMIT, REFUSALS
from newsletter.web.state import web_state

router = APIRouter(tags=["stories"])
GUARD = [Depends(require(Permission.STORIES))]
STORY_ID = Annotated[int, Path(ge=1, le=2**31 - 1)]


class StoryOut(BaseModel):
    id: int
    newsletter: str
    title: str
    url: str
    summary: str
    kicker: str
    source: str
    origin: StoryOrigin
    published_at: datetime | None
    fetched_at: datetime
    pinned: bool
    hidden: bool


class StoryPage(BaseModel):
    items: list[StoryOut]
    next: str | None


class StoryIn(BaseModel):
    """An editor's pick (published now). Its URL must be new to the newsletter."""

    newsletter: str = Field(min_length=1, max_length=64)
    title: str = Field(min_length=1, max_length=2000)
    url: str = Field(min_length=1, max_length=2000, description="An absolute http(s) URL")
    summary: str = Field(default="", max_length=20_000, description="HTML; sanitised")
    kicker: str = Field(default="", max_length=500)
    pin: bool = False


class PinIn(BaseModel):
    pinned: bool = True


class HideIn(BaseModel):
    hidden: bool = True


class PinOut(StoryOut):
    sent_in: list[int] = Field(
        description="Editions that already sent it: editions never repeat a story, so a "
        "pin does not bring it back"
    )


def _out(story: Story) -> StoryOut:
    return StoryOut.model_validate(story, from_attributes=True)


@router.get("/stories", response_model=StoryPage, responses=REFUSALS, dependencies=GUARD)
def list_stories(
    request: Request,
    newsletter: Annotated[str | None, Query(max_length=64)] = None,
    only: Annotated[
        StoryFilter | None,
        Query(
            description="fresh (what the next edition picks from; needs newsletter), "
            "pinned, hidden or used (already in an edition)"
        ),
    ] = None,
    include_hidden: bool = False,
    limit: LIMIT = 100,
    after: AFTER = None,
) -> StoryPage:
    """Stories newest first; hidden ones only with ``include_hidden`` or ``only=hidden``."""
    web = web_state(request)
    if newsletter is not None:
        web.settings.newsletter(newsletter)  # an unknown slug is a 404, not no rows
    with web.sessions() as session:
        page = stories.list_stories(
            session,
            newsletter=newsletter,
            include_hidden=include_hidden,
            only=only,
            settings=web.settings,
            limit=limit,
            cursor=after,
        )
        items = [_out(s) for s in page.items]
    return StoryPage(items=items, next=page.cursor)


@router.post(
    "/stories", response_model=StoryOut, status_code=201, responses=REFUSALS, dependencies=GUARD
)
def add_story(request: Request, body: StoryIn) -> StoryOut:
    """Add an editor's pick; a URL the newsletter already has is refused (400)."""
    web = web_state(request)
    web.settings.newsletter(body.newsletter)
    with transaction(web.sessions) as session:
        story = stories.add_story(
            session,
            newsletter=body.newsletter,
            title=body.title,
            url=body.url,
            summary=body.summary,
            kicker=body.kicker,
            pin=body.pin,
        )
        session.flush()
        return _out(story)


@router.post(
    "/stories/{story_id}/pin", response_model=PinOut, responses=REFUSALS, dependencies=GUARD
)
def pin_story(request: Request, story_id: STORY_ID, body: PinIn | None = None) -> PinOut:
    """Pin a story so the next edition puts it first (``pinned: false`` unpins)."""
    with transaction(web_state(request).sessions) as session:
        done = stories.pin_story(session, story_id=story_id, pinned=body.pinned if body else True)
        return PinOut(**_out(done.story).model_dump(), sent_in=list(done.sent_in))


@router.post(
    "/stories/{story_id}/hide", response_model=StoryOut, responses=REFUSALS, dependencies=GUARD
)
def hide_story(request: Request, story_id: STORY_ID, body: HideIn | None = None) -> StoryOut:
    """Hide a story from every edition (``hidden: false`` shows it again)."""
    with transaction(web_state(request).sessions) as session:
        story = stories.hide_story(session, story_id=story_id, hidden=body.hidden if body else True)
        session.flush()
        return _out(story)
