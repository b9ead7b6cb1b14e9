"""Rate limits for the web forms, counted in the database so every web node shares them.

The counting is the ``limits`` package's (a fixed window per key); this is its
storage, on the project's own table (``rate_limits``): nothing lives in a process's
memory that another node would need. One statement per hit (an upsert that
starts a new window when the old one has expired), so two nodes never both pass
the last free slot.
"""

from __future__ import annotations

from datetime import timedelta

from limits import RateLimitItemPerHour
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy import case, delete, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from newsletter.db import transaction
from newsletter.models import RateLimit, utcnow


class DatabaseStorage(Storage):
    """A ``limits`` storage on the ``rate_limits`` table."""

    STORAGE_SCHEME = ["newsletter+db"]

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__()
        self.sessions = sessions

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return SQLAlchemyError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = utcnow()
        until = now + timedelta(seconds=expiry)
        with transaction(self.sessions) as session:
            dialect = session.get_bind().dialect.name
            make = postgresql.insert if dialect == "postgresql" else sqlite.insert
            insert = make(RateLimit).values(key=key, count=amount, expires_at=until)
            live = RateLimit.expires_at > literal(now, RateLimit.expires_at.type)
            stmt = insert.on_conflict_do_update(
                index_elements=[RateLimit.key],
                set_={
                    "count": case((live, RateLimit.count + amount), else_=amount),
                    "expires_at": case((live, RateLimit.expires_at), else_=until),
                },
            ).returning(RateLimit.count)
            return int(session.execute(stmt).scalar_one())

    def get(self, key: str) -> int:
        with self.sessions() as session:
            row = session.get(RateLimit, key)
            return row.count if row is not None and row.expires_at > utcnow() else 0

    def get_expiry(self, key: str) -> float:
        with self.sessions() as session:
            row = session.get(RateLimit, key)
            return row.expires_at.timestamp() if row is not None else utcnow().timestamp()

    def check(self) -> bool:
        with self.sessions() as session:
            session.execute(select(1))
        return True

    def reset(self) -> int | None:
        with transaction(self.sessions) as session:
            return int(session.connection().execute(delete(RateLimit)).rowcount or 0)

    def clear(self, key: str) -> None:
        with transaction(self.sessions) as session:
            session.execute(delete(RateLimit).where(RateLimit.key == key))

    def sweep(self) -> int:
        """Delete expired windows (they are restarted in place anyway)."""
        with transaction(self.sessions) as session:
            stmt = delete(RateLimit).where(RateLimit.expires_at <= utcnow())
            return int(session.connection().execute(stmt).rowcount or 0)


class Limits:
    """The web's limits: sign-ups per client address per hour, failed staff logins
    per address and per account, single-use proofs."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        signups_per_hour: int,
        login_failures_per_hour: int = 10,
    ) -> None:
        self.storage = DatabaseStorage(sessions)
        self.limiter = FixedWindowRateLimiter(self.storage)
        self.signups = RateLimitItemPerHour(signups_per_hour)
        self.logins = RateLimitItemPerHour(login_failures_per_hour)

    def login_allowed(self, client: str, account: str) -> bool:
        """Whether a login may be tried: neither this client address nor this account
        has used up its failed attempts for the hour."""
        return bool(
            self.limiter.test(self.logins, "login-ip", client)
            and self.limiter.test(self.logins, "login-account", account.strip().lower())
        )

    def login_failed(self, client: str, account: str) -> None:
        """Count a failed login against the client address and the account."""
        self.limiter.hit(self.logins, "login-ip", client)
        self.limiter.hit(self.logins, "login-account", account.strip().lower())

    def signup(self, client: str) -> bool:
        """Count a sign-up from ``client``; False when it is over the hourly limit."""
        return bool(self.limiter.hit(self.signups, "signup", client))

    def first_use(self, proof: str, *, seconds: int) -> bool:
        """True the first time ``proof`` (a solved challenge) is seen within ``seconds``."""
        return self.storage.incr(f"proof/{proof}", seconds) == 1
