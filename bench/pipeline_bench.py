"""Benchmark: compose an edition end to end — feeds parsed → stories stored →
edition built → HTML + text rendered and checked — on the sample feeds.

    .venv/bin/python bench/pipeline_bench.py [--runs 20]

Target (DESIGN.md): ≤ 50 ms per edition. Each run uses a fresh SQLite database so
every feed entry is parsed, sanitised and inserted again. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter import db  # noqa: E402
from newsletter.config import load_settings  # noqa: E402
from newsletter.content import editions, render, stories  # noqa: E402
from tests.conftest import write_config  # noqa: E402


def one_run(tmp: Path, n: int) -> dict[str, float]:
    cfg = write_config(tmp / f"c{n}.toml", f"sqlite:///{tmp / f'p{n}.db'}")
    settings = load_settings(cfg)
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    times: dict[str, float] = {}
    with sessions.begin() as s:
        t0 = time.perf_counter()
        reports = stories.fetch_newsletter(s, newsletter="daily-briefing", settings=settings)
        t1 = time.perf_counter()
        edition, _ = editions.build_edition(s, settings=settings, slug="daily-briefing")
        t2 = time.perf_counter()
        content = editions.render_edition(edition, settings)
        problems = render.check_rendered(content)
        t3 = time.perf_counter()
    engine.dispose()
    assert not problems and all(r.error is None for r in reports)
    times.update(fetch=t1 - t0, build=t2 - t1, render=t3 - t2, total=t3 - t0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description="compose an edition end to end")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        one_run(tmp, -1)  # warm: imports, template compilation
        runs = [one_run(tmp, n) for n in range(args.runs)]
    print(f"compose end to end, sample feeds (3 feeds, 19 entries), {args.runs} runs\n")
    print("| stage | mean | max |\n|---|---|---|")
    for key, label in [
        ("fetch", "parse + sanitise + store feeds"),
        ("build", "select + freeze stories"),
        ("render", "render HTML + text + checks"),
        ("total", "total (target <= 50 ms)"),
    ]:
        values = [r[key] * 1000 for r in runs]
        print(f"| {label} | {statistics.mean(values):.1f} ms | {max(values):.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
