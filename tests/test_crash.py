"""Crash safety: a sender killed with SIGKILL at random moments, restarted each time.

A real `newsletter send` process delivers through the sendgrid provider to a local
recording SendGrid server that counts copies per delivery id. However often the
sender dies, the edition finishes; nobody is lost; nobody gets two copies except
(with `uncertain = "resend"`) the recipients of a batch that was in flight. Each
restart recovers the dead runner's claims at once (its process is gone), not after
the lease: the last run finishes in seconds although the lease is five minutes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter import db
from newsletter.config import load_settings
from newsletter.content import editions
from newsletter.models import Delivery, DeliveryStatus
from tests import factories
from tests.conftest import write_config
from tests.sendgrid_server import SendGridServer

READERS = 2000
BATCH = 100
KILLS = 8
LEASE = 300  # the default: recovery must not wait for it


def _settings_file(tmp_path: Path, db_url: str, server: SendGridServer, policy: str) -> Path:
    cfg = write_config(tmp_path / "config.toml", db_url)
    text = cfg.read_text().replace(
        '[delivery]\nprovider = "outbox"',
        f'[delivery]\nprovider = "sendgrid"\nbatch_size = {BATCH}\nlease_seconds = {LEASE}\n'
        f'uncertain = "{policy}"\nretry_base_seconds = 0.1',
    )
    text += f'\n[delivery.sendgrid]\napi_base_url = "{server.url}"\ntimeout_seconds = 5\n'
    cfg.write_text(text)
    return cfg


def _sender(
    cfg: Path, edition_id: int, server: SendGridServer, *, capture: bool = False
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NEWSLETTER_SENDGRID_API_KEY": server.api_key,
        "NEWSLETTER_CONFIG": str(cfg),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "send", "--edition", str(edition_id)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
    )


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["skip", "resend"])
def test_sigkill_at_random_points_never_loses_or_duplicates(
    tmp_path: Path, db_url: str, policy: str
) -> None:
    rng = random.Random(20261124 + len(policy))
    with SendGridServer() as server:
        # Each request takes a little while, so kills land before, during and
        # after the provider call, and between the call and the commit.
        server.script([f"slowok:{rng.uniform(0.01, 0.08):.3f}" for _ in range(10_000)])
        cfg = _settings_file(tmp_path, db_url, server, policy)
        settings = load_settings(cfg)
        engine = db.make_engine(settings.database_url)
        db.upgrade(engine)
        sessions = db.session_factory(engine)
        with sessions.begin() as s:
            for n in range(READERS):
                factories.subscriber(s, f"reader{n:05d}@example.com")
            factories.story(s)
            edition_id = editions.build_edition(s, settings=settings, slug="daily-briefing")[0].id

        kills = 0
        for _ in range(KILLS):
            seen = server.stats()["attempts"]
            proc = _sender(cfg, edition_id, server)
            # Kill only once this sender is talking to the provider, at a random
            # moment: before, during or after a request, or before its commit.
            deadline = time.monotonic() + 20
            while server.stats()["attempts"] == seen and proc.poll() is None:
                assert time.monotonic() < deadline, "the sender never reached the provider"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is not None:
                break  # it finished before we could kill it
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        started = time.monotonic()
        final = _sender(cfg, edition_id, server, capture=True)
        _, err = final.communicate(timeout=120)
        took = time.monotonic() - started
        assert b"Traceback" not in err

        with sessions() as s:
            rows = s.execute(select(Delivery.id, Delivery.status, Delivery.attempts)).all()
        engine.dispose()
        status = {row_id: st for row_id, st, _ in rows}
        attempts = {row_id: n for row_id, _, n in rows}
        copies: Counter[int] = Counter(
            {int(k): v for k, v in server.stats()["by_delivery"].items()}
        )

    assert kills >= 3, "the sender should have been killed mid-send several times"
    assert took < 60, f"the restarted send waited {took:.0f} s (for a lease?)"
    assert len(status) == READERS
    left_open = [
        i for i, st in status.items() if st not in (DeliveryStatus.SENT, DeliveryStatus.UNCERTAIN)
    ]
    assert left_open == []
    uncertain = [i for i, st in status.items() if st is DeliveryStatus.UNCERTAIN]
    # The exit status tells the truth: 0 only when everyone was sent.
    assert final.returncode == (1 if uncertain else 0), err.decode()
    twice = [i for i, n in copies.items() if n > 1]
    # Only the batch in flight at each kill can be uncertain or, resent, doubled.
    assert len(uncertain) <= kills * BATCH
    assert len(twice) <= kills * BATCH
    for delivery_id, st in status.items():
        if policy == "skip":
            # sent means exactly one copy; uncertain means at most one
            assert copies[delivery_id] == (1 if st is DeliveryStatus.SENT else copies[delivery_id])
            assert copies[delivery_id] <= 1
            # attempts count provider calls that were answered, not claims by the dead
            assert attempts[delivery_id] == (1 if st is DeliveryStatus.SENT else 0)
        else:
            assert st is DeliveryStatus.SENT and copies[delivery_id] >= 1
    if policy == "resend":
        assert uncertain == []
