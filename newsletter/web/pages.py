"""Rendering the web pages (Jinja2, autoescaped) and the words for service errors.

Routes are thin: they call a service function and hand its result to a template
here. A service error becomes a plain page with a 4xx status chosen from its
code; nothing else reaches the visitor (no traceback, no token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from newsletter.errors import InputError, NewsletterError, NotFoundError, StateError
from newsletter.web.security import no_store

TEMPLATES = Path(__file__).parent / "templates"


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(("html", "xml")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # package files: no stat() of each template on every page
    )


@dataclass(frozen=True)
class Link:
    href: str
    text: str


class _Token:
    """The visitor's CSRF token, made only if the page has a form that shows it
    (a page without one sets no cookie and signs nothing)."""

    def __init__(self, make: Callable[[], str]) -> None:
        self._make = make

    def __str__(self) -> str:
        return self._make()

    def __html__(self) -> str:
        return str(markupsafe.escape(self._make()))


def render(request: Request, template: str, **context: Any) -> str:
    """The HTML of ``template`` with the site's constants and the visitor's CSRF token."""
    web = request.app.state.web
    ctx = {
        "site_name": web.settings.service.name,
        "postal_address": web.settings.sender.postal_address,
        "csrf": _Token(lambda: web.csrf.field(request)),
        **context,
    }
    return environment().get_template(template).render(ctx)


def page(request: Request, template: str, *, status: int = 200, **context: Any) -> Response:
    """A page from ``template`` (see :func:`render`), with the CSRF cookie if it made one."""
    response = HTMLResponse(render(request, template, **context), status_code=status)
    request.app.state.web.csrf.attach(request, response)
    return response


def message(
    request: Request,
    heading: str,
    *paragraphs: str,
    status: int = 200,
    links: tuple[Link, ...] = (),
) -> Response:
    """A page that says one thing (done, sorry, refused)."""
    return page(
        request, "message.html", status=status, heading=heading, paragraphs=paragraphs, links=links
    )


#: What a visitor reads for a service error, by code (a 4xx either way).
_WORDS: dict[str, tuple[int, str, str]] = {
    "token.invalid": (
        400,
        "This link does not work",
        "It may have been cut short or changed. Use the link from your email as it is.",
    ),
    "token.unknown": (
        404,
        "This link does not work any more",
        "The subscription it was for no longer exists.",
    ),
    "token.expired": (
        410,
        "This link has expired",
        "Sign up again and we will send you a new one.",
    ),
    "subscriber.suppressed": (
        409,
        "We cannot send email to this address",
        "An earlier message bounced or was reported. Write to us to change that.",
    ),
}


def error_page(request: Request, err: NewsletterError) -> Response:
    """The page for a service error: words by code, a status by kind."""
    if err.code in _WORDS:
        status, heading, text = _WORDS[err.code]
        return message(request, heading, text, status=status)
    status = status_of(err)
    if not isinstance(err, InputError | NotFoundError | StateError):
        status = 503  # a provider or the database: not the visitor's fault
        return message(request, "Something went wrong", "Please try again later.", status=status)
    return message(request, "That did not work", str(err), status=status)


def status_of(err: NewsletterError) -> int:
    """The HTTP status of a refused request, by the kind of service error."""
    return 404 if isinstance(err, NotFoundError) else 409 if isinstance(err, StateError) else 400


def sentence(text: str) -> str:
    """``text`` with a capital first letter (service errors are written lower-case)."""
    return text[:1].upper() + text[1:]


def form_expired(request: Request) -> Response:
    """The 403 page for a form whose CSRF token is missing, forged or old."""
    return no_store(
        message(
            request,
            "This form has expired",
            "Go back, reload the page and send it again.",
            status=403,
        )
    )
