"""Helpers for the real-browser tests: Debian's chromium under Playwright (nothing is
downloaded), a `newsletter serve` subprocess on 127.0.0.1, screenshots at two widths,
axe-core on each page, and reading the outbox's .eml files.

A missing chromium or playwright skips the browser tests with the reason, except that
with ``CI=true`` it fails them (CI must run them: `.ci/run` installs chromium).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import ROOT, write_config
from tests.waiting import wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

#: Chromium as root on a closed network: no sandbox (root), no GPU, nothing phoning home.
#: Sandboxed iframes (the console's edition previews) stay in the page's process, or
#: headless screenshots show an isolated frame blank although it has loaded.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-features=IsolateSandboxedIframes",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SITE = "https://news.example.com"  # site.base_url in tests/conftest.py's config
SCREENSHOTS = ROOT / "var" / "screenshots"
WIDTHS = (1280, 375)
SERIOUS = ("serious", "critical")


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for module in ("playwright", "axe_playwright_python"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: .venv/bin/pip install -e '.[dev]'"
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed: apt-get install -y chromium"
    return None


def require_browser() -> str:
    """The chromium binary; skips (fails under CI=true) when the tests cannot run."""
    reason = missing_browser()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    binary = shutil.which("chromium")
    assert binary
    return binary


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's chromium under Playwright, closed on the way out."""
    binary = require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----- the server -----------------------------------------------------------------------


@dataclass
class Site:
    """A temporary config (SQLite, the outbox provider) and the environment to run it."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def database(self) -> Path:
        return self.root / "newsletter.db"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @classmethod
    def create(cls, root: Path, **env: str) -> Site:
        site = cls(root, env)
        write_config(site.config, f"sqlite:///{site.database}")
        site.cli("init")
        return site

    def environ(self) -> dict[str, str]:
        # Hermetic: no NEWSLETTER_* from the caller's shell, only this site's own.
        base = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        return {**base, **self.env}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "newsletter", "--config", str(self.config), *args]

    def cli(self, *args: str) -> str:
        """Run one `newsletter` command as a user would; its output (stdout + stderr)."""
        done = subprocess.run(
            self.command(*args),
            cwd=self.root,
            env=self.environ(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, (args, done.returncode, output)
        assert "Traceback" not in output, output
        return output


def _answers(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"newsletter serve exited with {proc.returncode}: {log.read_text()}")
    try:
        with urllib.request.urlopen(url + "/", timeout=1) as answer:
            return int(answer.status) == 200
    except urllib.error.HTTPError as exc:
        exc.close()
        return False
    except OSError:
        return False


@contextmanager
def serving(site: Site) -> Iterator[str]:
    """`newsletter serve` on a free port of 127.0.0.1 until the block ends; its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = site.root / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            site.command("serve", "--host", "127.0.0.1", "--port", str(port)),
            cwd=site.root,
            env=site.environ(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: _answers(url, proc, log), timeout=30, what=f"newsletter serve on {url}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----- pages: screenshots and axe-core ----------------------------------------------------


class Pages:
    """Screenshots of each page at 1280 and 375 px under var/screenshots/, and axe-core
    on each: serious or critical violations, and pages wider than the screen, are
    collected to assert on at the end (so one run shows every page's problems)."""

    def __init__(self, prefix: str) -> None:
        from axe_playwright_python.sync_playwright import Axe  # type: ignore[import-untyped]

        self.axe = Axe()
        self.prefix = prefix
        self.count = 0
        self.taken: list[Path] = []
        self.violations: list[str] = []
        self.overflows: list[str] = []
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for old in SCREENSHOTS.glob(f"{prefix}-*.png"):
            old.unlink()

    def check(self, page: Page, name: str, *, axe: bool = True) -> None:
        """Screenshot ``page`` at both widths and run axe-core on it (at each width;
        ``axe=False`` for a page without JavaScript, where axe-core cannot run)."""
        self.count += 1
        size = page.viewport_size or {"width": WIDTHS[0], "height": 800}
        try:
            for width in WIDTHS:
                page.set_viewport_size({"width": width, "height": 800})
                path = SCREENSHOTS / f"{self.prefix}-{self.count:02d}-{name}-{width}.png"
                page.screenshot(path=str(path), full_page=True)
                self.taken.append(path)
                if axe:
                    self._axe(page, f"{name} at {width} px")
                wide = page.evaluate("document.documentElement.scrollWidth")
                if wide > width:  # something does not fit: the reader scrolls sideways
                    self.overflows.append(f"{name} is {wide} px wide at {width} px ({path.name})")
        finally:
            page.set_viewport_size(size)

    def part(self, page: Page, selector: str, name: str) -> None:
        """Screenshot one element at both widths: full-page screenshots leave iframes
        blank in headless Chromium, an element's own screenshot shows them."""
        size = page.viewport_size or {"width": WIDTHS[0], "height": 800}
        try:
            for width in WIDTHS:
                page.set_viewport_size({"width": width, "height": 800})
                path = SCREENSHOTS / f"{self.prefix}-{self.count:02d}-{name}-{width}.png"
                page.locator(selector).screenshot(path=str(path))
                self.taken.append(path)
        finally:
            page.set_viewport_size(size)

    def _axe(self, page: Page, where: str) -> None:
        results: dict[str, Any] = self.axe.run(page).response
        for v in results["violations"]:
            if v.get("impact") in SERIOUS:
                targets = [" ".join(map(str, n.get("target", []))) for n in v["nodes"]]
                self.violations.append(
                    f"{where} ({page.url}): {v['id']} ({v['impact']}): {v['help']} at {targets}"
                )

    def assert_accessible(self) -> None:
        """No serious or critical axe-core violation, and no page wider than the screen."""
        assert not self.violations, "axe-core found:\n" + "\n".join(self.violations)
        assert not self.overflows, "\n".join(self.overflows)


# ----- the outbox -----------------------------------------------------------------------


def read_eml(path: Path) -> Message:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def emls(folder: Path) -> list[Message]:
    return [read_eml(p) for p in sorted(folder.glob("*.eml"))]


def recipient(msg: Message) -> str:
    """The address a message is to (without the display name)."""
    return email.utils.parseaddr(str(msg["To"]))[1]


def text_part(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode()
    raise AssertionError("no text part")


def html_part(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/html":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode()
    raise AssertionError("no html part")


def local(url: str, server: str) -> str:
    """A link from a mail (on the site's public address) on the local server."""
    assert url.startswith(SITE + "/"), url
    return server + url.removeprefix(SITE)
