"""`newsletter worker` (a Celery worker that runs sends) and `newsletter workers`
(which workers are alive, and what each is sending)."""

from __future__ import annotations

import os
from typing import Any

import click

from newsletter import db
from newsletter.cli.common import App, emit_rows, pass_app
from newsletter.config import Settings
from newsletter.delivery import queue
from newsletter.errors import ConfigError


def _celery_only(settings: Settings) -> None:
    if settings.queue.backend != "celery":
        raise ConfigError(
            'queue.backend is "inline": sends run in the process that starts them; '
            'set queue.backend = "celery" (and queue.broker_url) to use workers',
            code="config.queue_inline",
        )


@click.command("worker")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Sends this worker runs at once (1: in the worker's own process).",
)
@pass_app
def worker(app: App, concurrency: int) -> None:
    """Run a Celery worker that takes sends from the queue (queue.broker_url)."""
    from newsletter.workers.tasks import worker_app

    settings = app.settings
    _celery_only(settings)
    db.check_schema(app.engine)
    app.engine.dispose()  # the task makes its own engine in each worker process
    celery = worker_app(settings)
    queue.check_broker(celery, settings)
    click.echo(
        f"worker on {queue.safe_url(settings.queue.broker_url.get_secret_value())}, "
        f"queue {settings.queue.queue_name}, concurrency {concurrency} (Ctrl-C to stop)",
        err=True,
    )
    celery.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            # One send at a time runs in the worker itself: killing the worker kills
            # the send, and nothing is left running in an orphaned pool child.
            f"--pool={'solo' if concurrency == 1 else 'prefork'}",
            f"--queues={settings.queue.queue_name}",
            f"--hostname=newsletter-{os.getpid()}@%h",
            f"--loglevel={settings.service.log_level}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@click.command("workers")
@click.option("--timeout", type=click.FloatRange(0.1, 30), default=2.0, show_default=True)
@pass_app
def workers(app: App, timeout: float) -> None:
    """List the live workers and the editions each is sending (Celery's inspect)."""
    settings = app.settings
    _celery_only(settings)
    celery = queue.celery_app(settings)
    queue.check_broker(celery, settings)
    inspect = celery.control.inspect(timeout=timeout)
    stats = inspect.stats() or {}
    active = inspect.active() or {}
    waiting = inspect.reserved() or {}
    rows = []
    for name in sorted(set(stats) | set(active)):
        info: dict[str, Any] = dict(stats.get(name) or {})
        pool = info.get("pool", {}) if isinstance(info, dict) else {}
        running = [t for t in active.get(name, []) if t.get("name") == queue.SEND_TASK]
        editions = sorted({str(t.get("args", ["?"])[0]) for t in running})
        rows.append(
            {
                "worker": name,
                "pid": info.get("pid", ""),
                "slots": pool.get("max-concurrency", ""),
                "sending": ", ".join(editions) or "-",
                "reserved": len(waiting.get(name, [])),
            }
        )
    if not rows:
        click.echo(f"no worker answered within {timeout:g} s")
        raise click.exceptions.Exit(1)
    emit_rows(rows, ["worker", "pid", "slots", "sending", "reserved"], "table", title="workers")
