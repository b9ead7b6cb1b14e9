"""Sends on Celery workers: real `newsletter worker` processes on PostgreSQL, with Redis
and with RabbitMQ as the broker, delivering to the recording/fault SendGrid server.

A worker SIGKILLed mid-send, the broker restarted mid-send, a worker started late,
two `send` commands for one edition at once: every time the edition completes,
nobody is lost, and copies exist only for a batch that was in flight at a kill
(marked uncertain, then resent). These tests skip with the reason when PostgreSQL or
a broker does not answer; under ``CI=true`` they fail instead (CI starts them).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import db
from newsletter.config import Settings, load_settings
from newsletter.content import editions
from newsletter.delivery import queue
from newsletter.delivery.providers.files import OutboxProvider
from newsletter.errors import QueueError
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Edition,
    SendSource,
    StaffRole,
    utcnow,
)
from newsletter.schedule import records
from newsletter.staff import api_tokens
from newsletter.web.app import create_app
from tests import factories
from tests.conftest import PG_ENV, _reset_postgres, write_config
from tests.sendgrid_server import SendGridServer
from tests.waiting import wait_until

READERS = 3000
BATCH = 50
REDIS = ("127.0.0.1", 6379)
RABBITMQ = ("127.0.0.1", 5672)
BROKERS = {
    "redis": ("redis://127.0.0.1:6379/11", REDIS),
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672//", RABBITMQ),
}


def _answers(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def _need(what: str, ok: bool) -> None:
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the worker tests: {what}")
    pytest.skip(what)


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get(PG_ENV)
    _need(f"the worker tests need PostgreSQL ({PG_ENV})", bool(url))
    assert url is not None
    _reset_postgres(url)
    return url


def _broker(kind: str) -> str:
    url, address = BROKERS[kind]
    _need(f"the worker tests need {kind} on {address[0]}:{address[1]}", _answers(address))
    return url


class Cluster:
    """A config on PostgreSQL and a broker, its edition, and its worker processes."""

    def __init__(self, root: Path, pg_url: str, broker_url: str, server: SendGridServer) -> None:
        self.root, self.server = root, server
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.broker_url = broker_url
        self.config = write_config(root / "config.toml", pg_url)
        text = self.config.read_text().replace(
            '[delivery]\nprovider = "outbox"',
            f'[delivery]\nprovider = "sendgrid"\nbatch_size = {BATCH}\n'
            'uncertain = "resend"\nretry_base_seconds = 0.1\nheartbeat_seconds = 1',
        )
        text += (
            f'\n[delivery.sendgrid]\napi_base_url = "{server.url}"\ntimeout_seconds = 5\n'
            f'\n[queue]\nbackend = "celery"\nqueue_name = "nl-test-{uuid.uuid4().hex[:10]}"\n'
            "tasks_per_send = 4\nwait_seconds = 30\n"
        )
        self.config.write_text(text)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")},
            "NEWSLETTER_CONFIG": str(self.config),
            "NEWSLETTER_SENDGRID_API_KEY": server.api_key,
            "NEWSLETTER_QUEUE__BROKER_URL": broker_url,
        }
        self.settings = load_settings(self.config)
        self.engine = db.make_engine(self.settings.database_url)
        db.upgrade(self.engine)
        self.sessions: sessionmaker[Session] = db.session_factory(self.engine)

    def edition(self, readers: int = READERS, *, day: date | None = None) -> int:
        """An edition of a new story, to ``readers`` more subscribers (0: the same)."""
        with self.sessions.begin() as s:
            if readers:
                factories.subscribers(s, readers)
            factories.story(s)
            built = editions.build_edition(
                s, settings=self.settings, slug="daily-briefing", issue_date=day
            )
            return built[0].id

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "newsletter", *args]

    def worker(self, name: str, *, without: str = "") -> subprocess.Popen[bytes]:
        """Start `newsletter worker` (``without`` one variable of the environment);
        returns once it says it is ready."""
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                self.command("worker"),
                env={k: v for k, v in self.env.items() if k != without},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            return " ready." in log.read_text()

        wait_until(ready, timeout=30, what=f"worker {name} ready")
        return proc

    def sent_by(self, name: str) -> int:
        """Recipients the worker's runs say they sent (a run logs it as it ends, just
        after its last batch is in the ledger: see :meth:`wait_sent`)."""
        text = (self.root / f"{name}.log").read_text()
        return sum(int(n) for n in re.findall(r"edition \d+: sent (\d+),", text))

    def wait_sent(self, names: tuple[str, ...], condition: Callable[[int], bool]) -> None:
        """Wait until the runs of these workers have logged a total that satisfies it."""

        def logged() -> bool:
            return condition(sum(self.sent_by(n) for n in names))

        wait_until(logged, timeout=30, what=f"the runs of {', '.join(names)} to log")

    def send(self, edition_id: int, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command("send", "--edition", str(edition_id)),
            env={**self.env, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for_attempts(self, n: int, proc: subprocess.Popen[str]) -> None:
        def reached() -> bool:
            assert proc.poll() is None, proc.communicate()
            return int(self.server.stats()["attempts"]) >= n

        wait_until(reached, timeout=60, what=f"{n} provider requests")

    def ledger(self) -> dict[DeliveryStatus, int]:
        with self.sessions() as s:
            rows = s.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
            return {status: int(n) for status, n in rows}

    def attempts(self) -> dict[int, int]:
        with self.sessions() as s:
            return {i: n for i, n in s.execute(select(Delivery.id, Delivery.attempts))}

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.engine.dispose()


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[Callable[[str], Cluster]]:
    made: list[Cluster] = []
    with SendGridServer() as server:
        # Every request takes a moment, so a kill or a restart lands mid-send.
        server.script(["slowok:0.04"] * 100_000)

        def make(broker_url: str) -> Cluster:
            c = Cluster(tmp_path, pg_url, broker_url, server)
            made.append(c)
            return c

        try:
            yield make
        finally:
            for c in made:
                c.close()


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


def _copies(server: SendGridServer) -> Counter[int]:
    return Counter({int(k): v for k, v in server.stats()["by_delivery"].items()})


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_a_worker_killed_mid_send_loses_nobody(
    cluster: Callable[[str], Cluster], kind: str
) -> None:
    c = cluster(_broker(kind))
    edition_id = c.edition()
    c.worker("w1")
    c.worker("w2")
    sending = c.send(edition_id)
    c.wait_for_attempts(12, sending)
    c.procs["w1"].send_signal(signal.SIGKILL)
    c.procs["w1"].wait()
    code, out, err = _finish(sending)

    assert code == 0, out + err  # resent: everyone has it
    assert "sent in total" in out and f"{READERS}" in out
    assert c.ledger() == {DeliveryStatus.SENT: READERS}
    copies, attempts = _copies(c.server), c.attempts()
    assert len(copies) == READERS and all(n >= 1 for n in copies.values())
    twice = [d for d, n in copies.items() if n > 1]
    # Only the batch the killed worker had in flight was uncertain, and only it resent:
    # its provider call was answered, but the worker died before recording it.
    assert len(twice) <= BATCH
    assert all(copies[d] == 2 and attempts[d] == 1 for d in twice)
    c.wait_sent(("w2",), lambda n: n > 0)


@pytest.mark.slow
def test_a_worker_stopped_with_sigterm_finishes_its_batch_and_hands_the_send_back(
    cluster: Callable[[str], Cluster],
) -> None:
    """What systemd's stop does: the worker ends after its batch in flight (nobody
    uncertain) instead of taking the next task; a worker started later finishes."""
    c = cluster(_broker("redis"))
    edition_id = c.edition()
    c.worker("w1")
    sending = c.send(edition_id)
    c.wait_for_attempts(8, sending)
    c.procs["w1"].send_signal(signal.SIGTERM)
    assert c.procs["w1"].wait(timeout=30) == 0
    counts = c.ledger()
    assert (
        counts.get(DeliveryStatus.UNCERTAIN, 0) == 0 and counts.get(DeliveryStatus.SENDING, 0) == 0
    )
    assert 0 < counts.get(DeliveryStatus.SENT, 0) < READERS
    c.worker("w2")
    code, out, err = _finish(sending)
    assert code == 0, out + err
    assert c.ledger() == {DeliveryStatus.SENT: READERS}
    assert max(_copies(c.server).values()) == 1


@pytest.mark.slow
def test_the_broker_restarted_mid_send_and_a_late_worker(
    cluster: Callable[[str], Cluster], tmp_path: Path
) -> None:
    """Our own Redis (persistent, as a production broker is), stopped and started
    again mid-send; a second worker started after that takes a queued task and a
    share; both answer `newsletter workers` afterwards."""
    binary = shutil.which("redis-server")
    _need("the broker-restart test needs redis-server", binary is not None)
    assert binary is not None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    @contextmanager
    def redis() -> Iterator[subprocess.Popen[bytes]]:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: _answers(("127.0.0.1", port)), timeout=10, what="redis")
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    with redis():
        c = cluster(f"redis://127.0.0.1:{port}/0")
        edition_id = c.edition()
        c.worker("w1")
        sending = c.send(edition_id)
        c.wait_for_attempts(8, sending)
    # The broker is gone: the send in hand goes on; then it comes back.
    time.sleep(0.5)
    with redis():
        c.worker("w2")
        code, out, err = _finish(sending)
        listing = subprocess.run(
            c.command("workers"), env=c.env, capture_output=True, text=True, timeout=60
        )

    assert code == 0, out + err
    assert c.ledger() == {DeliveryStatus.SENT: READERS}
    copies = _copies(c.server)
    assert len(copies) == READERS and max(copies.values()) == 1  # nobody was killed
    c.wait_sent(("w2",), lambda n: n > 0)  # the late worker took a share
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert listing.stdout.count("newsletter-") == 2


@pytest.mark.slow
def test_two_sends_of_one_edition_at_once_reach_everyone_once(
    cluster: Callable[[str], Cluster],
) -> None:
    c = cluster(_broker("redis"))
    edition_id = c.edition(1000)
    c.worker("w1")
    c.worker("w2")
    first, second = c.send(edition_id), c.send(edition_id)
    results = [_finish(first), _finish(second)]

    assert [code for code, _, _ in results] == [0, 0], results
    assert c.ledger() == {DeliveryStatus.SENT: 1000}
    copies = _copies(c.server)
    assert len(copies) == 1000 and max(copies.values()) == 1
    # Both print the same whole-edition figures an inline send prints.
    for _, out, _ in results:
        assert re.search(r"sent in total\s*│\s*1000", out), out


@pytest.mark.slow
def test_a_send_through_the_workers_reports_what_an_inline_send_reports(
    cluster: Callable[[str], Cluster],
) -> None:
    c = cluster(_broker("redis"))
    inline = c.edition(500)
    queued = c.edition(0, day=date.today() + timedelta(days=1))
    c.worker("w1")
    c.worker("w2")
    results = [
        _finish(c.send(inline, NEWSLETTER_QUEUE__BACKEND="inline")),
        _finish(c.send(queued)),
    ]

    def table(out: str, edition_id: int) -> str:
        start = out.index(f"edition {edition_id} (daily-briefing)")
        lines = out[start:].splitlines()
        return "\n".join(lines[1:]).split(f"edition {edition_id} delivered in")[0]

    assert [code for code, _, _ in results] == [0, 0], results
    assert table(results[0][1], inline) == table(results[1][1], queued)
    assert "│ 500" in table(results[1][1], queued)
    c.wait_sent(("w1", "w2"), lambda n: n == 500)  # the workers sent the second one


@pytest.mark.slow
def test_the_api_sends_through_the_workers(
    cluster: Callable[[str], Cluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`POST /api/v1/editions/N/send` (the console's "send now" is the same service)
    freezes and queues; a worker sends; the edition's figures say so on any node."""
    c = cluster(_broker("redis"))
    edition_id = c.edition(300)
    c.worker("w1")
    for key, value in c.env.items():
        if key.startswith("NEWSLETTER_"):
            monkeypatch.setenv(key, value)
    settings = load_settings(c.config)
    with c.sessions.begin() as s:
        _, token = api_tokens.create(s, name="cms", role=StaffRole.EDITOR)
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings)) as node_a, TestClient(create_app(settings)) as node_b:
        started = node_a.post(f"/api/v1/editions/{edition_id}/send", headers=auth)
        assert started.status_code == 202, started.text
        assert started.json()["audience"] == 300

        def sent() -> bool:
            figures = node_b.get(f"/api/v1/editions/{edition_id}", headers=auth).json()
            return bool(figures["status"] == "sent" and figures["sent"] == 300)

        wait_until(sent, timeout=60, what="the edition sent by the worker")
    c.wait_sent(("w1",), lambda n: n == 300)
    assert max(_copies(c.server).values()) == 1


