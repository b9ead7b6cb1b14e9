"""Who is sending: one row per runner process, its heartbeat, and the ones that died.

A claim names its runner (``deliveries.runner_id``), so when a runner dies with a
batch in the provider's hands, the next runner to start finds it at once instead
of waiting out the lease: on the same host a dead process id (or one reused by a
later process) gives it away; on any host, a heartbeat older than four beats.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from newsletter.models import Runner

#: A runner silent for this many heartbeats is taken for dead.
SILENT_BEATS = 4


def _boot_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell reused ids."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def runner_id(pid: int | None = None) -> str:
    """This process's runner id: host, process id and process start."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_boot_ticks(pid) or 0}"


def _alive(identity: str) -> bool | None:
    """Whether the runner ``identity`` still runs here (None: not on this host)."""
    host, _, rest = identity.partition(":")
    pid_text, _, ticks = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now_ticks = _boot_ticks(pid)
    return not (now_ticks is not None and ticks.isdigit() and int(ticks) not in (0, now_ticks))


def register(session: Session, *, now: datetime) -> str:
    """Record this process as a runner (again, if it already was); returns its id."""
    identity = runner_id()
    row = session.get(Runner, identity)
    if row is None:
        host, _, rest = identity.partition(":")
        session.add(
            Runner(
                id=identity,
                host=host,
                pid=int(rest.partition(":")[0]),
                started_at=now,
                heartbeat_at=now,
            )
        )
    else:
        row.heartbeat_at = now
    session.flush()
    return identity


def heartbeat(session: Session, *, identity: str, now: datetime) -> None:
    """Say this runner is alive."""
    session.execute(update(Runner).where(Runner.id == identity).values(heartbeat_at=now))


def unregister(session: Session, *, identity: str) -> None:
    """A runner that stops cleanly (its claims recorded) leaves the registry."""
    session.execute(delete(Runner).where(Runner.id == identity))


def gone(session: Session, *, now: datetime, heartbeat_seconds: float) -> list[str]:
    """Runners known to be dead: a dead process on this host, or silent too long.

    Their rows are removed as they are found; the ids are returned so the ledger
    can recover the claims they held.
    """
    silent = now - timedelta(seconds=heartbeat_seconds * SILENT_BEATS)
    dead: list[str] = []
    for identity, beat in session.execute(select(Runner.id, Runner.heartbeat_at)):
        alive = _alive(identity)
        if alive is False or (alive is None and beat < silent):
            dead.append(identity)
    if dead:
        session.execute(delete(Runner).where(Runner.id.in_(dead)))
    return dead
