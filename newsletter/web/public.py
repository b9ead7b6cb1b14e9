"""The readers' routes: sign up, confirm, leave in one click, preferences, archive.

Thin: each parses the request, calls one service function in one transaction,
and renders a page. A GET never changes anything (mail scanners follow links);
every state-changing form checks its CSRF token, except the RFC 8058 one-click
unsubscribe POST.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse

from newsletter import urls
from newsletter.audience import preferences as prefs
from newsletter.audience import signup
from newsletter.audience.subscribers import unsubscribe_by_token
from newsletter.config import describe_cadence
from newsletter.content import archive
from newsletter.content.render import format_date_long
from newsletter.db import transaction
from newsletter.delivery import letters
from newsletter.delivery.types import OutcomeStatus
from newsletter.errors import InputError, NewsletterError
from newsletter.models import utcnow
from newsletter.tokens import read_token
from newsletter.web import captcha
from newsletter.web.pages import Link, environment, error_page, form_expired, message, page
from newsletter.web.security import client_address, no_store
from newsletter.web.state import WebState, web_state

log = logging.getLogger(__name__)
router = APIRouter()
ONE_CLICK = "One-Click"


def _newsletters(web: WebState) -> list[dict[str, str]]:
    return [
        {
            "slug": slug,
            "name": nl.name,
            "description": nl.description,
            "cadence": describe_cadence(nl),
        }
        for slug, nl in web.settings.newsletters.items()
    ]


# ----- sign up --------------------------------------------------------------------


def _signup_form(
    request: Request, *, status: int = 200, error: str = "", **values: object
) -> Response:
    web = web_state(request)
    return page(
        request,
        "signup.html",
        status=status,
        newsletters=_newsletters(web),
        zones=web.zones,
        captcha=web.settings.web.captcha == "altcha",
        error=error[:1].upper() + error[1:],  # the services speak in lower case
        email=values.get("email", ""),
        name=values.get("name", ""),
        timezone=values.get("timezone", ""),
        chosen=values.get("chosen", ()),
    )


@router.get("/")
@router.get("/subscribe")
def signup_page(request: Request) -> Response:
    return _signup_form(request)


@router.post("/subscribe")
def subscribe(
    request: Request,
    email: str = Form(""),
    name: str = Form(""),
    timezone: str = Form(""),
    newsletters: list[str] = Form(default_factory=list),  # noqa: B008 (FastAPI's way)
    website: str = Form(""),
    altcha: str = Form(""),
    csrf: str = Form(""),
) -> Response:
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return form_expired(request)
    client = client_address(request, trust_forwarded_for=web.settings.web.trust_forwarded_for)
    if not web.limits.signup(client):
        return message(
            request,
            "Too many sign-ups",
            "Too many sign-ups came from your network in the last hour. Please try again later.",
            status=429,
        )
    values = {"email": email, "name": name, "timezone": timezone, "chosen": tuple(newsletters)}
    if web.settings.web.captcha == "altcha" and not captcha.verify(web, altcha):
        return _signup_form(
            request, status=400, error="The check in your browser did not finish.", **values
        )
    if website:  # the honeypot: a person never fills it in; answer as if all went well
        return _check_your_inbox(request)
    try:
        with transaction(web.sessions) as session:
            result = signup.request_signup(
                session,
                settings=web.settings,
                email=email,
                newsletters=newsletters,
                name=name,
                timezone=timezone or None,
                now=utcnow(),
            )
    except InputError as exc:
        return _signup_form(request, status=400, error=str(exc), **values)
    if result.to and result.token:
        _send_confirmation(web, result)
    return _check_your_inbox(request)


def _send_confirmation(web: WebState, result: signup.SignupResult) -> None:
    assert result.to and result.token and web.provider is not None
    message_, recipient = letters.confirmation(
        web.settings, to=result.to, token=result.token, newsletters=result.newsletters
    )
    try:
        outcome = web.provider.send_single(message_, recipient)
    except NewsletterError as exc:
        log.error("confirmation email not sent: %s", exc)
        return
    if outcome.status is not OutcomeStatus.SENT:
        log.warning("confirmation email not sent: %s", outcome.error)


def _check_your_inbox(request: Request) -> Response:
    # The same page whoever the address belongs to: no one learns who is subscribed.
    return message(
        request,
        "Check your inbox",
        "If the address can receive our newsletters, we have sent it an email with a link "
        "to confirm. Nothing is sent until you confirm.",
        "No email? Look in your spam folder. We send at most one confirmation a day.",
    )


# ----- confirm --------------------------------------------------------------------


def _names(web: WebState, slugs: tuple[str, ...]) -> list[dict[str, str]]:
    chosen = set(slugs)
    return [n for n in _newsletters(web) if n["slug"] in chosen]


@router.get("/confirm/{token}")
def confirm_page(request: Request, token: str) -> Response:
    web = web_state(request)
    try:
        with web.sessions() as session:
            pending = signup.pending_signup(session, settings=web.settings, token=token)
    except NewsletterError as exc:
        return error_page(request, exc)
    if pending.confirmed:
        return _welcome(request, web, pending.newsletters, again=True)
    return page(
        request,
        "confirm.html",
        newsletters=_names(web, pending.newsletters),
        action=urls.CONFIRM + token,
    )


@router.post("/confirm/{token}")
def confirm(request: Request, token: str, csrf: str = Form("")) -> Response:
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return form_expired(request)
    try:
        with transaction(web.sessions) as session:
            done = signup.confirm_signup(session, settings=web.settings, token=token, now=utcnow())
    except NewsletterError as exc:
        return error_page(request, exc)
    return _welcome(request, web, done.newsletters, again=done.confirmed)


def _and(items: list[str]) -> str:
    """ "A", "A and B", "A, B and C"."""
    return " and ".join([", ".join(items[:-1]), items[-1]]) if len(items) > 1 else "".join(items)


def _welcome(request: Request, web: WebState, slugs: tuple[str, ...], *, again: bool) -> Response:
    links: list[Link] = []
    with web.sessions() as session:
        for nl in _names(web, slugs):
            latest = archive.latest(session, slug=nl["slug"])
            if latest is not None:
                href = urls.archive("", nl["slug"], latest.issue_date)
                links.append(Link(href, f"Read the latest {nl['name']}"))
    names = _and([n["name"] for n in _names(web, slugs)]) or "our newsletters"
    return message(
        request,
        "You are already subscribed" if again else "Welcome!",
        f"You will receive {names}.",
        "Every email has a link to leave in one click, and one to change your preferences.",
        links=tuple(links),
    )


# ----- unsubscribe ----------------------------------------------------------------


def _unsubscribe_what(web: WebState, token: str) -> str:
    data = read_token(web.settings.signing_key, token, purpose="unsubscribe")
    nl = web.settings.newsletters.get(data.newsletter)
    return nl.name if nl else "every newsletter"


@router.get("/unsubscribe/{token}")
def unsubscribe_page(request: Request, token: str) -> Response:
    web = web_state(request)
    try:
        what = _unsubscribe_what(web, token)
    except NewsletterError as exc:
        return error_page(request, exc)
    return page(
        request,
        "unsubscribe.html",
        what=what,
        action=urls.UNSUBSCRIBE + token,
        preferences=urls.PREFERENCES + token,
    )


@router.post("/unsubscribe/{token}")
def unsubscribe(
    request: Request,
    token: str,
    list_unsubscribe: str = Form("", alias="List-Unsubscribe"),
    csrf: str = Form(""),
) -> Response:
    """RFC 8058: ``List-Unsubscribe=One-Click`` from a mail provider (no cookie, no
    CSRF token) unsubscribes at once; our own page's button carries its token."""
    web = web_state(request)
    one_click = list_unsubscribe == ONE_CLICK
    if not one_click and not web.csrf.valid(request, csrf):
        return form_expired(request)
    try:
        what = _unsubscribe_what(web, token)
        with transaction(web.sessions) as session:
            unsubscribe_by_token(
                session,
                token=token,
                settings=web.settings,
                via="one-click" if one_click else "web",
            )
    except NewsletterError as exc:
        return error_page(request, exc)
    return message(
        request,
        "You are unsubscribed",
        f"You will not receive {what} any more.",
        links=(Link(urls.PREFERENCES + token, "Change your preferences"),),
    )


