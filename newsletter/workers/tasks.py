"""The one task: run the send unit on an edition until nothing is left to claim.

A task holds no decision of its own. It joins the edition's send as one more runner
(:func:`newsletter.delivery.runner.send_edition`, never freezing anything: the
sender that queued it did), so the ledger's claims decide who sends whom, and a
duplicated or redelivered task only finds less to do. Celery acknowledges it when it
ends (``acks_late``): a worker killed mid-task leaves it to be delivered again, and
its claims are recovered as uncertain by the runners still alive.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from newsletter import db
from newsletter.config import Settings
from newsletter.delivery import log, pacing, queue, runner
from newsletter.delivery.providers import open_providers
from newsletter.errors import NewsletterError, ProviderConfigError, StateError
from newsletter.events.ingest import rejections

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

#: One engine per worker process (a forked pool child must not share its parent's).
_ENGINES: dict[int, tuple[Engine, sessionmaker[Session]]] = {}


def _sessions(settings: Settings) -> sessionmaker[Session]:
    pid = os.getpid()
    if pid not in _ENGINES:
        engine = db.open_engine(settings)
        _ENGINES[pid] = (engine, db.session_factory(engine))
    return _ENGINES[pid][1]


def run_send(app: Celery, settings: Settings, edition_id: int) -> dict[str, Any]:
    """The task's body: send what can be sent now and soon; queue a task for rows due
    later than ``queue.wait_seconds``; what it did, for the worker's log."""
    sessions = _sessions(settings)
    single = runner.one_process(settings)  # a worker is one process: run more workers
    try:
        with open_providers(single) as (provider, secondary):
            report = runner.send_edition(
                sessions,
                settings=single,
                edition_id=edition_id,
                provider=provider,
                secondary=secondary,
                fresh=False,
                horizon=settings.queue.wait_seconds,
            )
    except StateError as exc:  # held, paused or cancelled since it was queued
        logger.info("edition %s: nothing to send: %s", edition_id, exc)
        return {"edition": edition_id, "skipped": exc.code}
    except ProviderConfigError as exc:
        # This worker cannot send at all (a missing key, a refused login): stop the
        # send for everyone, with the reason, rather than leave its waiter hanging.
        with db.transaction(sessions) as session:
            pacing.halt(
                session,
                edition_id=edition_id,
                provider=settings.delivery.provider,
                reason=f"a worker on {socket.gethostname()} cannot send: {exc}",
            )
        return {"edition": edition_id, "error": exc.code}
    except NewsletterError as exc:
        logger.error("edition %s: the send stopped: %s", edition_id, exc)
        return {"edition": edition_id, "error": exc.code}
    if report.stopped == "interrupted":
        # SIGTERM or Ctrl-C reached the send's own handler, which stopped it after the
        # batch in flight: hand the edition back to the queue, then let Celery's own
        # (restored) handler hear it and shut the worker down instead of taking the
        # next task.
        queue.enqueue(app, settings, edition_id, copies=1)
        logger.warning("edition %s: stopped by a signal; queued again", edition_id)
        os.kill(os.getpid(), signal.SIGTERM)
        return {"edition": edition_id, "sent": report.sent, "stopped": report.stopped}
    if report.later is not None and not report.stopped:
        queue.enqueue(app, settings, edition_id, copies=1, eta=report.later)
        logger.info("edition %s: rows due at %s, queued for then", edition_id, report.later)
    with db.transaction(sessions) as session:
        if not log.has_open(session, edition_id=edition_id):
            rejections(session, settings=settings, edition_id=edition_id)
    return {
        "edition": edition_id,
        "sent": report.sent,
        "failed": report.failed,
        "uncertain": report.uncertain,
        "stopped": report.stopped,
    }


def worker_app(settings: Settings) -> Celery:
    """The Celery app of ``newsletter worker``: the queue's, with the task on it."""
    app = queue.celery_app(settings)

    @app.task(name=queue.SEND_TASK)
    def send_edition(edition_id: int) -> dict[str, Any]:
        return run_send(app, settings, int(edition_id))

    return app
