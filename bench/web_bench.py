"""wrk against `newsletter serve`, beside a minimal Starlette app served the same way.

Sets up what the README's quick start does (SQLite, the outbox provider, the sample
feeds) with ``--subscribers`` confirmed readers, sends today's briefing, and takes
each reader's one-click unsubscribe URL from the List-Unsubscribe header of their
.eml. Then, at ``--connections`` connections for ``--seconds`` each:

- the RFC 8058 one-click POST, every request a different reader (a real unsubscribe:
  token checked, subscription and suppression written);
- the edition's web version in the archive (``/archive/daily-briefing/<date>``);
- the same two routes on a bare Starlette app returning a fixed page, under uvicorn
  with the same logging (the stack's ceiling on this machine, measured in the same run).

Prints requests/s and p99 latency for each and the ratio to the ceiling. Needs the
Debian package ``wrk``.

    .venv/bin/python bench/web_bench.py [--subscribers 30000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import date
from email.parser import BytesHeaderParser
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import write_config  # noqa: E402

CEILING = '''
"""The stack's ceiling: Starlette under uvicorn, two routes, fixed answers."""
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

PAGE = HTMLResponse("<!doctype html><title>x</title><p>" + "x" * 2000)


async def unsubscribe(request):
    await request.body()
    return HTMLResponse("<!doctype html><title>You are unsubscribed</title><p>Done.</p>")


async def archive(request):
    return PAGE


app = Starlette(routes=[
    Route("/unsubscribe/{token}", unsubscribe, methods=["POST"]),
    Route("/archive/{slug}/{day}", archive),
])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), proxy_headers=False)
'''

#: wrk script: each thread walks its own share of the paths, one per request.
ONE_CLICK = textwrap.dedent(
    """
    local counter = 0
    local threads = {}
    function setup(thread)
      thread:set("id", counter)
      counter = counter + 1
      table.insert(threads, thread)
    end
    function init(args)
      paths = {}
      for line in io.lines(args[1]) do paths[#paths + 1] = line end
      step = tonumber(args[2])
      n = id + 1
    end
    function request()
      local path = paths[n]
      n = n + step
      if n > #paths then n = id + 1 end
      return wrk.format("POST", path,
        {["Content-Type"] = "application/x-www-form-urlencoded"},
        "List-Unsubscribe=One-Click")
    end
    """
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str) -> None:
    for _ in range(400):
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"no answer from {url}")


def _seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def _wrk(url: str, *, connections: int, seconds: int, script: list[str]) -> tuple[float, float]:
    """Requests/s and p99 latency (s) of one wrk run; exits if any answer was not 2xx."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *script[:2], url]
        + script[2:],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors against {url}:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = _seconds(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    return rate, p99


def _serve(cmd: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(f"http://127.0.0.1:{port}/archive/x/y")
    return server


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=30_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = _port()
        cfg = write_config(folder / "config.toml", f"sqlite:///{folder / 'newsletter.db'}")
        text = cfg.read_text(encoding="utf-8")
        cfg.write_text(
            re.sub(r'base_url = "[^"]*"', f'base_url = "http://127.0.0.1:{port}"', text),
            encoding="utf-8",
        )
        env = {**os.environ, "NEWSLETTER_CONFIG": str(cfg)}
        newsletter = [sys.executable, "-m", "newsletter"]

        def run(*argv: str) -> None:
            subprocess.run([*newsletter, *argv], env=env, check=True, capture_output=True)

        people = folder / "people.csv"
        with people.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["email", "name"])
            writer.writerows(
                (f"reader{i}@example.org", f"Reader {i}") for i in range(args.subscribers)
            )
        run("init")
        run(
            "subscribers",
            "import",
            str(people),
            "--status",
            "confirmed",
            "--newsletter",
            "daily-briefing",
        )
        run("run", "--newsletter", "daily-briefing")
        headers = BytesHeaderParser()
        paths = []
        for eml in sorted((folder / "outbox").rglob("*.eml")):
            with eml.open("rb") as fh:
                value = headers.parse(fh)["List-Unsubscribe"]
            paths.append(re.search(r"<https?://[^/>]+(/unsubscribe/[^>]+)>", value).group(1))  # type: ignore[arg-type, union-attr]
        (folder / "paths.txt").write_text("\n".join(paths) + "\n", encoding="utf-8")
        lua = folder / "one_click.lua"
        lua.write_text(ONE_CLICK, encoding="utf-8")
        one_click = ["-s", str(lua), "--", str(folder / "paths.txt"), "2"]  # script, its args
        page = f"/archive/daily-briefing/{date.today().isoformat()}"
        base = f"http://127.0.0.1:{port}"
        ceiling_py = folder / "ceiling.py"
        ceiling_py.write_text(CEILING, encoding="utf-8")

        results = {}
        ours = _serve([*newsletter, "serve", "--port", str(port)], env, port)
        try:
            assert httpx.get(base + page).status_code == 200, "no web version to serve"
            _wrk(base + page, connections=args.connections, seconds=2, script=[])  # warm up
            results["ours", "archive"] = _wrk(
                base + page, connections=args.connections, seconds=args.seconds, script=[]
            )
            results["ours", "one-click"] = _wrk(
                base + "/", connections=args.connections, seconds=args.seconds, script=one_click
            )
        finally:
            _stop(ours)
        ceiling = _serve([sys.executable, str(ceiling_py), str(port)], env, port)
        try:
            _wrk(base + page, connections=args.connections, seconds=2, script=[])
            results["ceiling", "archive"] = _wrk(
                base + page, connections=args.connections, seconds=args.seconds, script=[]
            )
            results["ceiling", "one-click"] = _wrk(
                base + "/", connections=args.connections, seconds=args.seconds, script=one_click
            )
        finally:
            _stop(ceiling)
        left = subprocess.run(
            [*newsletter, "subscribers", "list", "--status", "unsubscribed", "--limit", "1"],
            env=env,
            capture_output=True,
            text=True,
        )
        if left.returncode != 0 or "reader" not in left.stdout:
            raise SystemExit("the one-click POSTs unsubscribed nobody")

    targets = {"one-click": 0.40, "archive": 0.60}
    print(f"## web_bench.py\n{args.connections} connections, {args.seconds} s each, "
          f"{args.subscribers:,} readers, SQLite\n")  # fmt: skip
    print("| route | newsletter serve | p99 | Starlette ceiling | p99 | ratio | target |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for route in ("one-click", "archive"):
        rate, p99 = results["ours", route]
        top, top99 = results["ceiling", route]
        print(
            f"| {route} | {rate:,.0f} req/s | {p99 * 1000:.1f} ms | {top:,.0f} req/s "
            f"| {top99 * 1000:.1f} ms | {rate / top:.0%} | ≥ {targets[route]:.0%}, p99 < 50 ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
