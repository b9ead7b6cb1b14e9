"""Benchmark: one edition to N subscribers on PostgreSQL through 1, 2 and 4 Celery workers.

Not a test. Seeds its own PostgreSQL database (``newsletter_bench_workers``, created
for the run and dropped after it) with N confirmed subscribers (default 1,000,000;
seeding is not timed), starts the recording SendGrid server (tests/sendgrid_server.py,
counts only) as its own process, and then sends one fresh edition per configuration:

- ``inline``: `newsletter send --edition ID` with ``queue.backend = "inline"`` and
  ``delivery.processes = 1``, the baseline measured in the same run;
- ``workers K``: K `newsletter worker` processes (concurrency 1, Celery's solo pool)
  started and ready before the clock starts, ``queue.backend = "celery"`` on Redis,
  ``queue.tasks_per_send = K``, a queue of its own; then `newsletter send --edition ID`
  (freeze, queue, wait reading the ledger).

Each run times the `send` subprocess from start to exit, checks that the server
accepted every recipient exactly once and that the ledger logged each as sent, and
reads from /proc the CPU time of the senders (the send command and the workers),
PostgreSQL, the recording server and the rest of the machine. Every configuration
starts from the same table: a previous edition sent to everyone (seeded, so the
ledger has a history, as in production), the last configuration's edition deleted
and vacuumed.
Workers are stopped after their run, and killed on any error.

    .venv/bin/python bench/worker_bench.py [--subscribers 1000000] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from send_bench import insert_audience  # noqa: E402  (bench/send_bench.py)

from newsletter import db  # noqa: E402
from newsletter.config import load_settings  # noqa: E402
from newsletter.content import editions  # noqa: E402
from newsletter.models import (  # noqa: E402
    Delivery,
    DeliveryStatus,
    Story,
    utcnow,
)
from tests.conftest import write_config  # noqa: E402

KEY = "SG.bench-key-0123456789"
CHUNK = 50_000
#: Its own database (created and dropped here), never the test suite's nor log_bench's.
PG = "postgresql+psycopg://postgres@127.0.0.1/newsletter_bench_workers"
BROKER = "redis://127.0.0.1:6379/13"
TICK = os.sysconf("SC_CLK_TCK")


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


def server_call(url: str, path: str, post: bool = False) -> dict[str, int]:
    request = urllib.request.Request(f"{url}{path}", data=b"" if post else None)
    with urllib.request.urlopen(request) as response:
        data: dict[str, int] = json.load(response)
    return data


def make_database(url: str) -> None:
    """Create the bench's own database, empty (dropped first if a run left it)."""
    server, _, name = url.rpartition("/")
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def drop_database(url: str) -> None:
    server, _, name = url.rpartition("/")
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def make_config(tmp: Path, name: str, pg: str, url: str, concurrency: int, queue: str) -> Path:
    """One config per configuration: the sendgrid provider, one sender process, and
    ``queue`` as the [queue] section."""
    cfg = write_config(tmp / f"config-{name}.toml", pg)
    text_ = cfg.read_text().replace(
        '[delivery]\nprovider = "outbox"',
        f'[delivery]\nprovider = "sendgrid"\nconcurrency = {concurrency}\nprocesses = 1',
    )
    # INFO stays: a worker says " ready." at INFO, and nothing on the send path logs
    # per batch.
    cfg.write_text(text_ + f'\n[delivery.sendgrid]\napi_base_url = "{url}"\n\n[queue]\n{queue}')
    return cfg


def seed(cfg: Path, subscribers: int) -> None:
    """Insert the audience in bulk and a previous edition sent to all of it (the
    ledger's history), then VACUUM ANALYZE so the planner knows the tables.

    A production ledger has history; before the freeze used ON CONFLICT, its NOT
    EXISTS went quadratic on a ``deliveries`` table the planner took for empty
    (docs/benchmarks.md). Every configuration here freezes next to the history."""
    settings = load_settings(cfg)
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    insert_audience(engine, subscribers)
    now = utcnow()
    engine.dispose()
    history = build(cfg, 99)
    engine = db.make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO deliveries (edition_id, subscriber_id, email, name, subscriber_key,"
                " status, attempts, provider, created_at, updated_at, sent_at)"
                " SELECT :e, id, email, name, key, 'sent', 1, 'sendgrid', :t, :t, :t"
                " FROM subscribers"
            ),
            {"e": history, "t": now},
        )
        conn.execute(text("UPDATE editions SET status = 'sent' WHERE id = :e"), {"e": history})
    vacuum(engine)
    engine.dispose()


