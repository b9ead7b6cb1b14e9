"""The console's Stories page: one newsletter's stories, filtered and paged by keyset,
with add, pin/unpin, hide/unhide and "fetch feeds now".

Thin routes over :mod:`newsletter.content.stories`, all behind ``Permission.STORIES``.
Every action is a POST with a CSRF token that redirects (303) back to the listing;
what it did travels in a signed, short-lived ``notice`` parameter, so a link cannot
make the page say something the service did not.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Path, Request
from itsdangerous import BadData, URLSafeTimedSerializer
from starlette.responses import RedirectResponse, Response

from newsletter.content import stories
from newsletter.content.stories import FetchReport, StoryFilter
from newsletter.db import transaction
from newsletter.errors import InputError, NewsletterError
from newsletter.models import Story
from newsletter.staff.access import Permission
from newsletter.web.admin.auth import console, require
from newsletter.web.pages import form_expired, sentence, status_of
from newsletter.web.state import WebState, web_state

router = APIRouter()
GUARD = [Depends(require(Permission.STORIES))]
PAGE_SIZE = 50
NOTICE_SECONDS = 600
NOTICE_LINES = 20
#: The listing's choices, in the order the page offers them ("" = not hidden).
SHOWS = {"": "Visible", **{f.value: f.value.capitalize() for f in StoryFilter}, "all": "All"}
FILTERS = {f.value: f for f in StoryFilter}
STORY_ID = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _signer(web: WebState) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(web.settings.signing_key, salt="newsletter.admin.notice")


def _notices(web: WebState, token: str) -> list[str]:
    """The lines a recent action left for the page (nothing for a forged or old token)."""
    if not token:
        return []
    try:
        lines = _signer(web).loads(token, max_age=NOTICE_SECONDS)
    except BadData:
        return []
    return [str(line) for line in lines] if isinstance(lines, list) else []


def _slug(web: WebState, newsletter: str) -> str:
    """The newsletter asked for (NotFoundError if unknown), else the first configured."""
    if newsletter:
        web.settings.newsletter(newsletter)
        return newsletter
    if not web.settings.newsletters:
        raise InputError("no newsletters are configured", code="config.no_newsletters")
    return next(iter(web.settings.newsletters))


def _back(web: WebState, newsletter: str, show: str, *lines: str) -> Response:
    query = {"newsletter": newsletter, "show": show if show in SHOWS else ""}
    if lines:
        shown = [line[:300] for line in lines[:NOTICE_LINES]]
        if len(lines) > NOTICE_LINES:  # the URL stays short; the log has every line
            shown.append(f"And {len(lines) - NOTICE_LINES} more (the log has them).")
        query["notice"] = _signer(web).dumps(shown)
    target = "/admin/stories?" + urlencode({k: v for k, v in query.items() if v})
    return RedirectResponse(target, status_code=303)


def _page(
    request: Request,
    *,
    newsletter: str = "",
    show: str = "",
    after: str = "",
    notice: str = "",
    error: str = "",
    form: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    """The listing with its forms; ``error`` and ``form`` after a refused add."""
    web = web_state(request)
    rows: list[Story] = []
    next_url = ""
    slug = newsletter
    try:
        slug = _slug(web, newsletter)
        if show not in SHOWS:
            raise InputError(f"unknown filter {show!r}", code="input.bad_filter")
        with web.sessions() as session:
            page = stories.list_stories(
                session,
                newsletter=slug,
                include_hidden=show == "all",
                only=FILTERS.get(show),
                settings=web.settings,
                limit=PAGE_SIZE,
                cursor=after or None,
            )
            rows = list(page.items)
        if page.cursor:
            query = {"newsletter": slug, "show": show, "after": page.cursor}
            next_url = "/admin/stories?" + urlencode({k: v for k, v in query.items() if v})
    except NewsletterError as exc:
        error = error or sentence(str(exc))
        status = status if status != 200 else status_of(exc)
    configured = web.settings.newsletters
    return console(
        request,
        "stories.html",
        status=status,
        newsletters=[(s, nl.name) for s, nl in configured.items()],
        newsletter=slug,
        known=slug in configured,
        newsletter_name=configured[slug].name if slug in configured else slug,
        feeds=configured[slug].feeds if slug in configured else [],
        show=show,
        shows=SHOWS,
        rows=rows,
        next_url=next_url,
        notices=_notices(web, notice),
        error=error,
        form=form or {"title": "", "url": "", "summary": "", "kicker": "", "pin": False},
    )


@router.get("/admin/stories", dependencies=GUARD)
def listing(
    request: Request, newsletter: str = "", show: str = "", after: str = "", notice: str = ""
) -> Response:
    """One newsletter's stories, newest first, filtered by ``show``."""
    return _page(request, newsletter=newsletter, show=show, after=after, notice=notice)


