"""The API's endpoints: the console's reads and actions as JSON, over the same services.

Listings page by keyset: a response's ``next`` is the ``after`` of the next page
(null on the last). Errors are ``{"error": "...", "code": "..."}`` with a 4xx.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from newsletter.audience.addresses import normalise_email
from newsletter.config import ProviderName
from newsletter.content import editions
from newsletter.delivery import log
from newsletter.errors import InputError, NewsletterError, NotFoundError, StateError
from newsletter.events.why import why as explain
from newsletter.models import DeliveryStatus, EditionKind, EditionStatus
from newsletter.staff import overview
from newsletter.staff.access import Permission
from newsletter.web.api.auth import ApiError, require
from newsletter.web.state import web_state

router = APIRouter()
ID = Annotated[int, Query(ge=1, le=2**31 - 1)]
LIMIT = Annotated[int, Query(ge=1, le=1000)]
AFTER = Annotated[str | None, Query(max_length=100, description="`next` of the previous page")]


class Problem(BaseModel):
    """What a refused request gets."""

    error: str
    code: str


#: Documented on every endpoint (a guarded one can always answer these).
REFUSALS: dict[int | str, dict[str, object]] = {
    400: {"model": Problem, "description": "Bad input"},
    401: {"model": Problem, "description": "No API token, or an unknown or revoked one"},
    403: {"model": Problem, "description": "The token's role may not do this"},
    404: {"model": Problem, "description": "No such thing"},
    409: {"model": Problem, "description": "Not in this state"},
    422: {"model": Problem, "description": "Malformed parameters"},
}


class DeliveryOut(BaseModel):
    id: int
    edition_id: int
    email: str
    status: DeliveryStatus
    attempts: int
    provider: str | None
    message_id: str | None
    sent_at: datetime | None
    error: str | None
    failure: str | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next: str | None


class Stats(BaseModel):
    counts: dict[str, int]
    total: int
    funnel: dict[str, int]


class TimelineEntry(BaseModel):
    when: datetime | None
    what: str


class WhyOut(BaseModel):
    line: str
    edition_id: int | None
    timeline: list[TimelineEntry]


class EditionOut(BaseModel):
    id: int
    newsletter: str
    issue_date: date
    kind: EditionKind
    status: EditionStatus
    subject: str
    stories: int


class EditionPage(BaseModel):
    items: list[EditionOut]
    next: str | None


class Figures(BaseModel):
    id: int
    newsletter: str
    issue_date: str
    subject: str
    status: EditionStatus
    status_reason: str | None
    audience: int
    waiting: int
    sent: int
    failed: int
    uncertain: int
    funnel: dict[str, int]


class JobOut(BaseModel):
    id: str
    what: str
    next_run: datetime | None
    status: str


class OverviewOut(BaseModel):
    jobs: list[JobOut]
    sending: list[Figures]
    recent: list[Figures]


def _figures(f: overview.EditionFigures) -> Figures:
    return Figures(**f.__dict__)


@router.get(
    "/overview",
    response_model=OverviewOut,
    responses=REFUSALS,
    dependencies=[Depends(require(Permission.DASHBOARD))],
)
def get_overview(request: Request) -> OverviewOut:
    """What runs next, what is sending, and the latest editions' figures."""
    web = web_state(request)
    with web.sessions() as session:
        engine = session.get_bind()
        o = overview.overview(session, settings=web.settings, engine=engine)  # type: ignore[arg-type]
    return OverviewOut(
        jobs=[
            JobOut(id=str(j.id), what=j.what, next_run=j.next_run, status=j.status) for j in o.jobs
        ],
        sending=[_figures(f) for f in o.sending],
        recent=[_figures(f) for f in o.recent],
    )


@router.get(
    "/deliveries",
    response_model=DeliveryPage,
    responses=REFUSALS,
    dependencies=[Depends(require(Permission.DELIVERIES))],
)
def list_deliveries(
    request: Request,
    edition: ID | None = None,
    status: DeliveryStatus | None = None,
    email: Annotated[str | None, Query(max_length=320)] = None,
    provider: ProviderName | None = None,
    since: Annotated[date | None, Query(description="first UTC day, included")] = None,
    until: Annotated[date | None, Query(description="last UTC day, included")] = None,
    limit: LIMIT = 100,
    after: AFTER = None,
) -> DeliveryPage:
    """The delivery log, newest first, filtered by edition, status, address, provider
    and the day sent (queued, for a row never sent)."""
    with web_state(request).sessions() as session:
        if edition is not None:
            editions.get_edition(session, edition)
        page = log.list_deliveries(
            session,
            edition_id=edition,
            status=status,
            email=normalise_email(email) if email else None,
            provider=provider,
            since=since,
            until=until,
            limit=limit,
            cursor=after,
        )
    items = [
        DeliveryOut(
            id=d.id,
            edition_id=d.edition_id,
            email=d.email,
            status=d.status,
            attempts=d.attempts,
            provider=d.provider,
            message_id=d.message_id,
            sent_at=d.sent_at,
            error=d.error,
            failure=d.failure.value if d.failure else None,
        )
        for d in page.items
    ]
    return DeliveryPage(items=items, next=page.cursor)