@router.get("/unsubscribe")
@router.get("/preferences")
def without_token(request: Request) -> Response:
    """The archive's web versions link here: no one's token is ever published."""
    return message(
        request,
        "Use the link in your email",
        "Every email we send you has a link to leave in one click and one to change your "
        "preferences. Use those: they work only for you.",
        links=(Link("/", "Sign up"),),
    )


# ----- preferences ----------------------------------------------------------------


def _preferences_page(
    request: Request, web: WebState, token: str, *, notice: str = "", error: str = ""
) -> Response:
    with web.sessions() as session:
        view = prefs.preferences(session, settings=web.settings, token=token)
    return no_store(
        page(
            request,
            "preferences.html",
            prefs=view,
            zones=web.zones,
            action=urls.PREFERENCES + token,
            data_url=urls.PREFERENCES + token + "/data.json",
            notice=notice,
            error=error,
            status=400 if error else 200,
        )
    )


@router.get("/preferences/{token}")
def preferences_page(request: Request, token: str) -> Response:
    web = web_state(request)
    try:
        return _preferences_page(request, web, token)
    except NewsletterError as exc:
        return error_page(request, exc)


@router.post("/preferences/{token}")
def preferences(
    request: Request,
    token: str,
    action: str = Form("save"),
    newsletters: list[str] = Form(default_factory=list),  # noqa: B008 (FastAPI's way)
    name: str = Form(""),
    timezone: str = Form(""),
    csrf: str = Form(""),
) -> Response:
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return form_expired(request)
    try:
        if action == "delete":  # the confirmation step: nothing is erased yet
            with web.sessions() as session:
                email = prefs.reader(session, settings=web.settings, token=token).email
            return no_store(
                page(
                    request,
                    "delete.html",
                    email=email,
                    action=urls.PREFERENCES + token,
                    back=urls.PREFERENCES + token,
                )
            )
        with transaction(web.sessions) as session:
            if action == "erase":
                prefs.erase(session, settings=web.settings, token=token)
            elif action == "leave":
                prefs.leave_everything(session, settings=web.settings, token=token)
            else:
                prefs.save(
                    session,
                    settings=web.settings,
                    token=token,
                    chosen=newsletters,
                    name=name,
                    timezone=timezone or None,
                    now=utcnow(),
                )
    except InputError as exc:
        if exc.code.startswith("token."):
            return error_page(request, exc)
        return _preferences_page(request, web, token, error=str(exc))
    except NewsletterError as exc:
        return error_page(request, exc)
    if action == "erase":
        return message(
            request,
            "Your data is deleted",
            "We have erased your address and everything about you. Only a scrambled "
            "fingerprint remains, so that the address is not added again by mistake.",
        )
    notice = "You are unsubscribed from everything." if action == "leave" else "Saved."
    return _preferences_page(request, web, token, notice=notice)


