"""Benchmark: import a 100,000-row subscriber CSV into a fresh SQLite database.

Not a test. Run with ``.venv/bin/python bench/import_bench.py [ROWS]``; prints a
table of rows, seconds and rows/s for a first import and an unchanged re-import.
Target: the first import of 100,000 rows in under 30 s on the 2-core machine.
"""

from __future__ import annotations

import csv
import random
import sys
import tempfile
import time
from pathlib import Path

from newsletter import db
from newsletter.audience.imports import ImportReport, import_csv
from newsletter.config import NewsletterSettings, Settings
from newsletter.models import SubscriptionStatus

FIRST = ["Amara", "Benoît", "Chen", "Diego", "Eilidh", "Farah", "Göran", "Hana", "Inês", "Søren"]
LAST = ["Okafor", "Lefèvre", "Jing", "Hernández", "MacLeod", "Haddad", "Petrović", "Suzuki"]
ZONES = ["Europe/London", "America/New_York", "Asia/Tokyo", "Africa/Lagos", "Australia/Sydney", ""]
LISTS = ["daily-briefing", "good-news", "daily-briefing;good-news"]


def write_csv(path: Path, rows: int, seed: int = 1) -> None:
    """Write ``rows`` fictional subscribers with unique @example.* addresses."""
    rnd = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["email", "name", "timezone", "newsletters"])
        for i in range(rows):
            first, last = rnd.choice(FIRST), rnd.choice(LAST)
            domain = ("example.com", "example.org", "example.net")[i % 3]
            out.writerow(
                [
                    f"{first.lower()}.{last.lower()}.{i}@{domain}",
                    f"{first} {last}",
                    rnd.choice(ZONES),
                    rnd.choice(LISTS),
                ]
            )


def run(settings: Settings, path: Path) -> tuple[float, ImportReport]:
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    start = time.perf_counter()
    with db.transaction(sessions) as session:
        report = import_csv(
            session, path=path, settings=settings, status=SubscriptionStatus.CONFIRMED
        )
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed, report


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "subscribers.csv"
        write_csv(path, rows)
        settings = Settings(
            database={"url": f"sqlite:///{tmp}/bench.db"},  # type: ignore[arg-type]
            newsletters={
                "daily-briefing": NewsletterSettings(name="Daily"),
                "good-news": NewsletterSettings(name="Good News"),
            },
        )
        backend = settings.database_url.split(":", 1)[0]  # NEWSLETTER_DATABASE__URL wins
        results = []
        for label in ("first import", "re-import (unchanged)"):
            seconds, report = run(settings, path)
            assert not report.errors, report.errors[:3]
            results.append((label, report.rows, seconds))
        print(f"{'run (' + backend + ')':<34}{'rows':>10}{'seconds':>10}{'rows/s':>12}")
        for label, n, seconds in results:
            print(f"{label:<34}{n:>10,}{seconds:>10.2f}{n / seconds:>12,.0f}")


if __name__ == "__main__":
    main()