def vacuum(engine: Any) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def build(cfg: Path, n: int) -> int:
    """Eight new stories and an edition of them for issue date today - n days (each
    configuration its own edition: stories in another edition never qualify)."""
    settings = load_settings(cfg)
    engine = db.make_engine(settings.database_url)
    now = utcnow()
    with db.session_factory(engine).begin() as s:
        for k in range(8):
            s.add(
                Story(
                    newsletter="daily-briefing",
                    guid=f"bench-{n}-{k}",
                    url=f"https://news.example.com/bench/{n}/{k}",
                    title=f"Benchmark story {n}.{k}: a headline of ordinary length for a briefing",
                    summary="<p>A summary of about two sentences. It says what happened.</p>",
                    kicker="World",
                    source=f"Desk {k % 3}",
                    published_at=now,
                    fetched_at=now,
                )
            )
        s.flush()
        issue = date.today() - timedelta(days=n)
        edition_id = editions.build_edition(
            s, settings=settings, slug="daily-briefing", issue_date=issue
        )[0].id
    engine.dispose()
    return edition_id


def sent_in_ledger(cfg: Path, edition_id: int) -> int:
    engine = db.make_engine(load_settings(cfg).database_url)
    with engine.connect() as conn:
        n = conn.scalar(
            select(func.count()).where(
                Delivery.edition_id == edition_id, Delivery.status == DeliveryStatus.SENT
            )
        )
    engine.dispose()
    return int(n or 0)