@pytest.mark.slow
def test_the_scheduler_queues_a_due_send_for_the_workers(
    cluster: Callable[[str], Cluster],
) -> None:
    """`newsletter scheduler --once` starts the due send by queueing it, and is done;
    the worker sends it."""
    c = cluster(_broker("redis"))
    edition_id = c.edition(400)
    with c.sessions.begin() as s:
        records.schedule_send(
            s,
            newsletter="daily-briefing",
            send_at=utcnow() - timedelta(seconds=1),
            source=SendSource.AT,
            edition_id=edition_id,
        )
    c.worker("w1")
    ticked = subprocess.run(
        c.command("scheduler", "--once"),
        env=c.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ticked.returncode == 0, ticked.stdout + ticked.stderr
    assert "queued for the workers" in ticked.stderr
    c.wait_sent(("w1",), lambda n: n == 400)
    assert c.ledger() == {DeliveryStatus.SENT: 400}


def test_a_send_with_no_worker_says_so_and_goes_when_one_starts(
    cluster: Callable[[str], Cluster],
) -> None:
    c = cluster(_broker("redis"))
    edition_id = c.edition(50)
    sending = c.send(edition_id)
    time.sleep(2.5)  # queued; nobody takes it
    assert sending.poll() is None and c.ledger() == {DeliveryStatus.QUEUED: 50}
    c.worker("w1")
    code, out, err = _finish(sending)
    assert code == 0, out + err
    assert "no worker answered" in err
    assert c.ledger() == {DeliveryStatus.SENT: 50}


def test_a_worker_that_cannot_send_stops_the_send_with_its_reason(
    cluster: Callable[[str], Cluster],
) -> None:
    """A worker whose machine lacks the provider's key: the waiting `send` ends with
    that reason (exit 1) instead of waiting forever; nobody is failed or lost."""
    c = cluster(_broker("redis"))
    edition_id = c.edition(30)
    c.worker("w1", without="NEWSLETTER_SENDGRID_API_KEY")
    code, out, err = _finish(c.send(edition_id), timeout=60)
    assert code == 1, out + err
    assert "cannot send" in out and "NEWSLETTER_SENDGRID_API_KEY" in out
    assert c.ledger() == {DeliveryStatus.QUEUED: 30}
    c.procs["w1"].kill()
    c.worker("w2")  # fixed: a new send command clears the stop
    code, out, err = _finish(c.send(edition_id))
    assert code == 0, out + err
    assert c.ledger() == {DeliveryStatus.SENT: 30}


def test_a_tick_while_workers_hold_batches_queues_nothing_more(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """The scheduler's dispatcher asks every minute; while a worker holds a batch of
    the edition the answer is "on it", without touching the broker (none listens)."""
    celery = settings.model_copy(
        update={
            "queue": settings.queue.model_copy(
                update={"backend": "celery", "broker_url": SecretStr("redis://127.0.0.1:9/0")}
            )
        }
    )
    now = utcnow()
    with sessions.begin() as s:
        edition = Edition(
            newsletter="daily-briefing", issue_date=now.date(), subject="Hi", status="sending"
        )
        s.add(edition)
        s.flush()
        s.add(
            Delivery(
                edition_id=edition.id,
                email="held@example.org",
                name="",
                subscriber_key="k" * 32,
                status=DeliveryStatus.SENDING,
                lease_expires_at=now + timedelta(minutes=5),
            )
        )
        edition_id = edition.id
    report = queue.send(
        sessions,
        settings=celery,
        edition_id=edition_id,
        provider=OutboxProvider(settings.outbox_path),
        wait=False,
    )
    assert report.counts[DeliveryStatus.SENDING] == 1 and report.newly_queued == 0
    with pytest.raises(QueueError, match="does not answer"):  # with nobody on it: the broker
        queue.send(
            sessions,
            settings=celery,
            edition_id=edition_id,
            provider=OutboxProvider(settings.outbox_path),
            wait=False,
            clock=lambda: now + timedelta(minutes=10),
        )


def test_celery_on_sqlite_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.toml", f"sqlite:///{tmp_path / 'n.db'}")
    cfg.write_text(cfg.read_text() + '\n[queue]\nbackend = "celery"\n')
    done = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(cfg), "send", "--edition", "1"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert done.returncode == 2
    assert "needs PostgreSQL" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_worker_on_the_inline_backend_says_how_to_switch(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.toml", f"sqlite:///{tmp_path / 'n.db'}")
    done = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(cfg), "worker"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert done.returncode == 2
    assert 'queue.backend = "celery"' in done.stderr and "Traceback" not in done.stderr


def test_a_broker_that_does_not_answer_freezes_nothing_and_keeps_its_password(
    tmp_path: Path, pg_url: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    with SendGridServer() as server:
        c = Cluster(tmp_path, pg_url, f"redis://:hunter2-broker-secret@127.0.0.1:{port}/0", server)
        try:
            edition_id = c.edition(10)
            code, out, err = _finish(c.send(edition_id))
            assert code != 0
            assert "does not answer" in err and f"127.0.0.1:{port}" in err
            assert "hunter2-broker-secret" not in out + err
            assert c.ledger() == {}  # nobody was frozen into the ledger
        finally:
            c.close()
