"""The console's Subscribers pages: search, a person's page with their timeline, the
actions staff take for them, and CSV import and export.

Thin routes over :mod:`newsletter.audience` (subscribers, suppression, imports) and
:func:`newsletter.events.why.timeline`. Reading needs ``SUBSCRIBERS_READ``; changing
subscriptions and importing ``SUBSCRIBERS_WRITE``; the suppression list
``SUPPRESSION``. Addresses travel in the query string or the form, never in the path
(an address may hold a ``/``). Every action is a CSRF-checked POST that redirects
(303) to the person's page, which names what was done from a fixed set of notices.
An import answers with its report instead: the rows it refused are the result.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from starlette.background import BackgroundTask
from starlette.responses import RedirectResponse, Response, StreamingResponse

from newsletter.audience import imports, suppression
from newsletter.audience import subscribers as svc
from newsletter.audience.imports import safe_cell
from newsletter.db import transaction
from newsletter.errors import InputError, NewsletterError, NotFoundError
from newsletter.events.why import timeline
from newsletter.models import Subscriber, SubscriptionStatus, Suppression, SuppressionReason
from newsletter.staff.access import Permission
from newsletter.web.admin.auth import console, require
from newsletter.web.pages import form_expired, message, sentence, status_of
from newsletter.web.security import no_store
from newsletter.web.state import web_state

router = APIRouter()
READ = [Depends(require(Permission.SUBSCRIBERS_READ))]
WRITE = [Depends(require(Permission.SUBSCRIBERS_WRITE))]
SUPPRESS = [Depends(require(Permission.SUPPRESSION))]
PAGE_SIZE = 100
#: The most of an import's refused rows one page lists (the counts cover them all).
SHOWN_ERRORS = 1000
#: The largest CSV an upload may be (the import's own limit).
MAX_UPLOAD_BYTES = imports.MAX_CSV_BYTES
STATUSES = [s.value for s in SubscriptionStatus]
NEW_STATUSES = [SubscriptionStatus.PENDING.value, SubscriptionStatus.CONFIRMED.value]
#: Reasons staff may give by hand (forgetting is the reader's own right, elsewhere).
MANUAL_REASONS = [r.value for r in SuppressionReason if r is not SuppressionReason.FORGOTTEN]
VIA = "console"
#: What the person's page says after an action (a code in its URL, never free text).
NOTICES = {
    "unsubscribed": "Unsubscribed from {newsletter}.",
    "unsubscribed_all": "Unsubscribed from every newsletter; the address is now suppressed.",
    "nothing": "Nothing to change: already unsubscribed.",
    "suppressed": "The address is suppressed: nothing more will be sent to it.",
    "unsuppressed": "The suppression is lifted; the subscriptions are as they were.",
    "not_suppressed": "The address was not suppressed.",
}
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _person_url(email: str, done: str = "", newsletter: str = "") -> str:
    query = {"email": email, "done": done, "newsletter": newsletter}
    return "/admin/subscribers/person?" + urlencode({k: v for k, v in query.items() if v})


# ----- search -----------------------------------------------------------------------


@router.get("/admin/subscribers", dependencies=READ)
def search(
    request: Request, q: str = "", newsletter: str = "", status: str = "", after: str = ""
) -> Response:
    """Subscriptions by address prefix, newsletter and status, paged by keyset."""
    web = web_state(request)
    rows: list[svc.SubscriptionRow] = []
    next_url = error = ""
    code = 200
    try:
        if newsletter:
            web.settings.newsletter(newsletter)
        if status and status not in STATUSES:
            raise InputError(f"unknown status {status!r}", code="input.bad_filter")
        with web.sessions() as session:
            page = svc.list_subscribers(
                session,
                newsletter=newsletter or None,
                status=SubscriptionStatus(status) if status else None,
                prefix=q,
                limit=PAGE_SIZE,
                cursor=after or None,
            )
        rows = list(page.items)
        if page.cursor:
            query = {"q": q, "newsletter": newsletter, "status": status, "after": page.cursor}
            next_url = "/admin/subscribers?" + urlencode({k: v for k, v in query.items() if v})
    except NewsletterError as exc:
        error, code = sentence(str(exc)), status_of(exc)
    export = "/admin/subscribers/export" + (
        "?" + urlencode({"newsletter": newsletter}) if newsletter else ""
    )
    return console(
        request,
        "subscribers.html",
        status=code,
        rows=rows,
        next_url=next_url,
        error=error,
        filters={"q": q, "newsletter": newsletter, "status": status},
        newsletters=[(s, nl.name) for s, nl in web.settings.newsletters.items()],
        statuses=STATUSES,
        export_url=export,
    )


# ----- one person -------------------------------------------------------------------


def _person(
    request: Request,
    email: str,
    *,
    done: str = "",
    newsletter: str = "",
    error: str = "",
    status: int = 200,
) -> Response:
    """A person's page: who they are, their subscriptions, suppression and timeline."""
    web = web_state(request)
    address = email.strip()
    sub: Subscriber | None = None
    entry: Suppression | None = None
    history: tuple[Any, ...] = ()
    known = valid = False
    with web.sessions() as session:
        try:
            address = svc.normalise_email(email)
            valid = True
            history = timeline(session, email=address)
            entry = suppression.find_entry(session, address=address)
            try:
                sub = svc.get_subscriber(session, email=address)
            except NotFoundError:
                sub = None
            known = sub is not None or entry is not None or bool(history)
            if not known and not error:
                error, status = f"No subscriber {address}.", 404
        except NewsletterError as exc:
            error = error or sentence(str(exc))
            status = status if status != 200 else status_of(exc)
        subscriptions = list(sub.subscriptions) if sub is not None else []
    names = {s: nl.name for s, nl in web.settings.newsletters.items()}
    notice = NOTICES.get(done, "")
    if "{newsletter}" in notice:
        notice = notice.format(newsletter=names.get(newsletter, "the newsletter"))
    return console(
        request,
        "subscriber.html",
        status=status,
        email=address,
        known=known,
        valid=valid,
        subscriber=sub,
        subscriptions=subscriptions,
        names=names,
        entry=entry,
        timeline=history,
        notice=notice,
        error=error,
        reasons=MANUAL_REASONS,
    )


