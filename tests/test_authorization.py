"""Every console page and API endpoint, found by walking the app's routes, refuses an
anonymous caller and every role its permission leaves out; a route added later
without a guard fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Mount

from newsletter.config import Settings
from newsletter.models import StaffRole
from newsletter.staff import accounts, api_tokens
from newsletter.staff.access import Permission, allows
from newsletter.web.app import create_app

PASSWORD = "correct horse battery"
#: The console's own doors: open to anyone (the login) or guarded by CSRF alone.
OPEN = {("GET", "/admin/login"), ("POST", "/admin/login"), ("POST", "/admin/logout")}


@dataclass(frozen=True)
class Guarded:
    method: str
    path: str
    permission: Permission
    api: bool


def _permission(route: APIRoute) -> Permission | None:
    for dependency in route.dependant.dependencies:
        found = getattr(dependency.call, "permission", None)
        if isinstance(found, Permission):
            return found
    return None


def _walk(routes: list[object], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's include_router
        if included is not None:
            inner = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            yield from _walk(list(included.routes), prefix + inner)
        elif isinstance(route, Mount):
            yield from _walk(list(route.routes), prefix + route.path)
        elif isinstance(route, APIRoute):
            yield prefix, route


def guarded_routes(client: TestClient) -> list[Guarded]:
    app = client.app
    found: list[Guarded] = []
    for prefix, route in _walk(list(app.routes)):  # type: ignore[attr-defined]
        path = prefix + route.path
        api = path.startswith("/api/")
        if not (api or path.startswith("/admin")):
            continue
        for method in sorted(route.methods or ()):
            if (method, path) in OPEN or (api and path.endswith("/openapi.json")):
                continue
            permission = _permission(route)
            assert permission is not None, f"{method} {path} declares no permission"
            found.append(Guarded(method, path, permission, api))
    return found


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


@pytest.fixture
def app_client(settings: Settings, engine: object) -> Iterator[TestClient]:
    with TestClient(create_app(settings), base_url="https://testserver") as c:
        yield c


def test_the_walk_finds_the_console_and_the_api(app_client: TestClient) -> None:
    found = guarded_routes(app_client)
    paths = {g.path for g in found}
    assert "/admin" in paths and "/admin/deliveries" in paths
    assert "/api/v1/deliveries" in paths and "/api/v1/editions/{edition_id}" in paths


def test_every_guarded_route_refuses_anonymous_callers(app_client: TestClient) -> None:
    for g in guarded_routes(app_client):
        answer = app_client.request(g.method, _fill(g.path), follow_redirects=False)
        if g.api:
            assert answer.status_code == 401, (g, answer.status_code)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json()["code"] == "auth.missing"
        else:
            assert answer.status_code == 303, (g, answer.status_code)
            assert answer.headers["location"].startswith("/admin/login?next=")
    app_client.cookies.set("nl_staff", "1:0.forged.signature")
    for g in guarded_routes(app_client):
        forged = app_client.request(
            g.method,
            _fill(g.path),
            headers={"Authorization": "Bearer nl_forged"},
            follow_redirects=False,
        )
        assert forged.status_code == (401 if g.api else 303), (g, forged.status_code)


@pytest.mark.parametrize("role", list(StaffRole))
def test_every_guarded_route_refuses_the_roles_it_leaves_out(
    sessions: sessionmaker[Session],
    app_client: TestClient,
    role: StaffRole,
) -> None:
    with sessions.begin() as s:
        accounts.add(s, email=f"{role.value}@example.org", role=role, password=PASSWORD)
        _, token = api_tokens.create(s, name=role.value, role=role)
    login = app_client.get("/admin/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', login)
    assert csrf
    data = {"email": f"{role.value}@example.org", "password": PASSWORD, "csrf": csrf.group(1)}
    assert app_client.post("/admin/login", data=data, follow_redirects=False).status_code == 303
    for g in guarded_routes(app_client):
        headers = {"Authorization": f"Bearer {token}"} if g.api else {}
        answer = app_client.request(
            g.method, _fill(g.path), headers=headers, follow_redirects=False
        )
        if allows(role, g.permission):
            assert answer.status_code not in (401, 403), (role, g, answer.status_code)
            assert answer.status_code < 500, (role, g, answer.status_code)
        else:
            assert answer.status_code == 403, (role, g, answer.status_code)


def test_the_openapi_document_describes_every_endpoint_and_its_refusals(
    app_client: TestClient,
) -> None:
    doc = app_client.get("/api/v1/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            assert {"401", "403", "422"} <= set(operation["responses"]), (method, path)
            assert operation.get("security"), (method, path)
            assert operation.get("description") or operation.get("summary"), (method, path)
