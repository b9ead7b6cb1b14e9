"""Benchmark: one edition to N confirmed subscribers through the sendgrid provider.

Not a test. Seeds a fresh SQLite database with N subscribers (default 1,000,000;
seeding is not timed), builds an edition, starts the recording SendGrid server
(tests/sendgrid_server.py, counts only) as its own process, then times
`newsletter send --edition ID` as a subprocess from start to exit: audience frozen,
every recipient accepted by the server and logged in the ledger. Peak RSS is read
from /proc for the sender and its helper processes. In the same run, the naive way
on a slice (default 10,000): render Jinja + MJML and build an email.message per
recipient (bench/baseline.py), one API call per recipient.

    .venv/bin/python bench/send_bench.py [--subscribers 1000000] [--naive 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from sqlalchemy import Engine, func, insert, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from baseline import build_message  # noqa: E402  (bench/baseline.py)

from newsletter import db  # noqa: E402
from newsletter.config import load_settings  # noqa: E402
from newsletter.content import editions  # noqa: E402
from newsletter.delivery.links import recipient  # noqa: E402
from newsletter.delivery.personalise import Personaliser  # noqa: E402
from newsletter.delivery.sender import prepare  # noqa: E402
from newsletter.models import (  # noqa: E402
    Delivery,
    DeliveryStatus,
    Story,
    Subscriber,
    Subscription,
    utcnow,
)
from tests.conftest import write_config  # noqa: E402

KEY = "SG.bench-key-0123456789"
CHUNK = 50_000


def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "sendgrid_server.py"), "--port", "0",
         "--key", KEY, "--counts-only"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.readline().split()
    return proc, f"http://127.0.0.1:{first[1]}"


def server_stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/stats") as response:
        data: dict[str, int] = json.load(response)
    return data


def make_config(tmp: Path, url: str, concurrency: int, processes: int = 1) -> Path:
    cfg = write_config(tmp / "config.toml", f"sqlite:///{tmp / 'bench.db'}")
    text = cfg.read_text().replace(
        '[delivery]\nprovider = "outbox"',
        f'[delivery]\nprovider = "sendgrid"\nconcurrency = {concurrency}\nprocesses = {processes}',
    )
    text = text.replace('log_level = "INFO"', 'log_level = "WARNING"')
    cfg.write_text(text + f'\n[delivery.sendgrid]\napi_base_url = "{url}"\n')
    return cfg


def insert_audience(engine: Engine, subscribers: int) -> None:
    """``subscribers`` confirmed readers of daily-briefing, in bulk (not timed)."""
    now = utcnow()
    with engine.begin() as conn:
        for start in range(0, subscribers, CHUNK):
            ids = range(start + 1, min(start + CHUNK, subscribers) + 1)
            conn.execute(
                insert(Subscriber),
                [
                    {"id": i, "email": f"reader{i}@example.com", "name": f"Reader {i}",
                     "key": uuid.uuid4().hex, "created_at": now, "updated_at": now}
                    for i in ids
                ],
            )  # fmt: skip
            conn.execute(
                insert(Subscription),
                [
                    {"subscriber_id": i, "newsletter": "daily-briefing", "status": "confirmed",
                     "source": "bench", "created_at": now}
                    for i in ids
                ],
            )  # fmt: skip


def seed(cfg: Path, subscribers: int) -> int:
    """Insert the audience in bulk and build an edition; returns its id."""
    settings = load_settings(cfg)
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    insert_audience(engine, subscribers)
    now = utcnow()
    sessions = db.session_factory(engine)
    with sessions.begin() as s:
        for n in range(8):
            s.add(
                Story(
                    newsletter="daily-briefing",
                    guid=f"bench-{n}",
                    url=f"https://news.example.com/bench/{n}",
                    title=f"Benchmark story {n}: a headline of ordinary length for a briefing",
                    summary="<p>A summary of about two sentences. It says what happened.</p>",
                    kicker="World",
                    source=f"Desk {n % 3}",
                    published_at=now,
                    fetched_at=now,
                )
            )
        s.flush()
        edition_id = editions.build_edition(s, settings=settings, slug="daily-briefing")[0].id
    engine.dispose()
    return edition_id


def _hwm_mb(pid: int) -> float:
    """Peak resident memory of one process (VmHWM), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def timed_send(cfg: Path, edition_id: int) -> tuple[float, float, float, int]:
    """Run the sender as a process; returns (seconds, peak RSS of the main sender
    process and of all its processes together in MB, exit code). Peak RSS is read
    from /proc while it runs (a child's ru_maxrss would include this process's)."""
    env = {**os.environ, "NEWSLETTER_CONFIG": str(cfg), "NEWSLETTER_SENDGRID_API_KEY": KEY}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "send", "--edition", str(edition_id)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    peaks: dict[int, float] = {}
    while proc.poll() is None:
        for pid in [proc.pid, *_children(proc.pid)]:
            peaks[pid] = max(peaks.get(pid, 0.0), _hwm_mb(pid))
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    return elapsed, peaks.get(proc.pid, 0.0), sum(peaks.values()), proc.returncode


