"""Signed SendGrid event batches into `newsletter serve`, against a plain executemany.

A real `newsletter serve` process (SQLite, uvicorn) takes signed 1,000-event POSTs
(verified, parsed, mapped to deliveries, stored once, statuses moved); the floor
is a plain ``executemany`` of the same rows into the same table in the same run.
Prints a table: events per second for each, and the ratio.

    .venv/bin/python bench/events_bench.py [--events 50000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import write_config  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed(db: Path, deliveries: int) -> None:
    """One sent edition with ``deliveries`` rows, written straight into SQLite."""
    con = sqlite3.connect(db)
    now = "2026-12-02 06:00:00.000000"
    con.execute(
        "INSERT INTO editions (id, newsletter, issue_date, kind, status, subject, created_at,"
        " updated_at, send_started_at) VALUES (1, 'daily-briefing', '2026-12-02', 'regular',"
        " 'sent', 'S', ?, ?, ?)",
        (now, now, now),
    )
    con.executemany(
        "INSERT INTO deliveries (id, edition_id, email, name, subscriber_key, status, attempts,"
        " provider, provider_message_id, created_at, updated_at, sent_at)"
        " VALUES (?, 1, ?, '', 'k', 'sent', 1, 'sendgrid', ?, ?, ?, ?)",
        (
            (i, f"r{i}@example.org", f"msg{i // 1000}", now, now, now)
            for i in range(1, deliveries + 1)
        ),
    )
    con.commit()
    con.close()


def _events(total: int, deliveries: int) -> list[dict[str, object]]:
    kinds = ("processed", "delivered", "open", "click")
    return [
        {
            "email": f"r{1 + n % deliveries}@example.org",
            "timestamp": 1_764_000_000 + n,
            "event": kinds[n % 4],
            "sg_event_id": f"e{n}",
            "sg_message_id": f"msg{(1 + n % deliveries) // 1000}.filter",
            "category": "daily-briefing",
            "delivery_id": str(1 + n % deliveries),
            "url": "https://example.org/story" if n % 4 == 3 else None,
        }
        for n in range(total)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--deliveries", type=int, default=20_000)
    args = parser.parse_args()
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    events = _events(args.events, args.deliveries)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = folder / "bench.db"
        cfg = write_config(folder / "config.toml", f"sqlite:///{db}")
        env = {
            **os.environ,
            "NEWSLETTER_CONFIG": str(cfg),
            "NEWSLETTER_SENDGRID_WEBHOOK_KEY": public,
            "NEWSLETTER_SERVICE__LOG_LEVEL": "WARNING",
        }
        newsletter = [sys.executable, "-m", "newsletter"]
        subprocess.run([*newsletter, "init"], env=env, check=True, capture_output=True)
        _seed(db, args.deliveries)
        port = _port()
        server = subprocess.Popen(
            [*newsletter, "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=url, timeout=60) as client:
                for _ in range(200):
                    try:
                        client.get("/archive")
                        break
                    except httpx.TransportError:
                        time.sleep(0.05)
                bodies = []
                for start in range(0, len(events), args.batch):
                    body = json.dumps(events[start : start + args.batch]).encode()
                    stamp = str(int(time.time()))
                    signature = base64.b64encode(
                        key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
                    ).decode()
                    bodies.append((body, stamp, signature))
                started = time.perf_counter()
                for body, stamp, signature in bodies:
                    answer = client.post(
                        "/webhooks/sendgrid",
                        content=body,
                        headers={
                            "X-Twilio-Email-Event-Webhook-Signature": signature,
                            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
                        },
                    )
                    assert answer.status_code == 200, answer.text
                served = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(10)
        con = sqlite3.connect(db)
        stored = con.execute("SELECT count(*) FROM delivery_events").fetchone()[0]
        assert stored == len(events), (stored, len(events))
        # The floor: the same rows, one plain executemany per batch, same database.
        con.execute("DELETE FROM delivery_events")
        con.commit()
        rows = [
            (int(e["delivery_id"]), e["event"], "sendgrid", e["sg_event_id"], e["email"], e["url"])  # type: ignore[arg-type]
            for e in events
        ]
        started = time.perf_counter()
        for start in range(0, len(rows), args.batch):
            con.executemany(
                "INSERT INTO delivery_events (delivery_id, kind, source, provider_event_id,"
                " email, url, detail, created_at) VALUES (?, ?, ?, ?, ?, ?, '{}',"
                " '2026-12-02 06:00:00')",
                rows[start : start + args.batch],
            )
            con.commit()
        floor = time.perf_counter() - started
        con.close()
    n = len(events)
    print(f"## events_bench.py\n{n} events in batches of {args.batch}, SQLite\n")
    print("| what | time | events/s |")
    print("|---|---:|---:|")
    print(f"| signed POSTs to newsletter serve (verify, map, store, move) | {served:.2f} s "
          f"| {n / served:,.0f} |")  # fmt: skip
    print(f"| plain executemany of the same rows (the floor) | {floor:.2f} s | {n / floor:,.0f} |")
    print(f"\nratio: {floor / served:.0%} of the floor (target ≥ 30%, and ≥ 20,000 events/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