@router.get(
    "/deliveries/stats",
    response_model=Stats,
    responses=REFUSALS,
    dependencies=[Depends(require(Permission.DELIVERIES))],
)
def delivery_stats(request: Request, edition: ID | None = None) -> Stats:
    """Counts per status and the events' funnel, for one edition or all."""
    with web_state(request).sessions() as session:
        if edition is not None:
            editions.get_edition(session, edition)
        counts = log.stats(session, edition_id=edition)
        reached = log.funnel(session, edition_id=edition)
    return Stats(
        counts={s.value: n for s, n in counts.items()}, total=sum(counts.values()), funnel=reached
    )


@router.get(
    "/deliveries/why",
    response_model=WhyOut,
    responses=REFUSALS,
    dependencies=[Depends(require(Permission.DELIVERIES))],
)
def why(
    request: Request,
    email: Annotated[str, Query(min_length=1, max_length=320)],
    edition: ID | None = None,
    newsletter: Annotated[str | None, Query(max_length=100)] = None,
) -> WhyOut:
    """Why an address did or did not get an edition, and its timeline."""
    web = web_state(request)
    with web.sessions() as session:
        answer = explain(
            session, settings=web.settings, email=email, edition_id=edition, newsletter=newsletter
        )
    return WhyOut(
        line=answer.line,
        edition_id=answer.edition_id,
        timeline=[TimelineEntry(when=e.when, what=e.what) for e in answer.timeline],
    )


@router.get(
    "/editions",
    response_model=EditionPage,
    responses=REFUSALS,
    dependencies=[Depends(require(Permission.EDITIONS))],
)
def list_editions(
    request: Request,
    newsletter: Annotated[str | None, Query(max_length=100)] = None,
    limit: LIMIT = 50,
    after: AFTER = None,
) -> EditionPage:
    """Editions, newest issue first."""
    web = web_state(request)
    if newsletter is not None:
        web.settings.newsletter(newsletter)  # an unknown slug is a 404, not no rows
    with web.sessions() as session:
        page = editions.list_editions(session, slug=newsletter, limit=limit, cursor=after)
    return EditionPage(items=[EditionOut(**r.__dict__) for r in page.items], next=page.cursor)


@router.get(
    "/editions/{edition_id}",
    response_model=Figures,
    responses=REFUSALS,
    dependencies=[Depends(require(Permission.EDITIONS))],
)
def get_edition(request: Request, edition_id: Annotated[int, Path(ge=1, le=2**31 - 1)]) -> Figures:
    """One edition with its audience and figures."""
    with web_state(request).sessions() as session:
        return _figures(overview.figures(session, editions.get_edition(session, edition_id)))


def _problem(status: int, code: str, text: str, **headers: str) -> Response:
    return JSONResponse({"error": text, "code": code}, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    extra = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    return _problem(exc.status, exc.code, str(exc), **extra)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NewsletterError)
    if isinstance(exc, NotFoundError):
        return _problem(404, exc.code, str(exc))
    if isinstance(exc, StateError):
        return _problem(409, exc.code, str(exc))
    if isinstance(exc, InputError):
        return _problem(400, exc.code, str(exc))
    return _problem(503, exc.code, "the service cannot do this now; try again later")


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _problem(404, "api.not_found", "there is no endpoint at this address")
    if exc.status_code == 405:
        return _problem(405, "api.method", "this endpoint does not take that method")
    return _problem(exc.status_code, "api.error", str(exc.detail))


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _problem(422, "input.invalid", f"{where}: {first.get('msg', 'invalid')}")


def api_app(title: str) -> FastAPI:
    """The API as its own ASGI app (mounted at /api/v1), with its OpenAPI document."""
    api = FastAPI(
        title=f"{title} API",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    api.include_router(router)
    from newsletter.web.api import stories, subscribers  # they import REFUSALS from here

    api.include_router(subscribers.router)
    api.include_router(stories.router)
    from newsletter.web.api import editions  # it imports REFUSALS and models from here

    api.include_router(editions.router)
    api.add_exception_handler(ApiError, _api_error)
    api.add_exception_handler(NewsletterError, _service_error)
    api.add_exception_handler(RequestValidationError, _invalid)
    api.add_exception_handler(HTTPException, _http)
    return api
