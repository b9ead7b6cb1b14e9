"""Who is calling the API: ``Authorization: Bearer nl_…``, and the per-route guard.

No token, or an unknown or revoked one, is 401 (with ``WWW-Authenticate: Bearer``);
a token whose role may not use the endpoint is 403. Every endpoint declares its
permission with :func:`require`; the route enumeration test fails any that does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from newsletter.models import ApiToken, utcnow
from newsletter.staff import api_tokens
from newsletter.staff.access import Permission, allows
from newsletter.web.state import WebState


class ApiError(Exception):
    """An API refusal: its status, a stable code and one line of text."""

    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.code = code


#: Declares the scheme in the OpenAPI document; the checks are ours (no auto 403).
BEARER = HTTPBearer(auto_error=False, description="An API token: `newsletter staff token create`")


def caller(request: Request, credentials: HTTPAuthorizationCredentials | None) -> ApiToken:
    """The token this request carries; ApiError(401) when there is no live one."""
    if credentials is None or not credentials.credentials.strip():
        raise ApiError(401, "auth.missing", "send an API token: Authorization: Bearer <token>")
    web: WebState = request.app.state.web
    with web.sessions() as session:  # a read, and at most once a minute a small write
        row = api_tokens.authenticate(session, token=credentials.credentials.strip(), now=utcnow())
        session.commit()
    if row is None:
        raise ApiError(401, "auth.invalid", "the API token is unknown or revoked")
    return row


def require(permission: Permission) -> Callable[..., ApiToken]:
    """An endpoint dependency: the caller's token, if its role allows ``permission``."""

    def guard(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> ApiToken:
        token = caller(request, credentials)
        if not allows(token.role, permission):
            role = token.role.value
            raise ApiError(403, "auth.forbidden", f"this token's role ({role}) may not do this")
        return token

    guard.permission = permission  # type: ignore[attr-defined]  # read by the route test
    return guard