@router.get("/admin/subscribers/person", dependencies=READ)
def person(request: Request, email: str, done: str = "", newsletter: str = "") -> Response:
    """One address: the subscriber, their subscriptions, suppression and whole timeline."""
    return _person(request, email, done=done, newsletter=newsletter)


@router.post("/admin/subscribers/unsubscribe", dependencies=WRITE)
def unsubscribe(
    request: Request,
    email: str = Form(),
    newsletter: str = Form(""),
    everything: str = Form(""),
    csrf: str = Form(""),
) -> Response:
    """Unsubscribe from one newsletter, or (``everything=yes``) from all, which suppresses."""
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return form_expired(request)
    try:
        if everything != "yes" and not newsletter:
            raise InputError("choose a newsletter, or unsubscribe from everything")
        target = None if everything == "yes" else newsletter
        if target is not None:
            web.settings.newsletter(target)
        with transaction(web.sessions) as session:
            changed = svc.unsubscribe(session, email=email, newsletter=target, via=VIA)
            address = svc.normalise_email(email)
    except NewsletterError as exc:
        return _person(request, email, error=sentence(str(exc)), status=status_of(exc))
    done = "unsubscribed_all" if target is None else "unsubscribed" if changed else "nothing"
    return RedirectResponse(_person_url(address, done, target or ""), status_code=303)


@router.post("/admin/subscribers/suppress", dependencies=SUPPRESS)
def suppress(
    request: Request,
    email: str = Form(),
    reason: str = Form(),
    detail: str = Form(""),
    csrf: str = Form(""),
) -> Response:
    """Put the address on the suppression list (nothing more is sent to it)."""
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return form_expired(request)
    try:
        if reason not in MANUAL_REASONS:
            raise InputError(f"unknown reason {reason!r}", code="suppression.bad_reason")
        with transaction(web.sessions) as session:
            entry = suppression.suppress(
                session, email=email, reason=SuppressionReason(reason), detail=detail.strip()
            )
            address = entry.email or svc.normalise_email(email)
    except NewsletterError as exc:
        return _person(request, email, error=sentence(str(exc)), status=status_of(exc))
    return RedirectResponse(_person_url(address, "suppressed"), status_code=303)


@router.post("/admin/subscribers/unsuppress", dependencies=SUPPRESS)
def unsuppress(
    request: Request,
    email: str = Form(),
    reason: str = Form(""),
    csrf: str = Form(""),
) -> Response:
    """Take the address off the suppression list, with the reason kept on its timeline."""
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return form_expired(request)
    try:
        with transaction(web.sessions) as session:
            was = suppression.unsuppress(session, email=email, reason=reason)
            address = svc.normalise_email(email)
    except NewsletterError as exc:
        return _person(request, email, error=sentence(str(exc)), status=status_of(exc))
    done = "unsuppressed" if was is not None else "not_suppressed"
    return RedirectResponse(_person_url(address, done), status_code=303)


