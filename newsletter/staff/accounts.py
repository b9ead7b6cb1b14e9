"""Staff accounts: add, list, remove, change a password, log in, and console sessions.

Passwords are hashed with argon2 (argon2-cffi's defaults, rehashed when they
change). A failed login says the same whether the address is unknown or the
password wrong, and costs the same time. A console session is a timed token of
``staff id:session epoch``; changing a password raises the epoch, so every session
signed before it stops working, and a removed account's sessions stop at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from newsletter.audience.addresses import normalise_email
from newsletter.errors import InputError, NotFoundError, StateError
from newsletter.models import ApiToken, Staff, StaffRole, utcnow
from newsletter.tokens import make_timed_token, read_timed_token

#: Shortest password accepted (NIST SP 800-63B asks for at least 8; we ask a bit more).
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
_HASHER = PasswordHasher()
#: Verified against for an unknown address, so a miss costs what a hit does.
_DUMMY = _HASHER.hash("not a password anyone has")


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InputError(
            f"the password is too short: use at least {MIN_PASSWORD} characters",
            code="staff.weak_password",
        )
    if len(password) > MAX_PASSWORD:
        raise InputError("the password is too long", code="staff.weak_password")


def find(session: Session, email: str) -> Staff | None:
    """The account of ``email`` (any case), if there is one."""
    return session.scalars(select(Staff).where(Staff.email == email.strip().lower())).first()


def _require(session: Session, email: str) -> Staff:
    staff = find(session, email)
    if staff is None:
        raise NotFoundError(f"no staff account for {email}", code="staff.not_found", email=email)
    return staff


def add(session: Session, *, email: str, role: StaffRole, password: str) -> Staff:
    """A new account; InputError for a bad address or password, StateError if it exists."""
    address = normalise_email(email)
    _check_password(password)
    if find(session, address) is not None:
        raise StateError(f"{address} already has a staff account", code="staff.exists")
    staff = Staff(email=address, role=role, password_hash=_HASHER.hash(password))
    session.add(staff)
    session.flush()
    return staff


def list_staff(session: Session) -> Sequence[Staff]:
    """Every account, by address."""
    return session.scalars(select(Staff).order_by(Staff.email)).all()


def remove(session: Session, *, email: str) -> None:
    """Delete an account and its API tokens; its sessions stop working at once."""
    staff = _require(session, email)
    session.execute(delete(ApiToken).where(ApiToken.staff_id == staff.id))
    session.delete(staff)
    session.flush()


def set_password(session: Session, *, email: str, password: str) -> Staff:
    """Change a password; every session signed before now ends."""
    staff = _require(session, email)
    _check_password(password)
    staff.password_hash = _HASHER.hash(password)
    staff.session_epoch += 1
    staff.password_changed_at = utcnow()
    session.flush()
    return staff


def set_role(session: Session, *, email: str, role: StaffRole) -> Staff:
    """Give an account another role (it applies to its next request)."""
    staff = _require(session, email)
    staff.role = role
    session.flush()
    return staff


def authenticate(session: Session, *, email: str, password: str, now: datetime) -> Staff:
    """The account whose address and password these are; InputError
    (``staff.login_failed``, the same for an unknown address) otherwise."""
    staff = find(session, email)
    try:
        _HASHER.verify(staff.password_hash if staff else _DUMMY, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        staff = None
    if staff is None:
        raise InputError("wrong address or password", code="staff.login_failed")
    if _HASHER.check_needs_rehash(staff.password_hash):
        staff.password_hash = _HASHER.hash(password)
    staff.last_login_at = now
    session.flush()
    return staff


# ----- console sessions --------------------------------------------------------


def session_token(secret: str, staff: Staff) -> str:
    """The signed cookie value of a new console session for ``staff``."""
    return make_timed_token(
        secret, purpose="staff-session", value=f"{staff.id}:{staff.session_epoch}"
    )


def session_staff(session: Session, *, secret: str, token: str, max_age: int) -> Staff | None:
    """Whose session ``token`` is; None when it is forged, expired, from before a
    password change, or of an account that no longer exists."""
    try:
        value = read_timed_token(secret, token, purpose="staff-session", max_age=max_age)
    except InputError:
        return None
    staff_id, _, epoch = value.partition(":")
    if not staff_id.isdigit() or not epoch.isdigit():
        return None
    staff = session.get(Staff, int(staff_id))
    if staff is None or staff.session_epoch != int(epoch):
        return None
    return staff
