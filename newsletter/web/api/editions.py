"""The API's edition actions: build, preview, check, send, schedule, hold and release,
pause, resume and cancel, over the same services as the console's Editions pages.

A send started here runs in a thread of the web process, like one started from the
console (:mod:`newsletter.web.background` says why); ``GET /editions/{id}`` follows
its figures. Errors are the API's problems from its handlers; a failed pre-send
check and a day without stories are 409 (not now, not like this), not a 503.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field

from newsletter.content import editions
from newsletter.db import transaction
from newsletter.delivery import preview, sender
from newsletter.errors import CheckFailed, NoStoriesError, StateError
from newsletter.models import ApiToken, EditionStatus, utcnow
from newsletter.schedule import oneoff
from newsletter.staff import overview
from newsletter.staff.access import Permission
from newsletter.web.api.auth import require
from newsletter.web.api.routes import REFUSALS, EditionOut, Figures
from newsletter.web.background import scheduler_running, send_in_background
from newsletter.web.state import WebState, web_state

router = APIRouter(tags=["editions"])
#: One guard object, so a route that also reads the token authenticates once.
EDITIONS = require(Permission.EDITIONS)
EDITION = Annotated[int, Path(ge=1, le=2**31 - 1)]


class BuildIn(BaseModel):
    """Build (or find) a newsletter's edition of a day."""

    newsletter: str = Field(min_length=1, max_length=100)
    issue_date: date | None = Field(None, description="default: today in the newsletter's zone")
    rebuild: bool = Field(False, description="re-select the stories (refused once sending)")


class BuiltOut(BaseModel):
    edition: EditionOut
    created: bool  # false: it already existed (and was returned unchanged)


class PreviewOut(BaseModel):
    edition_id: int
    part: Literal["html", "text"]
    subject: str
    content: str  # as a reader sees it, with sample values for the personal links


class CheckOut(BaseModel):
    """A dry run: what a send would do now."""

    edition_id: int
    newsletter: str
    issue_date: date
    status: EditionStatus
    subject: str
    html_bytes: int
    text_bytes: int
    audience: int
    frozen: bool  # the audience was frozen when the send started
    problems: list[str]
    passed: bool  # no problems
    sendable: bool  # passed, and the edition's state lets a send start


class ScheduleIn(BaseModel):
    at: str = Field(
        min_length=1,
        max_length=40,
        description="HH:MM (the next such time) or an ISO date-time; the newsletter's zone "
        "unless it has an offset",
    )


class ScheduledOut(BaseModel):
    job_id: str
    edition_id: int
    newsletter: str
    send_at: datetime  # UTC
    local_send_at: datetime  # in the newsletter's timezone
    timezone: str
    deadline: datetime  # not started by then, it is skipped
    tomorrow: bool  # HH:MM had already passed today
    scheduler_running: bool  # false: nothing starts it until `newsletter scheduler` runs


class StartedOut(BaseModel):
    """A send just started in the server: follow it with ``GET /editions/{id}``."""

    edition_id: int
    audience: int  # the recipients as counted when it started (frozen as its first step)
    continuing: bool  # it had started before: only those still waiting get it


class HoldIn(BaseModel):
    reason: str = Field("", max_length=200)


@contextmanager
def _conflicts() -> Iterator[None]:
    """A failed check or no stories is the edition's state (409), not the service's."""
    try:
        yield
    except (CheckFailed, NoStoriesError) as exc:
        raise StateError(str(exc), code=exc.code, **exc.fields) from None


def _figures(web: WebState, edition_id: int) -> Figures:
    with web.sessions() as session:
        f = overview.figures(session, editions.get_edition(session, edition_id))
    return Figures(**f.__dict__)


def _change(web: WebState, edition_id: int, change: str, reason: str = "") -> Figures:
    with transaction(web.sessions) as session:
        if change == "hold":
            editions.hold_edition(session, edition_id=edition_id, reason=reason)
        elif change == "release":
            editions.release_edition(session, edition_id=edition_id)
        elif change == "pause":
            sender.pause(session, edition_id=edition_id)
        else:
            sender.cancel(session, edition_id=edition_id)
    return _figures(web, edition_id)


@router.post(
    "/editions",
    status_code=201,
    response_model=BuiltOut,
    responses={**REFUSALS, 200: {"model": BuiltOut, "description": "Already built"}},
    dependencies=[Depends(EDITIONS)],
)
def build(request: Request, response: Response, body: BuildIn) -> BuiltOut:
    """Freeze the day's top stories into an edition (201), or return the one built (200)."""
    web = web_state(request)
    with _conflicts(), transaction(web.sessions) as session:
        edition, created = editions.build_edition(
            session,
            settings=web.settings,
            slug=body.newsletter,
            issue_date=body.issue_date,
            rebuild=body.rebuild,
        )
        out = EditionOut(
            id=edition.id,
            newsletter=edition.newsletter,
            issue_date=edition.issue_date,
            kind=edition.kind,
            status=edition.status,
            subject=edition.subject,
            stories=len(edition.items),
        )
    if not created:
        response.status_code = 200
    return BuiltOut(edition=out, created=created)


