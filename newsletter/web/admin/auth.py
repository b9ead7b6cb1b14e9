"""Who is using the console: the login, the session cookie, and the per-route guard.

The session cookie (``nl_staff``) is a timed token signed with the service secret:
HttpOnly, SameSite=Lax, Secure when the site is https, limited to /admin, and
ending after ``web.staff_session_hours``, at a password change or when the
account is removed. Every console route declares its permission with
:func:`require`; the route enumeration test fails any route that does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from newsletter.db import transaction
from newsletter.errors import InputError
from newsletter.models import Staff, utcnow
from newsletter.staff import accounts
from newsletter.staff.access import Permission, allows
from newsletter.web.pages import message, page
from newsletter.web.security import client_address, no_store
from newsletter.web.state import WebState, web_state

COOKIE = "nl_staff"
router = APIRouter()


class LoginRequired(Exception):
    """No valid console session: the handler sends the visitor to the login page."""


class Forbidden(Exception):
    """A valid session whose role may not use this page."""

    def __init__(self, permission: Permission) -> None:
        super().__init__(permission.value)
        self.permission = permission


def _max_age(web: WebState) -> int:
    return int(web.settings.web.staff_session_hours * 3600)


def current_staff(request: Request) -> Staff:
    """The signed-in member of staff; LoginRequired when there is none."""
    cached = request.state.__dict__.get("staff")
    if isinstance(cached, Staff):
        return cached
    token = request.cookies.get(COOKIE, "")
    web = web_state(request)
    staff = None
    if token:
        with web.sessions() as session:
            staff = accounts.session_staff(
                session, secret=web.settings.signing_key, token=token, max_age=_max_age(web)
            )
    if staff is None:
        raise LoginRequired()
    request.state.staff = staff
    return staff


def require(permission: Permission) -> Callable[[Request], Staff]:
    """A route dependency: the member of staff, if their role allows ``permission``."""

    def guard(request: Request) -> Staff:
        staff = current_staff(request)
        if not allows(staff.role, permission):
            raise Forbidden(permission)
        return staff

    guard.permission = permission  # type: ignore[attr-defined]  # read by the route test
    return guard


def console(request: Request, template: str, **context: Any) -> Response:
    """A console page: the layout knows who is signed in and what they may open."""
    staff = current_staff(request)
    can = {p.value: allows(staff.role, p) for p in Permission}
    return no_store(page(request, f"admin/{template}", staff=staff, can=can, **context))


async def login_required(request: Request, exc: Exception) -> Response:
    target = quote(request.url.path, safe="/")
    return RedirectResponse(f"/admin/login?next={target}", status_code=303)


async def forbidden(request: Request, exc: Exception) -> Response:
    return no_store(
        message(
            request,
            "Not for your role",
            "Your account may not use this page. Ask an admin if you need it.",
            status=403,
        )
    )


def _safe_next(target: str) -> str:
    """Only a path inside the console (never another site) after logging in."""
    if target.startswith("/admin") and not target.startswith("//") and "\\" not in target:
        return target
    return "/admin"


@router.get("/admin/login")
def login_page(request: Request, next: str = "/admin") -> Response:  # noqa: A002
    return no_store(page(request, "admin/login.html", next=_safe_next(next), error=""))


@router.post("/admin/login")
def login(
    request: Request,
    email: str = Form(""),
    password: str = Form(""),
    next: str = Form("/admin"),  # noqa: A002
    csrf: str = Form(""),
) -> Response:
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return no_store(message(request, "That did not work", "Please try again.", status=403))
    client = client_address(request, trust_forwarded_for=web.settings.web.trust_forwarded_for)

    def again(error: str, status: int) -> Response:
        return no_store(
            page(request, "admin/login.html", status=status, next=_safe_next(next), error=error)
        )

    if not web.limits.login_allowed(client, email):
        return again("Too many failed logins. Try again in an hour.", 429)
    try:
        with transaction(web.sessions) as session:
            staff = accounts.authenticate(session, email=email, password=password, now=utcnow())
            token = accounts.session_token(web.settings.signing_key, staff)
    except InputError:
        web.limits.login_failed(client, email)
        return again("Wrong address or password.", 400)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=_max_age(web),
        httponly=True,
        samesite="lax",
        secure=web.csrf.secure or request.url.scheme == "https",
        path="/admin",
    )
    return response


@router.post("/admin/logout")
def logout(request: Request, csrf: str = Form("")) -> Response:
    web = web_state(request)
    if not web.csrf.valid(request, csrf):
        return no_store(message(request, "That did not work", "Please try again.", status=403))
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(COOKIE, path="/admin")
    return response
