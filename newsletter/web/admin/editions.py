"""The console's Editions pages: the list, build, special editions, one edition's page
(its HTML at 600 and 375 px, its text part, the pre-send checks, live progress) and
its actions: test send, send now (after a confirmation that states the audience),
send at a time, hold and release, pause, resume and cancel.

"Send now" and "resume" run the send in a thread of this web process, not as a
scheduled send, because ``newsletter serve`` alone has no scheduler to start one:
:mod:`newsletter.web.background` says why that is the honest choice and what the
ledger guarantees. "Send at" is a scheduled send (as ``send --at``), and the page
says whether a scheduler is running to start it.

Every route names one permission. Every form carries the CSRF token, checked once
the edition is known (an unknown edition is a 404 for anyone who may ask). A
refused action shows the service's sentence on the edition's page.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from anyio import to_thread
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from sqlalchemy.orm import Session
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from newsletter.content import editions, special
from newsletter.db import transaction
from newsletter.delivery import preview, sender
from newsletter.errors import (
    CheckFailed,
    InputError,
    NewsletterError,
    NotFoundError,
    ProviderError,
    RenderError,
)
from newsletter.models import Edition, EditionStatus, ScheduledSendStatus, utcnow
from newsletter.schedule import oneoff, records
from newsletter.staff import overview
from newsletter.staff.access import Permission, allows
from newsletter.web.admin.auth import console, current_staff, require
from newsletter.web.background import (
    STOP_WAIT_SECONDS,
    background,
    scheduler_running,
    send_in_background,
    send_test_copy,
)
from newsletter.web.pages import sentence
from newsletter.web.security import CSP, no_store
from newsletter.web.state import WebState, web_state

PAGE_SIZE = 25
MAX_ID = 2**31 - 1  # the largest id an INTEGER column holds on SQLite and PostgreSQL
#: The edition page embeds its previews: the global policy plus frames from here.
FRAMING_CSP = CSP + "; frame-src 'self'"
#: The preview itself: the email's own inline styles, no script, no plugin, framed
#: only by the console, and sandboxed even when opened on its own.
PREVIEW_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; "
        "frame-ancestors 'self'; sandbox"
    ),
    "x-frame-options": "SAMEORIGIN",
    "cache-control": "no-store",
}
#: What a redirect's ``done`` says on the next page (never text from the request).
NOTICES = {
    "built": "Edition built.",
    "existing": "This edition was already built: here it is.",
    "special": "Special edition created. Check it, then send it.",
    "test": "Test copy sent to your address.",
    "sending": "Sending started. The counts below follow it.",
    "scheduled": "Send scheduled.",
    "held": "Edition held: no scheduled send starts until it is released.",
    "released": "Edition released.",
    "paused": "Send paused: runners stop after the batch in flight.",
    "resumed": "Send resumed.",
    "cancelled": "Edition cancelled: nothing more is sent.",
}
_ID = re.compile(r"[0-9]{1,10}")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """At shutdown, stop this app's sends after their batches in flight (nested in the
    app's own lifespan, so before the providers and the engine close)."""
    try:
        yield
    finally:
        web = getattr(app.state, "web", None)
        if isinstance(web, WebState):
            await to_thread.run_sync(background(web).stop_all, STOP_WAIT_SECONDS)


router = APIRouter(lifespan=_lifespan)


# ----- helpers ----------------------------------------------------------------------


def _status(exc: NewsletterError) -> int:
    """The HTTP status of a refused action, by the kind of service error."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, ProviderError) or (
        isinstance(exc, RenderError) and not isinstance(exc, CheckFailed)
    ):
        return 503
    return 409  # a state, a failed check, no stories: not now, not like this


def _edition_id(text: str) -> int:
    """A path's edition id; NotFoundError for anything that cannot be one."""
    if _ID.fullmatch(text) and 0 < int(text) <= MAX_ID:
        return int(text)
    raise NotFoundError(f"no edition with id {text[:20]}", code="edition.not_found")


def _known(web: WebState, text: str) -> int:
    """The id of an edition that exists; NotFoundError otherwise."""
    edition_id = _edition_id(text)
    with web.sessions() as session:
        editions.edition_status(session, edition_id)
    return edition_id


