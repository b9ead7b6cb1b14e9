"""Benchmark: personalised messages per second through the SMTP provider to Postfix's
smtp-sink, against the naive way (an email.message per recipient).

    .venv/bin/python bench/smtp_bench.py [--n 20000] [--naive-n 2000] [--pools 4]
                                         [--dkim-n 20000]

Needs /usr/sbin/smtp-sink (Debian package ``postfix``; the daemon need not run).
Target (DESIGN.md): ≥ 3,000 msg/s without DKIM. Prints one table; not a test.
"""

from __future__ import annotations

import argparse
import base64
import smtplib
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from email import policy
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.smtp_servers (the smtp-sink launcher)

from baseline import build_message  # noqa: E402  (bench/baseline.py)

from newsletter.config import Settings  # noqa: E402
from newsletter.content.render import render_edition  # noqa: E402
from newsletter.content.types import Brand, EditionView, StoryView  # noqa: E402
from newsletter.delivery.links import recipient  # noqa: E402
from newsletter.delivery.personalise import Personaliser  # noqa: E402
from newsletter.delivery.providers.dkim import DKIMSigner  # noqa: E402
from newsletter.delivery.providers.smtp import SMTPProvider  # noqa: E402
from newsletter.delivery.types import PreparedEdition, Recipient  # noqa: E402
from tests.smtp_servers import SinkServer, smtp_sink, smtp_sink_missing  # noqa: E402

SENTENCE = "Officials said the measure, agreed after months of talks, would take effect next year. "
NAMES = ("Ann Reader", "José Núñez", "", "Zoë O'Brien", "李小龍", 'Robert "Bob" Tables')


def edition() -> PreparedEdition:
    """A realistic 8-story briefing (~37 KB of HTML), rendered once."""
    stories = tuple(
        StoryView(
            title=f"Story {i + 1}: coastal cities agree on a shared plan for rising seas",
            url=f"https://example.com/2026/11/24/story-{i + 1}?utm_source=ledger",
            summary_html=f"<p>{SENTENCE * 3}<strong>Critics</strong> were unconvinced.</p>",
            summary_text=SENTENCE * 3 + "Critics were unconvinced.",
            kicker="World",
            source="Reuters",
            published_at=datetime(2026, 11, 24, 5, 0, tzinfo=UTC),
        )
        for i in range(8)
    )
    view = EditionView(
        1,
        "daily-briefing",
        "The Daily Ledger",
        "The day's top stories.",
        date(2026, 11, 24),
        stories,
    )
    brand = Brand(
        "The Daily Ledger", "The Daily Ledger", "1 Newsroom Way", "https://news.example.com", None
    )
    content = render_edition(
        view,
        brand=brand,
        subject_template="{{ newsletter.name }}: {{ lead.title }}",
        template="briefing",
        templates_dir=ROOT / "templates",
    )
    return PreparedEdition(
        edition_id=1,
        newsletter="daily-briefing",
        content=content,
        from_name="The Daily Ledger",
        from_address="briefing@news.example.com",
        reply_to=None,
        list_id='"The Daily Ledger" <daily-briefing.news.example.com>',
        domain="news.example.com",
    )


def recipients(n: int) -> list[Recipient]:
    """``n`` recipients with real signed unsubscribe/preferences links."""
    settings = Settings()
    return [
        recipient(
            settings,
            delivery_id=i,
            email=f"reader{i}@example.com",
            name=NAMES[i % len(NAMES)],
            key=f"{i:032x}",
            newsletter="daily-briefing",
        )
        for i in range(n)
    ]


def dkim_signer(algorithm: str) -> DKIMSigner:
    if algorithm == "rsa-sha256":
        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        key = pem.decode()
    else:
        raw = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        key = base64.b64encode(raw).decode()
    return DKIMSigner.load(
        selector="bench",
        domain="news.example.com",
        private_key=key,
        algorithm=algorithm,  # type: ignore[arg-type]
    )


