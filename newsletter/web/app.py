"""The web app: the readers' pages today (the staff console and the API come next).

:func:`create_app` builds one ASGI app from one Settings: FastAPI (on Starlette),
pages rendered on the server with Jinja2, working without JavaScript. Nothing a
request needs lives only in this process (rate limits are in the database), so
any number of web nodes can serve one site.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from newsletter import db
from newsletter.audience import imports
from newsletter.config import Settings
from newsletter.content import special
from newsletter.delivery.providers import Provider, open_providers
from newsletter.errors import NewsletterError
from newsletter.web import public, webhooks
from newsletter.web.admin import auth as admin_auth
from newsletter.web.admin import charts as admin_charts
from newsletter.web.admin import editions as admin_editions
from newsletter.web.admin import pages as admin_pages
from newsletter.web.admin import stories as admin_stories
from newsletter.web.admin import subscribers as admin_subscribers
from newsletter.web.api.routes import api_app
from newsletter.web.pages import error_page, message
from newsletter.web.ratelimit import Limits
from newsletter.web.security import CSRF, BodyLimit, SecurityHeaders
from newsletter.web.state import WebState

_FORM_MARGIN = 64 * 1024
"""Room for a multipart form's other fields and boundaries beside its uploaded file."""

STATIC = Path(__file__).parent / "static"

Providers = Callable[[Settings], AbstractContextManager[tuple[Provider, Provider | None]]]


def create_app(settings: Settings, *, providers: Providers = open_providers) -> FastAPI:
    """The ASGI app for ``settings``; the database must be initialised."""
    threads = settings.web.threads
    engine = db.open_engine(settings, pool_size=threads)
    db.check_schema(engine)
    sessions = db.session_factory(engine)
    web = WebState(
        settings=settings,
        sessions=sessions,
        csrf=CSRF(settings.signing_key, secure=settings.site.base_url.startswith("https://")),
        limits=Limits(
            sessions,
            signups_per_hour=settings.web.subscribe_per_ip_per_hour,
            login_failures_per_hour=settings.web.login_failures_per_hour,
        ),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        to_thread.current_default_thread_limiter().total_tokens = threads
        with providers(settings) as (provider, _secondary):
            web.provider = provider
            try:
                yield
            finally:
                web.provider = None
                engine.dispose()

    app = FastAPI(
        title=settings.service.name,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.web = web
    app.include_router(public.router)
    app.include_router(webhooks.router)
    app.include_router(admin_auth.router)
    app.include_router(admin_pages.router)
    app.include_router(admin_stories.router)
    app.include_router(admin_subscribers.router)
    app.include_router(admin_charts.router)
    app.include_router(admin_editions.router)
    api = api_app(settings.service.name)
    api.state.web = web
    app.mount("/api/v1", api)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(admin_auth.LoginRequired, admin_auth.login_required)
    app.add_exception_handler(admin_auth.Forbidden, admin_auth.forbidden)
    app.add_exception_handler(NewsletterError, _service_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(Exception, _crash)
    app.add_middleware(
        BodyLimit,
        limit=settings.web.max_body_bytes,
        larger={
            "/webhooks/": webhooks.MAX_WEBHOOK_BYTES,
            "/admin/subscribers/import": imports.MAX_CSV_BYTES + _FORM_MARGIN,
            "/admin/editions/special": special.MAX_SOURCE_BYTES + _FORM_MARGIN,
        },
    )
    app.add_middleware(SecurityHeaders)
    return app


async def _service_error(request: Request, exc: Any) -> Response:
    return error_page(request, exc)


async def _http_error(request: Request, exc: Any) -> Response:
    status = int(getattr(exc, "status_code", 500))
    if request.url.path.startswith("/api/"):  # one the API's mount did not take (odd bytes)
        return JSONResponse(
            {"error": "there is no endpoint at this address", "code": "api.not_found"},
            status_code=404 if status == 404 else status,
        )
    if status == 404:
        return message(request, "Not found", "There is no page at this address.", status=404)
    if status == 405:
        return message(request, "Not allowed", "This page does not take that request.", status=405)
    return message(request, "That did not work", "Please try again.", status=status)


async def _bad_request(request: Request, exc: Any) -> Response:
    return message(request, "That did not work", "The form was not complete.", status=400)


async def _crash(request: Request, exc: Any) -> Response:
    import logging

    logging.getLogger(__name__).exception("unexpected error serving a page")
    return message(request, "Something went wrong", "Please try again later.", status=500)