@router.get("/preferences/{token}/data.json")
def preferences_data(request: Request, token: str) -> Response:
    web = web_state(request)
    try:
        with web.sessions() as session:
            data = prefs.data(session, settings=web.settings, token=token)
    except NewsletterError as exc:
        return error_page(request, exc)
    body = json.dumps(data, indent=2, ensure_ascii=False)
    response = Response(
        body,
        media_type="application/json",
        headers={"content-disposition": 'attachment; filename="my-newsletter-data.json"'},
    )
    return no_store(response)


# ----- archive --------------------------------------------------------------------


@router.get("/archive")
def archive_index(request: Request) -> Response:
    web = web_state(request)
    rows = []
    with web.sessions() as session:
        for slug, nl in web.settings.newsletters.items():
            latest = archive.latest(session, slug=slug)
            rows.append(
                {
                    "name": nl.name,
                    "description": nl.description,
                    "url": urls.archive("", slug),
                    "latest": format_date_long(latest.issue_date) if latest else "",
                    "latest_url": urls.archive("", slug, latest.issue_date) if latest else "",
                }
            )
    return page(request, "archive_index.html", newsletters=rows)


def _known(web: WebState, slug: str) -> bool:
    return slug in web.settings.newsletters


@router.get("/archive/{slug}")
def archive_list(request: Request, slug: str, after: str | None = None) -> Response:
    web = web_state(request)
    if not _known(web, slug):
        return message(request, "Not found", "There is no such newsletter.", status=404)
    nl = web.settings.newsletters[slug]
    try:
        with web.sessions() as session:
            listing = archive.published(session, slug=slug, limit=30, cursor=after)
    except NewsletterError as exc:
        return error_page(request, exc)
    editions = [
        {
            "url": urls.archive("", slug, e.issue_date),
            "date": e.issue_date.isoformat(),
            "date_long": format_date_long(e.issue_date),
            "subject": e.subject,
        }
        for e in listing.items
    ]
    next_url = f"{urls.archive('', slug)}?after={listing.cursor}" if listing.cursor else ""
    return page(
        request,
        "archive_list.html",
        name=nl.name,
        description=nl.description,
        editions=editions,
        next_url=next_url,
        feed_url=urls.feed("", slug),
    )