def naive(cfg: Path, edition_id: int, url: str, count: int) -> float:
    """The per-recipient way: render, build a message, one API call each. Returns msg/s."""
    import sendgrid  # the official client, one request per recipient

    settings = load_settings(cfg)
    engine = db.make_engine(settings.database_url)
    sessions = db.session_factory(engine)
    with sessions() as s:
        edition = editions.get_edition(s, edition_id)
        people = s.execute(
            select(Subscriber.email, Subscriber.name, Subscriber.key).limit(count)
        ).all()
    client = sendgrid.SendGridAPIClient(api_key=KEY, host=url)
    started = time.perf_counter()
    for email, name, key in people:
        content = editions.render_edition(edition, settings)  # Jinja + MJML each time
        prepared = prepare(settings, edition, content)
        who = recipient(
            settings, delivery_id=None, email=email, name=name, key=key, newsletter="daily-briefing"
        )
        msg = build_message(prepared, Personaliser(content), who)
        html = msg.get_body(("html",))
        text = msg.get_body(("plain",))
        assert html is not None and text is not None
        client.client.mail.send.post(
            request_body={
                "personalizations": [{"to": [{"email": email, "name": name}]}],
                "from": {"email": settings.sender.from_address},
                "subject": str(msg["Subject"]),
                "content": [
                    {"type": "text/plain", "value": text.get_content()},
                    {"type": "text/html", "value": html.get_content()},
                ],
                "headers": {"List-Unsubscribe": str(msg["List-Unsubscribe"])},
            }
        )
    elapsed = time.perf_counter() - started
    engine.dispose()
    return len(people) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--naive", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=2, help="sender threads")
    parser.add_argument("--processes", type=int, default=2, help="sender processes")
    args = parser.parse_args()
    server, url = start_server()
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            cfg = make_config(tmp, url, args.concurrency, args.processes)
            t = time.perf_counter()
            edition_id = seed(cfg, args.subscribers)
            print(f"seeded {args.subscribers:,} subscribers in {time.perf_counter() - t:.1f} s")
            seconds, rss, rss_all, code = timed_send(cfg, edition_id)
            stats = server_stats(url)
            engine = db.make_engine(load_settings(cfg).database_url)
            with engine.connect() as conn:
                logged = conn.scalar(
                    select(func.count()).where(Delivery.status == DeliveryStatus.SENT)
                )
            engine.dispose()
            naive_rate = naive(cfg, edition_id, url, args.naive) if args.naive else 0.0
    finally:
        server.terminate()
        server.communicate(timeout=10)
    rate = args.subscribers / seconds
    rows = [
        ("recipients", f"{args.subscribers:,}"),
        ("sender exit code", str(code)),
        ("wall time, start to all accepted and logged", f"{seconds:.2f} s (target <= 15 s)"),
        ("recipients/s", f"{rate:,.0f}"),
        ("peak RSS of the sender process", f"{rss:.0f} MB (target <= 200 MB)"),
        (f"peak RSS, all {args.processes} sender processes", f"{rss_all:.0f} MB"),
        ("requests accepted by the server", f"{stats['requests']:,}"),
        ("recipients accepted by the server", f"{stats['recipients']:,}"),
        ("duplicate copies", f"{stats['duplicates']:,}"),
        ("ledger rows logged as sent", f"{logged:,}"),
        (f"naive way ({args.naive:,} slice), recipients/s", f"{naive_rate:,.0f}"),
        ("ours / naive", f"{rate / naive_rate:,.0f}x (target >= 100x)" if naive_rate else "-"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\n| {'what'.ljust(width)} | result |\n|{'-' * (width + 2)}|--------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")
    return 0 if code == 0 and stats["recipients"] == args.subscribers else 1


if __name__ == "__main__":
    sys.exit(main())