@router.get(
    "/editions/{edition_id}/preview",
    response_model=PreviewOut,
    responses=REFUSALS,
    dependencies=[Depends(EDITIONS)],
)
def get_preview(
    request: Request,
    edition_id: EDITION,
    part: Annotated[Literal["html", "text"], Query()] = "html",
) -> PreviewOut:
    """One part of the edition as a reader sees it (sample recipient values)."""
    web = web_state(request)
    with web.sessions() as session:
        content = preview.preview(session, settings=web.settings, edition_id=edition_id, part=part)
        subject = preview.content_of(editions.get_edition(session, edition_id), web.settings)
    return PreviewOut(edition_id=edition_id, part=part, subject=subject.subject, content=content)


@router.get(
    "/editions/{edition_id}/check",
    response_model=CheckOut,
    responses=REFUSALS,
    dependencies=[Depends(EDITIONS)],
)
def check(request: Request, edition_id: EDITION) -> CheckOut:
    """The pre-send checks and what a send would do now (nothing is sent)."""
    web = web_state(request)
    with web.sessions() as session:
        dry = preview.dry_run(session, settings=web.settings, edition_id=edition_id)
    return CheckOut(
        edition_id=edition_id,
        newsletter=dry.newsletter,
        issue_date=dry.issue_date,
        status=dry.status,
        subject=dry.subject,
        html_bytes=dry.html_bytes,
        text_bytes=dry.text_bytes,
        audience=dry.audience,
        frozen=dry.frozen,
        problems=list(dry.problems),
        passed=not dry.problems,
        sendable=dry.sendable,
    )


@router.post(
    "/editions/{edition_id}/send",
    status_code=202,
    response_model=StartedOut,
    responses=REFUSALS,
    dependencies=[Depends(require(Permission.SEND))],
)
def send(request: Request, edition_id: EDITION) -> StartedOut:
    """Start the send (or continue one); it runs on in the server (202).

    409 when held, paused, cancelled, failing its checks or already sending from
    this server."""
    with _conflicts():
        dry = send_in_background(web_state(request), edition_id)
    return StartedOut(edition_id=edition_id, audience=dry.audience, continuing=dry.frozen)


@router.post(
    "/editions/{edition_id}/schedule",
    status_code=201,
    response_model=ScheduledOut,
    responses=REFUSALS,
    dependencies=[Depends(require(Permission.SEND))],
)
def schedule(request: Request, edition_id: EDITION, body: ScheduleIn) -> ScheduledOut:
    """Schedule a one-off send at a time (``send --at``); the scheduler starts it."""
    web = web_state(request)
    with transaction(web.sessions) as session:
        one = oneoff.schedule_one_off(
            session,
            settings=web.settings,
            at=body.at,
            slug=None,
            edition_id=edition_id,
            issue_date=None,
            now=utcnow(),
        )
        running = scheduler_running(session)
    return ScheduledOut(
        job_id=str(one.job_id),
        edition_id=edition_id,
        newsletter=one.newsletter,
        send_at=one.send_at,
        local_send_at=one.local_send_at,
        timezone=one.timezone,
        deadline=one.deadline,
        tomorrow=one.tomorrow,
        scheduler_running=running,
    )


@router.post(
    "/editions/{edition_id}/hold",
    response_model=Figures,
    responses=REFUSALS,
    dependencies=[Depends(EDITIONS)],
)
def hold(
    request: Request,
    edition_id: EDITION,
    token: Annotated[ApiToken, Depends(EDITIONS)],
    body: Annotated[HoldIn | None, Body()] = None,
) -> Figures:
    """Hold a built edition for review: no scheduled send starts until it is released."""
    reason = " ".join((body.reason if body else "").split()) or f"held via the API ({token.name})"
    return _change(web_state(request), edition_id, "hold", reason)


@router.post(
    "/editions/{edition_id}/release",
    response_model=Figures,
    responses=REFUSALS,
    dependencies=[Depends(EDITIONS)],
)
def release(request: Request, edition_id: EDITION) -> Figures:
    """Release a held edition (its scheduled send goes at the scheduler's next tick)."""
    return _change(web_state(request), edition_id, "release")


@router.post(
    "/editions/{edition_id}/pause",
    response_model=Figures,
    responses=REFUSALS,
    dependencies=[Depends(require(Permission.SEND_CONTROL))],
)
def pause(request: Request, edition_id: EDITION) -> Figures:
    """Pause a running send: every runner stops after its batch in flight."""
    return _change(web_state(request), edition_id, "pause")


@router.post(
    "/editions/{edition_id}/resume",
    status_code=202,
    response_model=StartedOut,
    responses=REFUSALS,
    dependencies=[Depends(require(Permission.SEND_CONTROL))],
)
def resume(request: Request, edition_id: EDITION) -> StartedOut:
    """Resume a paused send; it runs on in the server (202)."""
    with _conflicts():
        dry = send_in_background(web_state(request), edition_id, resume=True)
    return StartedOut(edition_id=edition_id, audience=dry.audience, continuing=True)


@router.post(
    "/editions/{edition_id}/cancel",
    response_model=Figures,
    responses=REFUSALS,
    dependencies=[Depends(require(Permission.SEND_CONTROL))],
)
def cancel(request: Request, edition_id: EDITION) -> Figures:
    """Cancel the edition: nothing more is sent; its unsent deliveries are cancelled."""
    return _change(web_state(request), edition_id, "cancel")
