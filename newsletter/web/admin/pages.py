"""The console's pages: thin routes over the services, each behind one permission."""

from __future__ import annotations

from datetime import date
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from newsletter.audience.addresses import normalise_email
from newsletter.config import PROVIDER_NAMES
from newsletter.content.editions import get_edition
from newsletter.delivery import log
from newsletter.errors import InputError, NewsletterError
from newsletter.events.why import why as explain
from newsletter.models import DeliveryStatus, utcnow
from newsletter.staff import overview
from newsletter.staff.access import Permission
from newsletter.web.admin.auth import console, require
from newsletter.web.pages import sentence
from newsletter.web.state import web_state

router = APIRouter()
PAGE_SIZE = 100


def _day(text: str, which: str) -> date | None:
    """A filter's day (YYYY-MM-DD), None when empty; InputError naming the field."""
    if not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise InputError(
            f"the {which} date is a day like 2026-12-01", code="input.bad_filter"
        ) from None


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and len(text) < 10 else None


@router.get("/admin", dependencies=[Depends(require(Permission.DASHBOARD))])
def dashboard(request: Request) -> Response:
    web = web_state(request)
    with web.sessions() as session:
        engine = session.get_bind()
        figures = overview.overview(session, settings=web.settings, engine=engine)  # type: ignore[arg-type]
        days = overview.activity(session, days=30, now=utcnow())
    totals = {"sent": sum(d.sent for d in days), "bounced": sum(d.bounced for d in days)}
    latest = next((e for e in figures.recent if e.audience), None)  # its funnel is charted
    return console(request, "dashboard.html", overview=figures, activity=totals, latest=latest)


@router.get("/admin/deliveries", dependencies=[Depends(require(Permission.DELIVERIES))])
def deliveries(
    request: Request,
    edition: str = "",
    status: str = "",
    email: str = "",
    provider: str = "",
    since: str = "",
    until: str = "",
    after: str = "",
    why: str = "",
    why_edition: str = "",
) -> Response:
    """The delivery log, filtered and paged by keyset, with the "why" box."""
    web = web_state(request)
    error = why_error = ""
    filters = {
        "edition": edition,
        "status": status,
        "email": email,
        "provider": provider,
        "since": since,
        "until": until,
    }
    rows: list[log.DeliveryRow] = []
    next_url = ""
    answer = None
    with web.sessions() as session:
        try:
            edition_id = _int(edition) if edition else None
            if edition and edition_id is None:
                raise InputError("the edition is a number", code="input.bad_filter")
            if edition_id is not None:
                get_edition(session, edition_id)
            state = DeliveryStatus(status) if status else None
            if provider and provider not in PROVIDER_NAMES:
                raise InputError(f"there is no provider {provider[:32]!r}", code="input.bad_filter")
            page = log.list_deliveries(
                session,
                edition_id=edition_id,
                status=state,
                email=normalise_email(email) if email.strip() else None,
                provider=provider.strip() or None,
                since=_day(since, "from"),
                until=_day(until, "to"),
                limit=PAGE_SIZE,
                cursor=after or None,
            )
            rows = list(page.items)
            if page.cursor:
                query = {**filters, "after": page.cursor}
                next_url = "/admin/deliveries?" + urlencode({k: v for k, v in query.items() if v})
        except (NewsletterError, ValueError) as exc:
            error = sentence(str(exc))
        if why.strip():
            try:
                answer = explain(
                    session,
                    settings=web.settings,
                    email=why,
                    edition_id=_int(why_edition) if why_edition.strip() else None,
                )
            except NewsletterError as exc:
                why_error = sentence(str(exc))
    return console(
        request,
        "deliveries.html",
        rows=rows,
        next_url=next_url,
        error=error,
        filters=filters,
        providers=PROVIDER_NAMES,
        statuses=[s.value for s in DeliveryStatus],
        why_email=why,
        why_edition=why_edition,
        why_error=why_error,
        answer=answer,
    )