def through_provider(
    sink: SinkServer,
    ed: PreparedEdition,
    people: Sequence[Recipient],
    pool: int,
    dkim: DKIMSigner | None,
) -> float:
    provider = SMTPProvider(
        host=sink.host, port=sink.port, pool_size=pool, verp=True, dkim=dkim, timeout=30
    )
    try:
        provider.check()
        before = sink.messages()
        started = time.perf_counter()
        statuses: Counter[str] = Counter()
        for i in range(0, len(people), provider.max_batch):
            statuses.update(o.status for o in provider.send_batch(ed, people[i : i + 1000]))
        elapsed = time.perf_counter() - started
    finally:
        provider.close()
    assert statuses == {"sent": len(people)}, statuses
    assert sink.messages() - before == len(people)
    return elapsed


def naive(
    sink: SinkServer, ed: PreparedEdition, people: Sequence[Recipient], per_message: bool
) -> float:
    """An email.message per recipient (bench/baseline.py) + as_bytes; a new connection
    per message, or one for all."""
    personaliser = Personaliser(ed.content)  # once per edition, as the old PreparedEdition had
    before = sink.messages()
    started = time.perf_counter()
    conn: smtplib.SMTP | None = None
    for r in people:
        if conn is None:
            conn = smtplib.SMTP(sink.host, sink.port, local_hostname="bench.example.com")
        data = build_message(ed, personaliser, r).as_bytes(policy=policy.SMTP)
        conn.sendmail(ed.from_address, [r.email], data)
        if per_message:
            conn.quit()
            conn = None
    if conn is not None:
        conn.quit()
    elapsed = time.perf_counter() - started
    assert sink.messages() - before == len(people)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per provider run")
    parser.add_argument("--dkim-n", type=int, default=None, help="messages per DKIM run (--n)")
    parser.add_argument("--naive-n", type=int, default=2_000, help="messages for the naive runs")
    parser.add_argument("--pools", default="4", help="pool sizes to try without DKIM, e.g. 1,2,4,8")
    args = parser.parse_args()
    if why := smtp_sink_missing():
        sys.exit(why)
    ed = edition()
    people = recipients(max(args.n, args.dkim_n or 0, args.naive_n))
    pools = [int(p) for p in args.pools.split(",")]
    dkim_n = args.dkim_n or args.n
    rows: list[tuple[str, int, float]] = []

    def run(label: str, n: int, fn: Callable[[SinkServer], float]) -> None:
        with tempfile.TemporaryDirectory() as tmp, smtp_sink(Path(tmp)) as sink:
            rows.append((label, n, fn(sink)))
        print(f"  {label}: {n / rows[-1][2]:,.0f} msg/s", file=sys.stderr)

    for pool in pools:
        run(
            f"provider, pool {pool}, no DKIM",
            args.n,
            partial(through_provider, ed=ed, people=people[: args.n], pool=pool, dkim=None),
        )
    best = max(pools, key=lambda p: next(n / t for lbl, n, t in rows if f"pool {p}," in lbl))
    for algorithm in ("rsa-sha256", "ed25519-sha256"):
        signer = dkim_signer(algorithm)
        run(
            f"provider, pool {best}, DKIM {algorithm}",
            dkim_n,
            partial(through_provider, ed=ed, people=people[:dkim_n], pool=best, dkim=signer),
        )
    for label, per_message in (("connection per message", True), ("one reused connection", False)):
        run(
            f"naive, {label}",
            args.naive_n,
            partial(naive, ed=ed, people=people[: args.naive_n], per_message=per_message),
        )

    size = len(SMTPProvider(host="x", port=25).message(ed, people[1])[1])
    print(f"\nSMTP to Postfix smtp-sink, {size / 1024:.1f} KB messages, 127.0.0.1\n")
    print(f"{'mode':<44} {'messages':>9} {'seconds':>8} {'msg/s':>8} {'µs/msg':>8}")
    for label, n, elapsed in rows:
        print(f"{label:<44} {n:>9,} {elapsed:>8.2f} {n / elapsed:>8,.0f} {elapsed / n * 1e6:>8.0f}")
    fast = max(n / t for label, n, t in rows if "no DKIM" in label)
    for label, n, elapsed in rows:
        if label.startswith("naive"):
            print(f"ratio provider (best, no DKIM) / {label}: {fast / (n / elapsed):.1f}x")
    print("target: >= 3,000 msg/s without DKIM:", "met" if fast >= 3000 else "NOT met")


if __name__ == "__main__":
    main()
