"""Honest delivery against a SendGrid-compatible server that injects faults.

The ledger says only what the provider did: a lost answer is ``uncertain`` (never
resent with ``uncertain = "skip"``, never ``failed``); transient faults are retried
until everyone is sent once; a provider that cannot work stops the send before
anything is frozen; a provider that goes away pauses the send, and a resume (by
staff or by the scheduler) finishes it. SQLite and PostgreSQL.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions
from newsletter.delivery import runner
from newsletter.delivery.providers.base import Provider
from newsletter.delivery.providers.sendgrid import SendGridProvider
from newsletter.delivery.types import Outcome, PreparedEdition, Recipient
from newsletter.models import Delivery, DeliveryStatus, Edition, EditionStatus, JobRun
from newsletter.schedule import jobs, records
from tests import factories
from tests.conftest import CliRun
from tests.factories import FakeClock
from tests.sendgrid_server import SendGridServer
from tests.waiting import wait_until


@pytest.fixture
def server() -> Iterator[SendGridServer]:
    with SendGridServer() as s:
        yield s


def _settings(settings: Settings, url: str, key: str, **delivery: Any) -> Settings:
    conf = settings.delivery.sendgrid.model_copy(
        update={"api_base_url": url, "timeout_seconds": 0.5}
    )
    return settings.model_copy(
        update={
            "sendgrid_api_key": SecretStr(key),
            "delivery": settings.delivery.model_copy(
                update={"provider": "sendgrid", "sendgrid": conf, **delivery}
            ),
        }
    )


def _edition(sessions: sessionmaker[Session], settings: Settings, readers: int) -> int:
    with sessions.begin() as s:
        factories.subscribers(s, readers)
        factories.story(s)
        return editions.build_edition(s, settings=settings, slug="daily-briefing")[0].id


def _statuses(sessions: sessionmaker[Session], eid: int) -> dict[int, DeliveryStatus]:
    with sessions() as s:
        return dict(
            s.execute(select(Delivery.id, Delivery.status).where(Delivery.edition_id == eid)).all()
        )


def _send(sessions: sessionmaker[Session], conf: Settings, eid: int) -> runner.SendReport:
    clock = FakeClock()
    return runner.send_edition(
        sessions,
        settings=conf,
        edition_id=eid,
        provider=SendGridProvider.from_settings(conf),
        clock=clock,
        sleep=clock.sleep,
    )


def test_lost_answers_are_uncertain_and_never_sent_twice(
    sessions: sessionmaker[Session], settings: Settings, server: SendGridServer
) -> None:
    # 20% of requests are accepted but answered after the client gave up, or not at all.
    conf = _settings(settings, server.url, server.api_key, batch_size=10)
    eid = _edition(sessions, conf, readers=300)
    server.faults(0.2, ["slowok:0.8", "acceptdrop"], seed=3)
    report = _send(sessions, conf, eid)
    wait_until(server.idle, what="the slow accepts to land")
    status = _statuses(sessions, eid)
    copies = server.stats()["by_delivery"]
    uncertain = {i for i, st in status.items() if st is DeliveryStatus.UNCERTAIN}
    assert uncertain, "the faults should have left some batches uncertain"
    assert set(status.values()) == {DeliveryStatus.SENT, DeliveryStatus.UNCERTAIN}
    assert server.stats()["duplicates"] == 0  # with uncertain = "skip", never twice
    assert all(copies[str(i)] == 1 for i, st in status.items() if st is DeliveryStatus.SENT)
    # every accepted-but-unanswered row is uncertain, never failed
    assert {int(i) for i in copies} - {i for i, st in status.items() if st.value == "sent"} <= (
        uncertain
    )
    assert report.counts[DeliveryStatus.UNCERTAIN] == len(uncertain) and not report.ok


def test_thirty_percent_transient_faults_cost_nobody_their_briefing(
    sessions: sessionmaker[Session], settings: Settings, server: SendGridServer
) -> None:
    conf = _settings(settings, server.url, server.api_key, batch_size=50)
    eid = _edition(sessions, conf, readers=2000)
    server.faults(0.3, ["429:0", "500", "503"], seed=11)
    report = _send(sessions, conf, eid)
    assert report.ok and report.counts[DeliveryStatus.SENT] == 2000
    stats = server.stats()
    assert stats["duplicates"] == 0 and len(stats["by_delivery"]) == 2000
    assert stats["attempts"] > stats["requests"] >= 40  # faults happened, and were retried
    with sessions() as s:
        most = s.scalar(select(func.max(Delivery.attempts)).where(Delivery.edition_id == eid))
    assert most is not None and most > 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("fault", ["closed-port", "wrong-key", "no-scope", "unconfigured"])
def test_a_provider_that_cannot_work_stops_before_anything_is_frozen(
    run_cli: CliRun,
    sessions: sessionmaker[Session],
    settings: Settings,
    server: SendGridServer,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    with sessions.begin() as s:
        factories.subscribers(s, 5)
        factories.story(s)
    url = f"http://127.0.0.1:{_closed_port()}" if fault == "closed-port" else server.url
    monkeypatch.setenv("NEWSLETTER_DELIVERY__PROVIDER", "sendgrid")
    monkeypatch.setenv("NEWSLETTER_DELIVERY__SENDGRID__API_BASE_URL", url)
    if fault != "unconfigured":
        key = "SG.wrong-key-1234567890" if fault == "wrong-key" else server.api_key
        monkeypatch.setenv("NEWSLETTER_SENDGRID_API_KEY", key)
    if fault == "no-scope":
        server.scopes = ["user.profile.read"]
    for args in (
        ("send", "--newsletter", "daily-briefing"),
        ("run", "--newsletter", "daily-briefing"),
    ):
        result = run_cli(*args, expect=2)
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1, result.output
    assert "SG.wrong-key" not in result.output
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
        assert s.scalar(select(func.count()).select_from(Edition)) == 0  # not even built
    assert server.stats()["attempts"] == 0


class _GoesAway:
    """The real SendGrid provider, whose server is switched off after ``batches`` calls."""

    def __init__(self, provider: SendGridProvider, server: SendGridServer, batches: int) -> None:
        self.provider, self.server, self.batches = provider, server, batches
        self.name, self.max_batch, self.idempotent = "sendgrid", provider.max_batch, False

    def check(self) -> None:
        self.provider.check()

    def send_batch(
        self, edition: PreparedEdition, recipients: Sequence[Recipient]
    ) -> list[Outcome]:
        if self.batches == 0:
            self.server.stop()  # from now on: connection refused
        self.batches -= 1
        return self.provider.send_batch(edition, recipients)

    def send_single(self, message: PreparedEdition, recipient: Recipient) -> Outcome:
        return self.provider.send_single(message, recipient)

    def close(self) -> None:
        self.provider.close()


def test_a_provider_that_goes_away_pauses_and_a_resume_finishes(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    first = SendGridServer().start()
    port = first.port
    conf = _settings(settings, first.url, first.api_key, batch_size=10, outage_seconds=60)
    eid = _edition(sessions, conf, readers=60)
    clock = FakeClock()
    provider = _GoesAway(SendGridProvider.from_settings(conf), first, batches=2)
    report = runner.send_edition(
        sessions, settings=conf, edition_id=eid, provider=provider, clock=clock, sleep=clock.sleep
    )
    assert report.outage and not report.ok and report.stopped
    assert "failed every batch for 60 s" in report.stopped
    status = _statuses(sessions, eid)
    assert DeliveryStatus.FAILED not in status.values()  # nobody failed: they wait
    assert list(status.values()).count(DeliveryStatus.SENT) == 20
    with sessions() as s:
        edition = s.get_one(Edition, eid)
        assert edition.status is EditionStatus.PAUSED
        assert edition.status_reason and edition.status_reason.startswith("outage: ")
    # A send command refuses a paused edition; the scheduler resumes it by itself
    # on a tick after the provider answers again (here: the same port, a new server).
    rt = records.Runtime(settings=conf, sessions=sessions, clock=clock, providers=_opener(conf))
    jobs.dispatch(rt)  # still down: stays paused
    with sessions() as s:
        assert s.get_one(Edition, eid).status is EditionStatus.PAUSED
        runs = s.scalars(select(JobRun).where(JobRun.kind == "resume")).all()
        assert runs and "still down" in runs[-1].detail
    with SendGridServer(port=port) as second:
        clock.now += conf.delivery.retry_delay / 4
        for _ in range(30):  # ticks: each sends what is due now
            jobs.dispatch(rt)
            clock.now += conf.delivery.retry_delay / 100
        copies = second.stats()["by_delivery"]
    first.stop()
    status = _statuses(sessions, eid)
    assert set(status.values()) == {DeliveryStatus.SENT}
    assert len(copies) == 40 and set(copies.values()) == {1}  # the other 40, once each
    with sessions() as s:
        assert s.get_one(Edition, eid).status is EditionStatus.SENT


def _opener(conf: Settings) -> Any:
    @contextmanager
    def open_(settings: Settings) -> Iterator[tuple[Provider, None]]:
        yield SendGridProvider.from_settings(conf), None

    return open_


def test_the_cli_says_who_was_not_sent_and_what_to_run(
    run_cli: CliRun,
    sessions: sessionmaker[Session],
    server: SendGridServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    with sessions.begin() as s:
        factories.subscribers(s, 8)
        factories.story(s)
    monkeypatch.setenv("NEWSLETTER_DELIVERY__PROVIDER", "sendgrid")
    monkeypatch.setenv("NEWSLETTER_DELIVERY__BATCH_SIZE", "4")
    monkeypatch.setenv("NEWSLETTER_DELIVERY__SENDGRID__API_BASE_URL", server.url)
    monkeypatch.setenv("NEWSLETTER_DELIVERY__SENDGRID__TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("NEWSLETTER_SENDGRID_API_KEY", server.api_key)
    server.script(["acceptdrop", "400:personalizations.0.to.0.email"])
    result = run_cli("send", "--newsletter", "daily-briefing", expect=1)
    out = result.output
    assert "uncertain (may have been accepted)" in out and "delivered in" not in out
    assert "newsletter deliveries requeue --edition 1 --status uncertain" in out
    assert "1 failed: SendGrid rejected (400)" in out
    assert "not delivered to everyone" in out
    # requeue the uncertain ones deliberately: now everyone is handled; exit 0
    run_cli("deliveries", "requeue", "--edition", "1", "--status", "uncertain")
    again = run_cli("send", "--edition", "1")
    assert "delivered in" in again.output
    assert "rejected for their own address" in again.output