# ----- import and export ------------------------------------------------------------


def _size(count: int) -> str:
    """A byte count as people say it: 64 KB, 100 MB."""
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):g} MB"
    return f"{count / 1024:g} KB" if count >= 1024 else f"{count} bytes"


def _import_page(
    request: Request,
    *,
    report: imports.ImportReport | None = None,
    filename: str = "",
    error: str = "",
    chosen: tuple[str, ...] = (),
    status_default: str = SubscriptionStatus.PENDING.value,
    code: int = 200,
) -> Response:
    web = web_state(request)
    return console(
        request,
        "subscribers_import.html",
        status=code,
        report=report,
        errors=list(report.errors[:SHOWN_ERRORS]) if report else [],
        more_errors=max(0, len(report.errors) - SHOWN_ERRORS) if report else 0,
        filename=filename,
        error=error,
        newsletters=[(s, nl.name) for s, nl in web.settings.newsletters.items()],
        chosen=chosen,
        statuses=NEW_STATUSES,
        status_default=status_default,
        largest=_size(MAX_UPLOAD_BYTES),  # the app lets this path past web.max_body_bytes
    )


@router.get("/admin/subscribers/import", dependencies=WRITE)
def import_form(request: Request) -> Response:
    """The CSV upload form."""
    return _import_page(request)


def _upload_name(filename: str | None) -> str:
    """A harmless file name for the upload's copy (the report's messages name it)."""
    stem = _UNSAFE_NAME.sub("_", Path(filename or "").name).strip("._")[:100]
    return stem or "upload.csv"


def _save(upload: IO[bytes], target: Path, limit: int) -> None:
    """Copy the upload to ``target``, at most one byte past ``limit`` (enough for the
    import to refuse it by size without copying a huge file whole)."""
    with target.open("wb") as out:
        left = limit + 1
        while left > 0:
            block = upload.read(min(left, 64 * 1024))
            if not block:
                break
            out.write(block)
            left -= len(block)


@router.post("/admin/subscribers/import", dependencies=WRITE)
def import_upload(
    request: Request,
    file: Annotated[UploadFile, File()],
    newsletters: list[str] = Form(default_factory=list),  # noqa: B008 (FastAPI's way)
    status: str = Form(SubscriptionStatus.PENDING.value),
    csrf: str = Form(""),
) -> Response:
    """Import the uploaded CSV; the page reports the counts and every refused row."""
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return form_expired(request)
    name = _upload_name(file.filename)
    chosen = tuple(newsletters)
    try:
        if status not in NEW_STATUSES:
            raise InputError(f"status {status!r} is not pending or confirmed")
        with tempfile.TemporaryDirectory(prefix="newsletter-import-") as folder:
            path = Path(folder) / name
            _save(file.file, path, MAX_UPLOAD_BYTES)
            with transaction(web.sessions) as session:
                report = imports.import_csv(
                    session,
                    path=path,
                    settings=web.settings,
                    newsletters=chosen,
                    status=SubscriptionStatus(status),
                    source=VIA,
                    max_bytes=MAX_UPLOAD_BYTES,
                )
    except NewsletterError as exc:
        return _import_page(
            request,
            filename=name,
            error=sentence(str(exc)),
            chosen=chosen,
            status_default=status,
            code=status_of(exc),
        )
    return _import_page(request, report=report, filename=name, chosen=chosen, status_default=status)


def _chunks(fh: IO[bytes]) -> Iterator[bytes]:
    while block := fh.read(64 * 1024):
        yield block


@router.get("/admin/subscribers/export", dependencies=READ)
def export(request: Request, newsletter: str = "") -> Response:
    """Active subscribers as re-importable CSV, every cell formula-safe (as the CLI's
    ``subscribers export``). Written to a temporary file in one session, then sent."""
    web = web_state(request)
    if newsletter:
        try:
            web.settings.newsletter(newsletter)
        except NotFoundError as exc:
            return no_store(message(request, "Not found", sentence(str(exc)), status=404))
    spool = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)  # closed by the response
    text = io.TextIOWrapper(spool, encoding="utf-8", newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(svc.EXPORT_COLUMNS)
    with web.sessions() as session:
        for row in svc.export_rows(session, newsletter=newsletter or None):
            writer.writerow([safe_cell(row[c]) for c in svc.EXPORT_COLUMNS])
    text.flush()
    text.detach()
    spool.seek(0)
    filename = f"subscribers-{newsletter}.csv" if newsletter else "subscribers.csv"
    response = StreamingResponse(
        _chunks(spool),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
        background=BackgroundTask(spool.close),
    )
    return no_store(response)
