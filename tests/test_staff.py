"""Staff accounts, console logins and sessions, API tokens: CLI, services and web."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
import time_machine
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.errors import InputError, StateError
from newsletter.models import ApiToken, Staff, StaffRole, utcnow
from newsletter.staff import accounts, api_tokens
from newsletter.web.app import create_app
from tests.conftest import CliRun

PASSWORD = "correct horse battery"


@pytest.fixture
def client(settings: Settings, engine: object) -> Iterator[TestClient]:
    with TestClient(create_app(settings), base_url="https://testserver") as c:
        yield c


def _add(sessions: sessionmaker[Session], email: str, role: StaffRole) -> None:
    with sessions.begin() as s:
        accounts.add(s, email=email, role=role, password=PASSWORD)


def _csrf(client: TestClient, path: str = "/admin/login") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert found, "the page has no CSRF field"
    return found.group(1)


def _login(client: TestClient, email: str, password: str = PASSWORD, next_: str = "/admin"):  # type: ignore[no-untyped-def]
    data = {"email": email, "password": password, "csrf": _csrf(client), "next": next_}
    return client.post("/admin/login", data=data, follow_redirects=False)


# ----- the CLI ---------------------------------------------------------------


def test_staff_accounts_from_the_cli_with_the_password_on_stdin(run_cli: CliRun) -> None:
    added = run_cli("staff", "add", "Ed@Example.org", "--role", "editor", input=PASSWORD + "\n")
    assert "added ed@example.org (editor)" in added.output
    assert PASSWORD not in added.output
    listed = run_cli("staff", "list", "--format", "json").output
    assert '"ed@example.org"' in listed and "editor" in listed and "argon2" not in listed
    short = run_cli(
        "staff", "add", "op@example.org", "--role", "operator", input="short\n", expect=2
    )
    assert "at least 10 characters" in short.output
    again = run_cli(
        "staff", "add", "ed@example.org", "--role", "admin", input=PASSWORD + "\n", expect=1
    )
    assert "already has a staff account" in again.output
    run_cli("staff", "password", "ed@example.org", input="another long password\n")
    run_cli("staff", "role", "ed@example.org", "--role", "admin")
    assert "admin" in run_cli("staff", "list", "--format", "json").output
    missing = run_cli("staff", "remove", "nobody@example.org", expect=2)
    assert "no staff account for nobody@example.org" in missing.output
    run_cli("staff", "remove", "ed@example.org")
    assert "ed@example.org" not in run_cli("staff", "list", "--format", "json").output


def test_api_tokens_from_the_cli_are_shown_once_and_stored_as_a_hash(
    run_cli: CliRun, session: Session
) -> None:
    made = run_cli("staff", "token", "create", "--name", "cms", "--role", "operator")
    token = made.stdout.strip()
    assert token.startswith("nl_") and len(token) > 40
    row = session.scalars(select(ApiToken)).one()
    assert row.digest != token and token not in row.digest and row.prefix == token[:10]
    listed = run_cli("staff", "token", "list", "--format", "json").output
    assert token not in listed and token[:10] in listed
    run_cli("staff", "token", "create", "--name", "cms", "--role", "admin", expect=1)
    run_cli("staff", "token", "revoke", "cms")
    session.expire_all()
    assert session.scalars(select(ApiToken)).one().revoked_at is not None
    run_cli("staff", "token", "revoke", "nope", expect=2)


# ----- the services ---------------------------------------------------------


def test_a_failed_login_says_the_same_for_an_unknown_address(session: Session) -> None:
    accounts.add(session, email="ed@example.org", role=StaffRole.EDITOR, password=PASSWORD)
    with pytest.raises(InputError) as wrong:
        accounts.authenticate(session, email="ed@example.org", password="not it", now=utcnow())
    with pytest.raises(InputError) as unknown:
        accounts.authenticate(session, email="who@example.org", password=PASSWORD, now=utcnow())
    assert str(wrong.value) == str(unknown.value) and wrong.value.code == "staff.login_failed"
    staff = accounts.authenticate(session, email="ED@example.org", password=PASSWORD, now=utcnow())
    assert staff.last_login_at is not None
    assert staff.password_hash.startswith("$argon2") and PASSWORD not in staff.password_hash
    with pytest.raises(StateError):
        accounts.add(session, email="ed@example.org", role=StaffRole.ADMIN, password=PASSWORD)


def test_a_session_ends_at_a_password_change_at_removal_and_with_time(session: Session) -> None:
    staff = accounts.add(session, email="ed@example.org", role=StaffRole.EDITOR, password=PASSWORD)
    token = accounts.session_token("secret" * 6, staff)

    def who(value: str, max_age: int = 3600) -> Staff | None:
        return accounts.session_staff(session, secret="secret" * 6, token=value, max_age=max_age)

    assert who(token) is staff
    assert who(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]) is None  # tampered
    with time_machine.travel(utcnow() + timedelta(hours=2)):
        assert who(token) is None  # expired
    accounts.set_password(session, email="ed@example.org", password="a brand new password")
    assert who(token) is None
    fresh = accounts.session_token("secret" * 6, staff)
    assert who(fresh) is staff
    accounts.remove(session, email="ed@example.org")
    assert who(fresh) is None


def test_a_revoked_token_and_a_removed_owners_token_stop_at_once(session: Session) -> None:
    owner = accounts.add(
        session, email="op@example.org", role=StaffRole.OPERATOR, password=PASSWORD
    )
    _, mine = api_tokens.create(session, name="mine", role=StaffRole.OPERATOR, staff_id=owner.id)
    _, other = api_tokens.create(session, name="other", role=StaffRole.EDITOR)
    now = utcnow()
    assert api_tokens.authenticate(session, token=mine, now=now) is not None
    assert api_tokens.authenticate(session, token=mine + "x", now=now) is None
    assert api_tokens.authenticate(session, token="Bearer nonsense", now=now) is None
    api_tokens.revoke(session, name="other")
    assert api_tokens.authenticate(session, token=other, now=now) is None
    accounts.remove(session, email="op@example.org")
    assert api_tokens.authenticate(session, token=mine, now=now) is None


# ----- the console's login ---------------------------------------------------


def test_login_sets_a_safe_cookie_and_logout_ends_it(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    _add(sessions, "ed@example.org", StaffRole.EDITOR)
    assert client.get("/admin", follow_redirects=False).headers["location"] == (
        "/admin/login?next=/admin"
    )
    wrong = _login(client, "ed@example.org", "not the password")
    assert wrong.status_code == 400 and "Wrong address or password" in wrong.text
    done = _login(client, "ed@example.org")
    assert done.status_code == 303 and done.headers["location"] == "/admin"
    cookie = done.headers["set-cookie"]
    assert cookie.startswith("nl_staff=") and "HttpOnly" in cookie and "Secure" in cookie
    assert "SameSite=lax" in cookie and "Path=/admin" in cookie and "Max-Age=43200" in cookie
    page = client.get("/admin")
    assert page.status_code == 200 and "ed@example.org (editor)" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert client.post("/admin/logout", data={}, follow_redirects=False).status_code == 403
    out = client.post(
        "/admin/logout", data={"csrf": _csrf(client, "/admin")}, follow_redirects=False
    )
    assert out.status_code == 303
    assert client.get("/admin", follow_redirects=False).status_code == 303


def test_login_refuses_without_csrf_and_never_redirects_off_site(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    _add(sessions, "ed@example.org", StaffRole.EDITOR)
    bare = client.post("/admin/login", data={"email": "ed@example.org", "password": PASSWORD})
    assert bare.status_code == 403
    for target in ("https://evil.example/admin", "//evil.example/", "/\\evil.example", "/archive"):
        answer = _login(client, "ed@example.org", next_=target)
        assert answer.headers["location"] == "/admin", target


def test_failed_logins_are_limited_per_account_and_per_address(
    settings: Settings, engine: object, sessions: sessionmaker[Session]
) -> None:
    limited = settings.model_copy(
        update={"web": settings.web.model_copy(update={"login_failures_per_hour": 3})}
    )
    _add(sessions, "ed@example.org", StaffRole.EDITOR)
    with TestClient(create_app(limited), base_url="https://testserver") as client:
        for _ in range(3):
            assert _login(client, "ed@example.org", "wrong password!").status_code == 400
        blocked = _login(client, "ed@example.org")  # even the right password, for the hour
        assert blocked.status_code == 429 and "Too many failed logins" in blocked.text
        assert _login(client, "other@example.org", "x").status_code == 429  # same address
        with time_machine.travel(utcnow() + timedelta(minutes=61)):
            assert _login(client, "ed@example.org").status_code == 303


def test_a_password_change_ends_the_console_session(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    _add(sessions, "ed@example.org", StaffRole.EDITOR)
    _login(client, "ed@example.org")
    assert client.get("/admin").status_code == 200
    with sessions.begin() as s:
        accounts.set_password(s, email="ed@example.org", password="changed elsewhere now")
    assert client.get("/admin", follow_redirects=False).status_code == 303
    _login(client, "ed@example.org", "changed elsewhere now")
    assert client.get("/admin").status_code == 200
    with sessions.begin() as s:
        accounts.remove(s, email="ed@example.org")
    assert client.get("/admin", follow_redirects=False).status_code == 303
