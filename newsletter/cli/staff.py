"""`newsletter staff`: console accounts and API tokens.

A password is read from a hidden prompt (asked twice) or, when stdin is not a
terminal, from its first line; never from an argument, which would sit in the
shell's history and the process list. An API token is printed once, when created.
"""

from __future__ import annotations

import sys

import click

from newsletter.cli.common import App, Group, emit_rows, format_option, pass_app
from newsletter.models import StaffRole
from newsletter.staff import accounts, api_tokens

ROLES = click.Choice([r.value for r in StaffRole])


@click.group("staff", cls=Group)
def group() -> None:
    """Console accounts (admin, editor, operator) and API tokens."""


def _password() -> str:
    if sys.stdin.isatty():
        return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise click.UsageError("no password on stdin (give it as its first line)")
    return line


@group.command("add")
@click.argument("email")
@click.option("--role", type=ROLES, required=True, help="What they may do.")
@pass_app
def add(app: App, email: str, role: str) -> None:
    """Give EMAIL a console account (the password is asked for)."""
    password = _password()
    with app.transaction() as session:
        staff = accounts.add(session, email=email, role=StaffRole(role), password=password)
        click.echo(f"added {staff.email} ({staff.role.value})")


@group.command("list")
@format_option()
@pass_app
def list_(app: App, fmt: str) -> None:
    """Every console account."""
    with app.transaction() as session:
        rows = [
            {
                "email": s.email,
                "role": s.role.value,
                "created_at": s.created_at,
                "last_login_at": s.last_login_at,
            }
            for s in accounts.list_staff(session)
        ]
    emit_rows(rows, ("email", "role", "created_at", "last_login_at"), fmt)


@group.command("remove")
@click.argument("email")
@pass_app
def remove(app: App, email: str) -> None:
    """Delete EMAIL's account and tokens; their sessions end at once."""
    with app.transaction() as session:
        accounts.remove(session, email=email)
    click.echo(f"removed {email}")


@group.command("password")
@click.argument("email")
@pass_app
def password(app: App, email: str) -> None:
    """Set EMAIL's password (asked for); their other sessions end."""
    new = _password()
    with app.transaction() as session:
        accounts.set_password(session, email=email, password=new)
    click.echo(f"password changed for {email}; their sessions have ended")


@group.command("role")
@click.argument("email")
@click.option("--role", type=ROLES, required=True)
@pass_app
def role(app: App, email: str, role: str) -> None:
    """Give EMAIL another role."""
    with app.transaction() as session:
        accounts.set_role(session, email=email, role=StaffRole(role))
    click.echo(f"{email} is now {role}")


@group.group("token", cls=Group)
def token() -> None:
    """Bearer tokens for the JSON API."""


@token.command("create")
@click.option("--name", required=True, help="What it is for (unique), e.g. 'cms-sync'.")
@click.option("--role", type=ROLES, required=True)
@click.option("--owner", default=None, help="A staff address: the token ends with the account.")
@pass_app
def token_create(app: App, name: str, role: str, owner: str | None) -> None:
    """Create a token and print it (once: only its hash is kept)."""
    with app.transaction() as session:
        staff_id = None
        if owner is not None:
            found = accounts.find(session, owner)
            if found is None:
                raise click.BadParameter(f"no staff account for {owner}", param_hint="--owner")
            staff_id = found.id
        _, secret = api_tokens.create(session, name=name, role=StaffRole(role), staff_id=staff_id)
    click.echo(secret)
    click.echo(f"token {name!r} ({role}) created; it is shown only now", err=True)


@token.command("list")
@format_option()
@pass_app
def token_list(app: App, fmt: str) -> None:
    """Every token (its first characters, never the token)."""
    with app.transaction() as session:
        rows = [
            {
                "name": t.name,
                "role": t.role.value,
                "prefix": t.prefix + "…",
                "created_at": t.created_at,
                "last_used_at": t.last_used_at,
                "revoked_at": t.revoked_at,
            }
            for t in api_tokens.list_tokens(session)
        ]
    emit_rows(rows, ("name", "role", "prefix", "created_at", "last_used_at", "revoked_at"), fmt)


@token.command("revoke")
@click.argument("name")
@pass_app
def token_revoke(app: App, name: str) -> None:
    """Revoke the token NAME; it stops working at once."""
    with app.transaction() as session:
        api_tokens.revoke(session, name=name)
    click.echo(f"revoked {name!r}")