def forget(cfg: Path, edition_id: int) -> None:
    """Delete an edition's ledger and vacuum: the next configuration starts from the
    same table (the history's rows)."""
    engine = db.make_engine(load_settings(cfg).database_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM deliveries WHERE edition_id = :e"), {"e": edition_id})
    vacuum(engine)
    engine.dispose()


# ----- CPU time from /proc ------------------------------------------------------------


def _cpu(pid: int) -> float | None:
    """User + system CPU seconds of one process so far, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def _postgres_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "postgres":
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def _machine() -> float:
    """Busy CPU seconds of the whole machine since boot, all cores (not idle, iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / TICK


@dataclass
class CpuMeter:
    """CPU seconds used during a run by groups of processes (sampled, so a process
    that exits between two samples loses at most one tick of its time)."""

    groups: dict[str, list[int]]
    start: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    group_of: dict[int, str] = field(default_factory=dict)
    machine: float = 0.0

    def begin(self) -> None:
        self.machine = _machine()
        self.sample(first=True)

    def sample(self, first: bool = False) -> None:
        pids = {p: g for g, ps in self.groups.items() for p in ps}
        pids.update({p: "PostgreSQL" for p in _postgres_pids()})
        for pid, group in pids.items():
            used = _cpu(pid)
            if used is None:
                continue
            if first:
                self.start[pid] = used
            self.group_of[pid] = group
            self.last[pid] = used

    def end(self, extra: dict[str, float]) -> dict[str, float]:
        """Seconds per group (``extra`` added, e.g. a reaped child's rusage), the
        rest of the machine, and ``busy``: the whole machine's."""
        self.sample()
        busy = _machine() - self.machine
        out: dict[str, float] = dict(extra)
        for pid, used in self.last.items():
            group = self.group_of[pid]
            out[group] = out.get(group, 0.0) + used - self.start.get(pid, 0.0)
        out["rest"] = max(busy - sum(out.values()), 0.0)
        out["busy"] = busy
        return out


# ----- one configuration ---------------------------------------------------------------


@dataclass
class Result:
    label: str
    workers: int
    seconds: float
    code: int
    stats: dict[str, int]
    logged: int
    cpu: dict[str, float]
    shares: list[int]
    frozen: float | None  # seconds from the start of `send` (process start included)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`newsletter worker` (solo pool); returns once its log says it is ready."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    WORKERS.append(proc)
    deadline = time.monotonic() + 60
    while " ready." not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return proc


def stop_workers(kill: bool = False) -> None:
    """SIGTERM (Celery's warm shutdown: the task, already over, ends) then SIGKILL."""
    for proc in WORKERS:
        if proc.poll() is None and kill:
            proc.kill()
        elif proc.poll() is None:
            proc.terminate()
    for proc in WORKERS:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    WORKERS.clear()


def timed_send(
    env: dict[str, str], edition_id: int, meter: CpuMeter, timeout: float, log: Path
) -> tuple[float, int, dict[str, float]]:
    """Run `newsletter send --edition ID` (its output to ``log``); (seconds, exit code,
    CPU seconds by group). The send command's own CPU is its rusage, read when it is
    reaped."""
    meter.begin()
    started = time.perf_counter()
    STARTED[0] = time.time()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "send", "--edition", str(edition_id)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    SENDING.append(proc)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if any(w.poll() is not None for w in WORKERS):
            raise RuntimeError("a worker exited during the send")
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"the send took more than {timeout:g} s")
        meter.sample()
        time.sleep(0.2)
    SENDING.remove(proc)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = meter.end({"send": usage.ru_utime + usage.ru_stime})
    return elapsed, proc.returncode, cpu


def run_config(
    label: str, workers: int, cfg: Path, base_env: dict[str, str], url: str, edition_id: int,
    logs: Path, timeout: float,
) -> Result:  # fmt: skip
    env = {**base_env, "NEWSLETTER_CONFIG": str(cfg)}
    procs = [start_worker(env, logs / f"w{workers}-{i}.log") for i in range(workers)]
    server_call(url, "/reset", post=True)
    meter = CpuMeter({"workers": [p.pid for p in procs], "server": [SERVER_PID[0]]})
    send_log = logs / f"send-w{workers}.log"
    seconds, code, cpu = timed_send(env, edition_id, meter, timeout, send_log)
    if code != 0:
        print(send_log.read_text(errors="replace")[-3000:], file=sys.stderr)
    stats = server_call(url, "/stats")
    stop_workers()
    sent = re.compile(rf"edition {edition_id}: sent (\d+),")
    shares = [
        sum(
            int(n) for n in sent.findall((logs / f"w{workers}-{i}.log").read_text(errors="replace"))
        )
        for i in range(workers)
    ]
    logged = sent_in_ledger(cfg, edition_id)
    return Result(label, workers, seconds, code, stats, logged, cpu, shares, frozen_after(send_log))


def frozen_after(log: Path) -> float | None:
    """When the send's log says the audience was frozen, in seconds after its start."""
    for line in log.read_text(errors="replace").splitlines():
        if "audience frozen" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp() - STARTED[0]  # both local time
    return None


#: Every worker and send command running, stopped at the end whatever happens.
WORKERS: list[subprocess.Popen[bytes]] = []
SENDING: list[subprocess.Popen[bytes]] = []
SERVER_PID: list[int] = []
STARTED = [0.0]


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so the finally blocks stop the workers


def _broker_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def _forget_queues(url: str, names: list[str]) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    for name in names:  # the queue and kombu's bindings of it
        for key in client.scan_iter(match=f"*{name}*"):
            client.delete(key)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--concurrency", type=int, default=2, help="sender threads per process")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per send, at most")
    parser.add_argument("--pg", default=PG, help="a PostgreSQL database to create and drop")
    parser.add_argument("--broker", default=BROKER, help="a Redis URL (database index)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    if not _broker_answers(args.broker):
        print(f"Redis does not answer at {args.broker}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminated)
    run_id = uuid.uuid4().hex[:8]
    queues = [f"nl-bench-{run_id}-w{n}" for n in counts]
    base_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")},
        "NEWSLETTER_SENDGRID_API_KEY": KEY,
        "NEWSLETTER_QUEUE__BROKER_URL": args.broker,
    }
    try:
        make_database(args.pg)
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        print(f"PostgreSQL does not answer at {args.pg}: {exc.__class__.__name__}", file=sys.stderr)
        return 2
    server, url = start_server()
    SERVER_PID.append(server.pid)
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            queue = {0: 'backend = "inline"\n'} | {
                n: f'backend = "celery"\nqueue_name = "{q}"\ntasks_per_send = {n}\n'
                for n, q in zip(counts, queues, strict=True)
            }
            configs = [
                (f"workers {n}" if n else "inline", n,
                 make_config(tmp, f"w{n}", args.pg, url, args.concurrency, queue[n]))
                for n in [0, *counts]
            ]  # fmt: skip
            t = time.perf_counter()
            seed(configs[0][2], args.subscribers)
            print(f"seeded {args.subscribers:,} subscribers in {time.perf_counter() - t:.1f} s")
            for n, (label, workers, cfg) in enumerate(configs):
                edition_id = build(cfg, n)
                result = run_config(
                    label, workers, cfg, base_env, url, edition_id, tmp, args.timeout
                )
                results.append(result)
                print(
                    f"{label}: {result.seconds:.2f} s, exit {result.code}, server "
                    f"{result.stats['recipients']:,} recipients, {result.stats['duplicates']:,} "
                    f"duplicates, ledger {result.logged:,} sent",
                    flush=True,
                )
                forget(cfg, edition_id)
    finally:
        for proc in SENDING:
            proc.kill()
            proc.wait()
        stop_workers(kill=True)
        server.terminate()
        server.communicate(timeout=10)
        _forget_queues(args.broker, queues)
        drop_database(args.pg)
    report(results, args.subscribers, args.concurrency)
    ok = all(
        r.code == 0
        and r.stats["recipients"] == args.subscribers
        and r.stats["duplicates"] == 0
        and r.logged == args.subscribers
        for r in results
    )
    return 0 if ok else 1


def report(results: list[Result], audience: int, concurrency: int) -> None:
    by = {r.workers: r for r in results}
    rate = {r.workers: audience / r.seconds for r in results}
    print(
        f"\n{audience:,} recipients on PostgreSQL, sendgrid provider to the recording server, "
        f"{concurrency} sender threads per process\n"
    )
    print(
        "| sender | wall time | audience frozen at | recipients/s | vs 1 worker | vs inline "
        "| accepted by the server | duplicates | logged as sent | per worker |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        one = f"{rate[r.workers] / rate[1]:.2f}x" if 1 in rate and r.workers else "-"
        base = f"{rate[r.workers] / rate[0]:.2f}x" if 0 in rate else "-"
        shares = " / ".join(f"{s:,}" for s in r.shares) or "-"
        frozen = "-" if r.frozen is None else f"{r.frozen:.1f} s"
        print(
            f"| {r.label} | {r.seconds:.2f} s | {frozen} | {rate[r.workers]:,.0f} | {one} | "
            f"{base} | {r.stats['recipients']:,} | {r.stats['duplicates']:,} | {r.logged:,} | "
            f"{shares} |"
        )
    print(
        "\nCPU seconds during each send (senders = the send command + the workers; "
        "rest = everything else on the machine)\n"
    )
    print("| sender | send command | workers | PostgreSQL | server | rest | busy cores |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        c = r.cpu
        print(
            f"| {r.label} | {c.get('send', 0):.1f} | {c.get('workers', 0):.1f} | "
            f"{c.get('PostgreSQL', 0):.1f} | {c.get('server', 0):.1f} | {c['rest']:.1f} | "
            f"{c['busy'] / r.seconds:.2f} of {os.cpu_count()} |"
        )
    if 1 in by and 2 in by:
        ratio = rate[2] / rate[1]
        verdict = "met" if ratio >= 1.7 else f"NOT met (by {1.7 - ratio:.2f}x)"
        print(f"\ntarget: 2 workers >= 1.7x one worker: {ratio:.2f}x, {verdict}")
    for r in results:
        if r.code != 0 or r.stats["recipients"] != audience or r.stats["duplicates"]:
            print(f"{r.label}: NOT every recipient exactly once (exit {r.code})")


if __name__ == "__main__":
    sys.exit(main())
