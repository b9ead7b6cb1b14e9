"""The delivery log on a million-row ledger: the console page and the API, first page
and a page deep in the log, on SQLite and (when it answers) PostgreSQL.

Seeds one edition with ``--rows`` deliveries (most sent, some failed, bounced,
opened), starts a real `newsletter serve`, logs in as an operator and makes an
operator API token, then times ``--n`` sequential requests of each kind:

- ``/admin/deliveries?edition=1&status=sent`` (the page) and
  ``/api/v1/deliveries?edition=1&status=sent`` (the API), first page;
- the same with ``after=`` a delivery 90 % of the way down the log.

Prints p50 and p99 per case. Target: p99 < 100 ms for every case.

    .venv/bin/python bench/log_bench.py [--rows 1000000] [--n 200] [--pg URL]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import write_config  # noqa: E402

PASSWORD = "bench password 123"
#: Its own database (created when missing), so the test suite's is never touched.
PG = "postgresql+psycopg://postgres@127.0.0.1/newsletter_bench"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(i: int) -> str:
    return (
        "failed"
        if i % 50 == 0
        else "bounced"
        if i % 97 == 0
        else "opened"
        if i % 7 == 0
        else "sent"
    )


def _seed(url: str, rows: int) -> None:
    """One sent edition and ``rows`` deliveries, through the driver in batches."""
    engine = create_engine(url)
    now = "2026-12-02 06:00:00+00:00"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO editions (id, newsletter, issue_date, kind, status, subject,"
                " created_at, updated_at, send_started_at) VALUES (1, 'daily-briefing',"
                " '2026-12-02', 'regular', 'sent', 'Bench', :t, :t, :t)"
            ),
            {"t": now},
        )
        raw = conn.connection.driver_connection
        mark = "?" if engine.dialect.name == "sqlite" else "%s"
        sql = (
            "INSERT INTO deliveries (id, edition_id, email, name, subscriber_key, status,"
            " attempts, provider, created_at, updated_at, sent_at) VALUES "
            f"({', '.join([mark] * 11)})"
        )
        cursor = raw.cursor()  # type: ignore[union-attr]
        for start in range(1, rows + 1, 50_000):
            batch = [
                (i, 1, f"r{i}@example.org", "", f"k{i}", _status(i), 1, "sendgrid", now, now, now)
                for i in range(start, min(start + 50_000, rows + 1))
            ]
            cursor.executemany(sql, batch)
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE deliveries"))
    engine.dispose()


def _times(client: httpx.Client, path: str, n: int, **kw: object) -> tuple[float, float]:
    spent = []
    for _ in range(n):
        started = time.perf_counter()
        answer = client.get(path, **kw)  # type: ignore[arg-type]
        spent.append(time.perf_counter() - started)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
    spent.sort()
    return statistics.median(spent), spent[min(len(spent) - 1, int(len(spent) * 0.99))]


def run(label: str, url: str, rows: int, n: int) -> list[tuple[str, str, float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = _port()
        cfg = write_config(folder / "config.toml", url)
        local = re.sub(
            r'base_url = "[^"]*"', f'base_url = "http://127.0.0.1:{port}"', cfg.read_text()
        )
        cfg.write_text(local)  # plain http here: the cookies must not be Secure-only
        env = {
            **os.environ,
            "NEWSLETTER_CONFIG": str(cfg),
            "NEWSLETTER_SERVICE__LOG_LEVEL": "WARNING",
        }
        nl = [sys.executable, "-m", "newsletter"]

        def cli(*argv: str, stdin: str | None = None) -> str:
            done = subprocess.run(
                [*nl, *argv], env=env, input=stdin, capture_output=True, text=True, check=True
            )
            return done.stdout

        cli("init")
        started = time.perf_counter()
        _seed(url, rows)
        print(
            f"{label}: seeded {rows:,} deliveries in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        cli("staff", "add", "ops@example.org", "--role", "operator", stdin=PASSWORD + "\n")
        token = cli("staff", "token", "create", "--name", "bench", "--role", "operator").strip()
        server = subprocess.Popen(
            [*nl, "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        results = []
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=30) as client:
                for _ in range(200):
                    try:
                        client.get("/admin/login")
                        break
                    except httpx.TransportError:
                        time.sleep(0.05)
                found = re.search(r'name="csrf" value="([^"]+)"', client.get("/admin/login").text)
                assert found
                client.post(
                    "/admin/login",
                    data={"email": "ops@example.org", "password": PASSWORD, "csrf": found.group(1)},
                )
                deep = str(int(rows * 0.1))  # 90 % of the way down, newest first
                auth = {"Authorization": f"Bearer {token}"}
                cases = [
                    ("page", "first", "/admin/deliveries?edition=1&status=sent", {}),
                    ("page", "deep", f"/admin/deliveries?edition=1&status=sent&after={deep}", {}),
                    ("API", "first", "/api/v1/deliveries?edition=1&status=sent", {"headers": auth}),
                    (
                        "API",
                        "deep",
                        f"/api/v1/deliveries?edition=1&status=sent&after={deep}",
                        {"headers": auth},
                    ),
                ]
                for what, where, path, kw in cases:
                    _times(client, path, 10, **kw)  # warm
                    p50, p99 = _times(client, path, n, **kw)
                    results.append((what, where, p50, p99))
        finally:
            server.terminate()
            server.wait(10)
        return results


def _pg_ready(url: str) -> bool:
    try:
        server, _, name = url.rpartition("/")
        admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            known = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if known.first() is None:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
            conn.commit()
        engine.dispose()
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        print(f"PostgreSQL skipped: {exc.__class__.__name__}")
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--pg", default=PG, help="a PostgreSQL URL whose schema may be wiped")
    args = parser.parse_args()
    table: list[tuple[str, str, str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in run("SQLite", f"sqlite:///{Path(tmp) / 'log.db'}", args.rows, args.n):
            table.append(("SQLite", *row))
    if _pg_ready(args.pg):
        for row in run("PostgreSQL", args.pg, args.rows, args.n):
            table.append(("PostgreSQL", *row))
    print(f"\n## log_bench.py\n{args.rows:,} deliveries, {args.n} sequential requests each\n")
    print("| database | what | page | p50 | p99 | target |")
    print("|---|---|---|---:|---:|---|")
    for db, what, where, p50, p99 in table:
        times = f"{p50 * 1000:.1f} ms | {p99 * 1000:.1f} ms"
        print(f"| {db} | {what} | {where} | {times} | p99 < 100 ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
