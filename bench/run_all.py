"""Run every benchmark in turn and print their tables (not tests).

    .venv/bin/python bench/run_all.py [--quick]

--quick shrinks the sizes (100,000 subscribers instead of 1,000,000, and so on) for a
fast look; the numbers in docs/benchmarks.md come from the full run on an otherwise
idle 2-core machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

FULL: list[list[str]] = [
    ["compose_bench.py"],
    ["pipeline_bench.py"],
    ["import_bench.py"],
    ["send_bench.py", "--processes", "1"],
    ["send_bench.py", "--processes", "2", "--naive", "0"],
    ["smtp_bench.py", "--dkim-n", "2000"],
    ["events_bench.py"],
    ["web_bench.py"],
    ["log_bench.py"],
    ["worker_bench.py"],
]
QUICK: list[list[str]] = [
    ["compose_bench.py", "--runs", "50", "--recipients", "2000"],
    ["pipeline_bench.py", "--runs", "5"],
    ["import_bench.py", "20000"],
    ["send_bench.py", "--subscribers", "100000", "--naive", "1000"],
    ["smtp_bench.py", "--n", "3000", "--naive-n", "500", "--dkim-n", "300"],
    ["events_bench.py", "--events", "10000"],
    ["web_bench.py", "--subscribers", "5000", "--seconds", "3"],
    ["log_bench.py", "--rows", "100000", "--n", "50"],
    ["worker_bench.py", "--subscribers", "50000"],
]


def main() -> int:
    parser = argparse.ArgumentParser(description="Run all benchmarks.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a fast look")
    args = parser.parse_args()
    failed = 0
    for cmd in QUICK if args.quick else FULL:
        print(f"\n## {' '.join(cmd)}  ({time.strftime('%Y-%m-%d %H:%M')})", flush=True)
        failed += subprocess.run([sys.executable, str(BENCH / cmd[0]), *cmd[1:]]).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