def _missing(request: Request, exc: NewsletterError) -> Response:
    return console(
        request,
        "edition_message.html",
        status=404,
        heading="No such edition",
        text=sentence(str(exc)) + ".",
    )


def _expired(request: Request) -> Response:
    return console(
        request,
        "edition_message.html",
        status=403,
        heading="This form has expired",
        text="Go back, reload the page and send it again.",
    )


def _parse_date(text: str) -> date | None:
    text = text.strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InputError(
            f"{text[:40]!r} is not a date (use YYYY-MM-DD)", code="input.date"
        ) from None


def _newsletters(web: WebState) -> list[dict[str, str]]:
    return [
        {"slug": slug, "name": nl.name, "timezone": nl.timezone}
        for slug, nl in web.settings.newsletters.items()
    ]


def _redirect(edition_id: int, done: str) -> Response:
    return RedirectResponse(f"/admin/editions/{edition_id}?done={done}", status_code=303)


# ----- the list and building ---------------------------------------------------------


@dataclass(frozen=True)
class _Listed:
    kind: str
    figures: overview.EditionFigures


def _list_page(
    request: Request,
    *,
    newsletter: str = "",
    after: str = "",
    error: str = "",
    status: int = 200,
    form: dict[str, str] | None = None,
) -> Response:
    web = web_state(request)
    rows: list[_Listed] = []
    next_url = ""
    with web.sessions() as session:
        try:
            if newsletter:
                web.settings.newsletter(newsletter)
            page = editions.list_editions(
                session, slug=newsletter or None, limit=PAGE_SIZE, cursor=after or None
            )
            for row in page.items:
                edition = editions.get_edition(session, row.id)
                rows.append(_Listed(row.kind.value, overview.figures(session, edition)))
            if page.cursor:
                query = {"newsletter": newsletter, "after": page.cursor}
                next_url = "/admin/editions?" + urlencode({k: v for k, v in query.items() if v})
        except NewsletterError as exc:
            error, status = error or sentence(str(exc)), 400 if status == 200 else status
    return console(
        request,
        "edition_list.html",
        status=status,
        rows=rows,
        next_url=next_url,
        newsletter=newsletter,
        newsletters=_newsletters(web),
        error=error,
        form=form or {},
    )


@router.get("/admin/editions", dependencies=[Depends(require(Permission.EDITIONS))])
def list_page(request: Request, newsletter: str = "", after: str = "") -> Response:
    """Editions newest first, a page at a time, with their status and figures."""
    return _list_page(request, newsletter=newsletter.strip(), after=after.strip())


