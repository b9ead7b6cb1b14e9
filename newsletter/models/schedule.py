"""The scheduler's tables: job run history, the single-runner lease, scheduled sends."""

from __future__ import annotations

import enum
from datetime import date, datetime

from sqlalchemy import (
    JSON,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from newsletter.errors import StateError
from newsletter.models.core import (
    Base,
    UTCDateTime,
    string_enum,
    utcnow,
)
from newsletter.models.tables import Edition  # noqa: F401  (the foreign keys' target)

# ----- scheduling: job run history, the single-runner lease, scheduled sends ------


class JobKind(enum.StrEnum):
    """What a scheduler job run does (``job_runs.kind``, and the stored jobs' argument)."""

    BUILD = "build"  # a newsletter's regular issue: fetch, build, check, schedule its send
    DISPATCH = "dispatch"  # the every-minute tick: start due sends, advance started ones
    SEND = "send"  # start one scheduled send
    WAVE = "wave"  # send the due waves of a started send
    RESUME = "resume"  # resume a send its provider's outage paused


class SendSource(enum.StrEnum):
    """Who asked for a scheduled send."""

    SCHEDULE = "schedule"  # the newsletter's own cron schedule
    AT = "at"  # staff, for a given time (``send --at``)
    REVIEW = "review"  # `newsletter run` with a review window: it goes out afterwards


class JobOutcome(enum.StrEnum):
    RUNNING = "running"
    OK = "ok"
    SKIPPED = "skipped"  # past its staleness deadline, or missed its run time
    HELD = "held"  # the edition is held for review (or failed its pre-send checks)
    FAILED = "failed"  # the job raised; ``error`` holds the traceback
    INTERRUPTED = "interrupted"  # its scheduler died mid-run


class ScheduledSendStatus(enum.StrEnum):
    PENDING = "pending"
    PAUSED = "paused"
    STARTED = "started"  # audience frozen; the dispatcher sends what is due
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"


SCHEDULED_SEND_TRANSITIONS: dict[ScheduledSendStatus, set[ScheduledSendStatus]] = {
    ScheduledSendStatus.PENDING: {
        ScheduledSendStatus.STARTED,
        ScheduledSendStatus.PAUSED,
        ScheduledSendStatus.SKIPPED,
        ScheduledSendStatus.FAILED,
        ScheduledSendStatus.CANCELLED,
    },
    ScheduledSendStatus.PAUSED: {ScheduledSendStatus.PENDING, ScheduledSendStatus.CANCELLED},
    ScheduledSendStatus.STARTED: {
        ScheduledSendStatus.DONE,
        ScheduledSendStatus.FAILED,
        ScheduledSendStatus.CANCELLED,
    },
    ScheduledSendStatus.DONE: set(),
    ScheduledSendStatus.SKIPPED: set(),
    ScheduledSendStatus.FAILED: set(),
    ScheduledSendStatus.CANCELLED: set(),
}


class JobRun(Base):
    """One run of a scheduler job: when, what came of it, counts, and any traceback."""

    __tablename__ = "job_runs"
    __table_args__ = (
        Index("ix_job_runs_job_scheduled", "job_id", "scheduled_for"),
        Index("ix_job_runs_started", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(100))
    kind: Mapped[JobKind] = mapped_column(string_enum(JobKind, 32))
    newsletter: Mapped[str | None] = mapped_column(String(64), nullable=True)
    edition_id: Mapped[int | None] = mapped_column(
        ForeignKey("editions.id", ondelete="SET NULL"), nullable=True
    )
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    outcome: Mapped[JobOutcome] = mapped_column(string_enum(JobOutcome), default=JobOutcome.RUNNING)
    holder: Mapped[str] = mapped_column(String(200), default="")
    counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    detail: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class SchedulerLease(Base):
    """The single-runner lock: only ``holder`` runs jobs until ``expires_at``."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ScheduledSend(Base):
    """A send the scheduler starts at ``send_at``: a regular issue or a staff one-off.

    ``edition_id`` is None for a one-off that builds the newsletter's edition when it
    fires. ``local_time`` (HH:MM) makes the send go out in per-timezone waves.
    """

    __tablename__ = "scheduled_sends"
    __table_args__ = (Index("ix_scheduled_sends_status_send_at", "status", "send_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    newsletter: Mapped[str] = mapped_column(String(64))
    edition_id: Mapped[int | None] = mapped_column(
        ForeignKey("editions.id", ondelete="CASCADE"), nullable=True
    )
    issue_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    source: Mapped[SendSource] = mapped_column(string_enum(SendSource))
    send_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    local_time: Mapped[str | None] = mapped_column(String(5), nullable=True)
    status: Mapped[ScheduledSendStatus] = mapped_column(
        string_enum(ScheduledSendStatus), default=ScheduledSendStatus.PENDING
    )
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


def transition_scheduled_send(send: ScheduledSend, new: ScheduledSendStatus) -> None:
    """Move a scheduled send to ``new``; StateError if the state machine forbids it."""
    if new not in SCHEDULED_SEND_TRANSITIONS[send.status]:
        raise StateError(
            f"scheduled send {send.id} is {send.status.value}; cannot become {new}",
            code=f"scheduled_send.{send.status.value}",
            send_id=send.id,
        )
    send.status = new


__all__ = [
    "JobKind",
    "SendSource",
    "JobOutcome",
    "ScheduledSendStatus",
    "SCHEDULED_SEND_TRANSITIONS",
    "JobRun",
    "SchedulerLease",
    "ScheduledSend",
    "transition_scheduled_send",
]