@router.get("/archive/{slug}/feed.xml")
def archive_feed(request: Request, slug: str) -> Response:
    web = web_state(request)
    if not _known(web, slug):
        return message(request, "Not found", "There is no such newsletter.", status=404)
    nl = web.settings.newsletters[slug]
    base = web.settings.site.base_url
    with web.sessions() as session:
        listing = archive.published(session, slug=slug, limit=50)
    entries = [
        {
            "url": urls.archive(base, slug, e.issue_date),
            "subject": e.subject,
            "date_long": format_date_long(e.issue_date),
            "updated": _atom_time(e.issue_date),
        }
        for e in listing.items
    ]
    xml = (
        environment()
        .get_template("atom.xml")
        .render(
            name=nl.name,
            description=nl.description,
            site_name=web.settings.service.name,
            list_url=urls.archive(base, slug),
            feed_url=urls.feed(base, slug),
            updated=entries[0]["updated"] if entries else _atom_time(date(2000, 1, 1)),
            editions=entries,
        )
    )
    return Response(xml, media_type="application/atom+xml")


def _atom_time(day: date) -> str:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).isoformat()


@router.get("/archive/{slug}/{day}")
async def archive_edition(request: Request, slug: str, day: str) -> Response:
    """An edition's web version; served from ``web.pages`` while it is fresh there."""
    web = web_state(request)
    cached = web.pages.get((slug, day))  # only this thread (the event loop's) uses it
    if cached is not None:
        return HTMLResponse(cached)
    response = await run_in_threadpool(_archive_edition, request, slug, day)
    if response.status_code == 200:
        web.pages[slug, day] = bytes(response.body)
    return response


def _archive_edition(request: Request, slug: str, day: str) -> Response:
    web = web_state(request)
    try:
        issue_date = date.fromisoformat(day)
    except ValueError:
        return message(request, "Not found", "There is no edition at this address.", status=404)
    if not _known(web, slug):
        return message(request, "Not found", "There is no such newsletter.", status=404)
    try:
        with web.sessions() as session:
            edition = archive.web_version(
                session, settings=web.settings, slug=slug, issue_date=issue_date
            )
    except NewsletterError as exc:
        return message(request, "Not found", str(exc), status=404)
    return page(request, "archive_edition.html", edition=edition, list_url=urls.archive("", slug))


@router.get("/altcha/challenge")
def altcha_challenge(request: Request) -> Response:
    web = web_state(request)
    if web.settings.web.captcha != "altcha":
        return RedirectResponse("/", status_code=303)
    return Response(json.dumps(captcha.challenge(web)), media_type="application/json")