@router.post("/admin/stories", dependencies=GUARD)
def add(
    request: Request,
    newsletter: str = Form(),
    title: str = Form(),
    url: str = Form(),
    summary: str = Form(""),
    kicker: str = Form(""),
    pin: str = Form(""),
    csrf: str = Form(""),
) -> Response:
    """Add an editor's pick; the form comes back with the reason if it is refused."""
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return form_expired(request)
    try:
        slug = _slug(web, newsletter)
        with transaction(web.sessions) as session:
            story = stories.add_story(
                session,
                newsletter=slug,
                title=title,
                url=url,
                summary=summary,
                kicker=kicker,
                pin=bool(pin),
            )
            session.flush()
            line = f"Added story {story.id}" + (", pinned." if story.pinned else ".")
    except NewsletterError as exc:
        form = {"title": title, "url": url, "summary": summary, "kicker": kicker, "pin": bool(pin)}
        return _page(
            request,
            newsletter=newsletter,
            error=sentence(str(exc)),
            form=form,
            status=status_of(exc),
        )
    return _back(web, slug, "", line)


def _report_line(report: FetchReport) -> str:
    if report.error:
        return f"{report.feed}: failed: {report.error}"
    return (
        f"{report.feed}: {report.added} added, {report.duplicates} duplicates, "
        f"{report.skipped} skipped"
    )


@router.post("/admin/stories/fetch", dependencies=GUARD)
def fetch(
    request: Request, newsletter: str = Form(), show: str = Form(""), csrf: str = Form("")
) -> Response:
    """Fetch the newsletter's feeds now; the page then lists what each feed gave."""
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return form_expired(request)
    try:
        slug = _slug(web, newsletter)
        # A plain session rather than transaction(): the feeds download before any
        # write, and the process-wide SQLite writer queue should not wait for them.
        with web.sessions() as session:
            reports = stories.fetch_newsletter(session, newsletter=slug, settings=web.settings)
            session.commit()
    except NewsletterError as exc:
        return _page(
            request, newsletter=newsletter, error=sentence(str(exc)), status=status_of(exc)
        )
    lines = [_report_line(r) for r in reports] or ["This newsletter has no feeds configured."]
    return _back(web, slug, show, *lines)


@router.post("/admin/stories/{story_id}/pin", dependencies=GUARD)
def pin(
    request: Request,
    story_id: STORY_ID,
    pinned: str = Form(),
    show: str = Form(""),
    csrf: str = Form(""),
) -> Response:
    """Pin (``pinned=yes``) or unpin (``no``) a story."""
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return form_expired(request)
    on = pinned == "yes"
    try:
        with transaction(web.sessions) as session:
            done = stories.pin_story(session, story_id=story_id, pinned=on)
            slug = done.story.newsletter
    except NewsletterError as exc:
        return _page(request, error=sentence(str(exc)), status=status_of(exc))
    lines = [f"Story {story_id} {'pinned' if on else 'unpinned'}."]
    if on and done.sent_in:
        which = ("edition " if len(done.sent_in) == 1 else "editions ") + ", ".join(
            map(str, done.sent_in)
        )
        lines.append(
            f"It was already sent in {which}; editions never repeat a story, so it will "
            "not be in the next one."
        )
    return _back(web, slug, show, *lines)


@router.post("/admin/stories/{story_id}/hide", dependencies=GUARD)
def hide(
    request: Request,
    story_id: STORY_ID,
    hidden: str = Form(),
    show: str = Form(""),
    csrf: str = Form(""),
) -> Response:
    """Hide (``hidden=yes``) a story from every edition, or show it again (``no``)."""
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return form_expired(request)
    on = hidden == "yes"
    try:
        with transaction(web.sessions) as session:
            story = stories.hide_story(session, story_id=story_id, hidden=on)
            slug = story.newsletter
    except NewsletterError as exc:
        return _page(request, error=sentence(str(exc)), status=status_of(exc))
    return _back(web, slug, show, f"Story {story_id} {'hidden' if on else 'shown again'}.")