@router.post("/admin/editions/build", dependencies=[Depends(require(Permission.EDITIONS))])
def build(
    request: Request,
    newsletter: Annotated[str, Form(max_length=100)],
    issue_date: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Build (or find) a newsletter's edition of a day, then show it."""
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return _expired(request)
    try:
        day = _parse_date(issue_date)
        with transaction(web.sessions) as session:
            edition, created = editions.build_edition(
                session, settings=web.settings, slug=newsletter, issue_date=day
            )
            edition_id = edition.id
    except NewsletterError as exc:
        form = {"newsletter": newsletter, "issue_date": issue_date}
        return _list_page(request, error=sentence(str(exc)), status=_status(exc), form=form)
    return _redirect(edition_id, "built" if created else "existing")


# ----- special editions ------------------------------------------------------------------


def _special_page(
    request: Request, *, error: str = "", status: int = 200, form: dict[str, str] | None = None
) -> Response:
    web = web_state(request)
    return console(
        request,
        "edition_special.html",
        status=status,
        newsletters=_newsletters(web),
        error=error,
        form=form or {},
        max_kb=special.MAX_SOURCE_BYTES // 1024,
    )


@router.get("/admin/editions/special", dependencies=[Depends(require(Permission.EDITIONS))])
def special_form(request: Request) -> Response:
    """The form for a special edition from a Markdown or MJML file."""
    return _special_page(request)


@router.post("/admin/editions/special", dependencies=[Depends(require(Permission.EDITIONS))])
def create_special(
    request: Request,
    newsletter: Annotated[str, Form(max_length=100)],
    subject: Annotated[str, Form(max_length=300)],
    source: Annotated[UploadFile, File()],
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Create a special edition from the uploaded file (as ``edition from-file``)."""
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return _expired(request)
    form = {"newsletter": newsletter, "subject": subject}
    name = _UNSAFE_NAME.sub("_", Path(source.filename or "").name)[-100:].lstrip(".")
    data = source.file.read(special.MAX_SOURCE_BYTES + 1)
    with tempfile.TemporaryDirectory(prefix="newsletter-special-") as folder:
        path = Path(folder) / (name or "upload")
        path.write_bytes(data)
        try:
            with transaction(web.sessions) as session:
                edition = special.create_special_edition(
                    session, settings=web.settings, slug=newsletter, path=path, subject=subject
                )
                edition_id = edition.id
        except NewsletterError as exc:
            # The file's name, not where this server kept it for a moment.
            text = str(exc).replace(folder + os.sep, "")
            return _special_page(request, error=sentence(text), status=_status(exc), form=form)
    return _redirect(edition_id, "special")


# ----- one edition ------------------------------------------------------------------------


def _progress(web: WebState, session: Session, edition: Edition) -> dict[str, Any]:
    f = overview.figures(session, edition)
    running = background(web).running(edition.id)
    return {
        "edition_id": f.id,
        "status": f.status.value,
        "status_reason": f.status_reason,
        "audience": f.audience,
        "handled": f.audience - f.waiting,
        "waiting": f.waiting,
        "sent": f.sent,
        "failed": f.failed,
        "uncertain": f.uncertain,
        "running_here": running,
        "live": f.status is EditionStatus.SENDING or running,
        "error": sentence(background(web).error(edition.id)),
    }


def _scheduled(web: WebState, session: Session, edition: Edition) -> list[dict[str, str]]:
    waiting = [ScheduledSendStatus.PENDING, ScheduledSendStatus.PAUSED, ScheduledSendStatus.STARTED]
    zone = ZoneInfo(web.settings.newsletter(edition.newsletter).timezone)
    return [
        {
            "id": str(s.id),
            "status": s.status.value,
            "at": f"{s.send_at.astimezone(zone):%Y-%m-%d %H:%M %Z}",
            "utc": f"{s.send_at:%Y-%m-%d %H:%M} UTC",
            "deadline": f"{s.deadline.astimezone(zone):%Y-%m-%d %H:%M %Z}" if s.deadline else "",
        }
        for s in records.list_sends(session, statuses=waiting, limit=500)
        if s.edition_id == edition.id
    ]


def _edition_page(
    request: Request, edition_id: int, *, notice: str = "", error: str = "", status: int = 200
) -> Response:
    web = web_state(request)
    staff = current_staff(request)
    can_edit = allows(staff.role, Permission.EDITIONS)
    check: preview.DryRun | None = None
    check_error = text = ""
    with web.sessions() as session:
        try:
            edition = editions.get_edition(session, edition_id)
        except NotFoundError as exc:
            return _missing(request, exc)
        progress = _progress(web, session, edition)
        if can_edit:
            try:
                check = preview.dry_run(session, settings=web.settings, edition_id=edition_id)
                text = preview.preview(
                    session, settings=web.settings, edition_id=edition_id, part="text"
                )
            except RenderError as exc:
                check_error = sentence(str(exc))
        scheduled = _scheduled(web, session, edition)
        scheduler = scheduler_running(session)
        newsletter = web.settings.newsletter(edition.newsletter)
        response = console(
            request,
            "edition.html",
            status=status,
            edition=edition,
            newsletter={"slug": edition.newsletter, "name": newsletter.name},
            timezone=newsletter.timezone,
            progress=progress,
            check=check,
            check_error=check_error,
            text=text,
            scheduled=scheduled,
            scheduler_running=scheduler,
            notice=notice,
            error=error,
        )
    response.headers["content-security-policy"] = FRAMING_CSP
    return response


@router.get("/admin/editions/{edition_id}", dependencies=[Depends(require(Permission.DASHBOARD))])
def edition_page(request: Request, edition_id: str, done: str = "") -> Response:
    """One edition: status and live progress for every role; the previews and the
    checks for editors; each action for the roles that may take it."""
    try:
        eid = _edition_id(edition_id)
    except NotFoundError as exc:
        return _missing(request, exc)
    return _edition_page(request, eid, notice=NOTICES.get(done, ""))


@router.get(
    "/admin/editions/{edition_id}/preview", dependencies=[Depends(require(Permission.EDITIONS))]
)
def preview_part(
    request: Request, edition_id: str, part: Literal["html", "text"] = "html"
) -> Response:
    """The edition as a reader sees it (sample recipient), to be framed by the console:
    its own policy allows the email's inline styles and nothing that runs."""
    web = web_state(request)
    try:
        eid = _edition_id(edition_id)
        with web.sessions() as session:
            body = preview.preview(session, settings=web.settings, edition_id=eid, part=part)
    except NotFoundError as exc:
        return _missing(request, exc)
    kind = "text/html; charset=utf-8" if part == "html" else "text/plain; charset=utf-8"
    return PlainTextResponse(body, media_type=kind, headers=PREVIEW_HEADERS)


@router.get(
    "/admin/editions/{edition_id}/progress.json",
    dependencies=[Depends(require(Permission.DASHBOARD))],
)
def progress(request: Request, edition_id: str) -> Response:
    """The send's counts from the ledger (whoever runs it), for the page's poller."""
    web = web_state(request)
    try:
        eid = _edition_id(edition_id)
        with web.sessions() as session:
            counts = _progress(web, session, editions.get_edition(session, eid))
    except NotFoundError as exc:
        return no_store(JSONResponse({"error": str(exc), "code": exc.code}, status_code=404))
    return no_store(JSONResponse(counts))


# ----- actions ------------------------------------------------------------------------------


def _act(
    request: Request, edition_id: str, csrf: str, done: str, action: Callable[[int], object]
) -> Response:
    """Run one action on a known edition after the CSRF check; its refusal is shown on
    the edition's page, its success is a redirect there."""
    web = web_state(request)
    try:
        eid = _known(web, edition_id)
    except NotFoundError as exc:
        return _missing(request, exc)
    if not web.csrf.valid(request, csrf):
        return _expired(request)
    try:
        action(eid)
    except NewsletterError as exc:
        return _edition_page(request, eid, error=sentence(str(exc)), status=_status(exc))
    return _redirect(eid, done)


def _write(web: WebState, change: Callable[[Session], object]) -> None:
    with transaction(web.sessions) as session:
        change(session)


@router.post(
    "/admin/editions/{edition_id}/test", dependencies=[Depends(require(Permission.EDITIONS))]
)
def test_send(request: Request, edition_id: str, csrf: Annotated[str, Form()] = "") -> Response:
    """One [TEST] copy to the signed-in member of staff's own address."""
    email = current_staff(request).email
    web = web_state(request)
    return _act(
        request, edition_id, csrf, "test", lambda eid: send_test_copy(web, eid, email=email)
    )


@router.get("/admin/editions/{edition_id}/send", dependencies=[Depends(require(Permission.SEND))])
def confirm_send(request: Request, edition_id: str) -> Response:
    """The confirmation step: who would receive it, and whether it may go."""
    web = web_state(request)
    try:
        eid = _edition_id(edition_id)
        with web.sessions() as session:
            dry = preview.dry_run(session, settings=web.settings, edition_id=eid)
            figures = overview.figures(session, editions.get_edition(session, eid))
    except NotFoundError as exc:
        return _missing(request, exc)
    except RenderError as exc:
        return _edition_page(request, _edition_id(edition_id), error=sentence(str(exc)), status=503)
    return console(
        request,
        "edition_confirm.html",
        action="send",
        dry=dry,
        figures=figures,
        name=web.settings.newsletter(figures.newsletter).name,
        running_here=background(web).running(eid),
    )


@router.post("/admin/editions/{edition_id}/send", dependencies=[Depends(require(Permission.SEND))])
def send_now(request: Request, edition_id: str, csrf: Annotated[str, Form()] = "") -> Response:
    """Start (or continue) the send in this server; the page follows its progress."""
    web = web_state(request)
    return _act(request, edition_id, csrf, "sending", lambda eid: send_in_background(web, eid))


@router.post(
    "/admin/editions/{edition_id}/schedule", dependencies=[Depends(require(Permission.SEND))]
)
def schedule(
    request: Request,
    edition_id: str,
    at: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """A one-off send at a time (HH:MM or an ISO date-time), as ``send --at``."""
    web = web_state(request)

    def one_off(eid: int) -> None:
        with transaction(web.sessions) as session:
            oneoff.schedule_one_off(
                session,
                settings=web.settings,
                at=at,
                slug=None,
                edition_id=eid,
                issue_date=None,
                now=utcnow(),
            )

    return _act(request, edition_id, csrf, "scheduled", one_off)


@router.post(
    "/admin/editions/{edition_id}/hold", dependencies=[Depends(require(Permission.EDITIONS))]
)
def hold(
    request: Request,
    edition_id: str,
    reason: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Hold a built edition for review: no scheduled send starts until it is released."""
    web = web_state(request)
    why = " ".join(reason.split()) or f"held by {current_staff(request).email}"
    return _act(
        request,
        edition_id,
        csrf,
        "held",
        lambda eid: _write(web, lambda s: editions.hold_edition(s, edition_id=eid, reason=why)),
    )


@router.post(
    "/admin/editions/{edition_id}/release", dependencies=[Depends(require(Permission.EDITIONS))]
)
def release(request: Request, edition_id: str, csrf: Annotated[str, Form()] = "") -> Response:
    """Release a held edition."""
    web = web_state(request)
    return _act(
        request,
        edition_id,
        csrf,
        "released",
        lambda eid: _write(web, lambda s: editions.release_edition(s, edition_id=eid)),
    )


@router.post(
    "/admin/editions/{edition_id}/pause", dependencies=[Depends(require(Permission.SEND_CONTROL))]
)
def pause(request: Request, edition_id: str, csrf: Annotated[str, Form()] = "") -> Response:
    """Pause a running send (every runner stops after its batch in flight)."""
    web = web_state(request)
    return _act(
        request,
        edition_id,
        csrf,
        "paused",
        lambda eid: _write(web, lambda s: sender.pause(s, edition_id=eid)),
    )


@router.post(
    "/admin/editions/{edition_id}/resume",
    dependencies=[Depends(require(Permission.SEND_CONTROL))],
)
def resume(request: Request, edition_id: str, csrf: Annotated[str, Form()] = "") -> Response:
    """Resume a paused send and run it in this server."""
    web = web_state(request)
    return _act(
        request, edition_id, csrf, "resumed", lambda eid: send_in_background(web, eid, resume=True)
    )


@router.get(
    "/admin/editions/{edition_id}/cancel",
    dependencies=[Depends(require(Permission.SEND_CONTROL))],
)
def confirm_cancel(request: Request, edition_id: str) -> Response:
    """The confirmation step of a cancel: what it stops, and that it cannot be undone."""
    web = web_state(request)
    try:
        eid = _edition_id(edition_id)
        with web.sessions() as session:
            figures = overview.figures(session, editions.get_edition(session, eid))
    except NotFoundError as exc:
        return _missing(request, exc)
    name = web.settings.newsletter(figures.newsletter).name
    return console(
        request, "edition_confirm.html", action="cancel", dry=None, figures=figures, name=name
    )


@router.post(
    "/admin/editions/{edition_id}/cancel",
    dependencies=[Depends(require(Permission.SEND_CONTROL))],
)
def cancel(request: Request, edition_id: str, csrf: Annotated[str, Form()] = "") -> Response:
    """Cancel the edition: nothing more is sent, the unsent deliveries are cancelled."""
    web = web_state(request)
    return _act(
        request,
        edition_id,
        csrf,
        "cancelled",
        lambda eid: _write(web, lambda s: sender.cancel(s, edition_id=eid)),
    )
