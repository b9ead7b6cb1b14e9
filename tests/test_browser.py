"""A reader's whole journey in a real browser (Debian's chromium under Playwright)
against `newsletter serve` on 127.0.0.1: sign up for both newsletters, confirm from
the .eml in the outbox, receive an edition, leave the daily briefing in one click as
a mail provider does (RFC 8058), take it back in the preferences, read the archive.
Every public page is screenshotted at 1280 and 375 px (var/screenshots/) and checked
by axe-core: no serious or critical violation. And the ALTCHA proof of work, solved
by static/site.js.

Skips with the reason when chromium or playwright is missing, except under CI=true.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import NoResultFound

from newsletter import db
from newsletter.models import Subscriber, SubscriptionStatus
from tests.browser import (
    SITE,
    Pages,
    Site,
    chromium,
    emls,
    html_part,
    local,
    read_eml,
    recipient,
    serving,
    text_part,
)
from tests.conftest import ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Route

READER = "ana.reader@example.org"
READER_NAME = "Ana Reader"
TIMEZONE = "Europe/Lisbon"  # the browser's own: site.js picks it for the form
CONFIRMED, UNSUBSCRIBED = SubscriptionStatus.CONFIRMED, SubscriptionStatus.UNSUBSCRIBED


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


class Visit:
    """One browser context on one server: nothing leaves 127.0.0.1, and every console
    error (a CSP violation, a script error) is kept for the test to assert on."""

    def __init__(
        self, browser: Browser, server: str, *, timezone: str | None, javascript: bool
    ) -> None:
        self.server = server
        self.context: BrowserContext = browser.new_context(
            base_url=server,
            viewport={"width": 1280, "height": 800},
            locale="en-GB",
            timezone_id=timezone,
            java_script_enabled=javascript,
        )
        self.context.set_default_timeout(10_000)
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.context.route(lambda url: not url.startswith(server + "/"), self._block)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _block(self, route: Route) -> None:
        self.outside.append(route.request.url)
        route.abort()

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        if msg.text.startswith("Failed to load resource") and msg.location["url"] == self.page.url:
            return  # the page itself answered 4xx: the test asserts on that status
        self.errors.append(f"{self.page.url}: {msg.text}")

    def close(self) -> None:
        self.context.close()


Open = Callable[..., Visit]


@pytest.fixture
def open_visit(browser: Browser) -> Iterator[Open]:
    """``open_visit(server, javascript=True)``: a new browser context, closed at teardown."""
    opened: list[Visit] = []

    def open_(server: str, *, javascript: bool = True) -> Visit:
        opened.append(Visit(browser, server, timezone=TIMEZONE, javascript=javascript))
        return opened[-1]

    yield open_
    for visit in opened:
        visit.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Site], str]]:
    """``serve(site)``: `newsletter serve` for ``site``, its URL; stopped at teardown."""
    with ExitStack() as stack:
        yield lambda site: stack.enter_context(serving(site))


def _subscriptions(site: Site, address: str) -> dict[str, tuple[SubscriptionStatus, str | None]]:
    engine = db.make_engine(f"sqlite:///{site.database}")
    try:
        with db.session_factory(engine)() as s:
            sub = s.scalars(select(Subscriber).where(Subscriber.email == address)).one()
            return {x.newsletter: (x.status, x.unsubscribed_via) for x in sub.subscriptions}
    finally:
        engine.dispose()


def _link(text: str, path: str) -> str:
    found = re.search(re.escape(SITE) + re.escape(path) + r"[^\s<>\"']+", text)
    assert found, f"no {path} link in {text[:2000]}"
    return found.group(0)


def _heading(page: Page) -> str:
    return page.locator("h1").inner_text()


@pytest.mark.timeout(180)
def test_a_reader_signs_up_confirms_leaves_in_one_click_and_comes_back(
    open_visit: Open, serve: Callable[[Site], str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    pages = Pages("reader")
    site = Site.create(tmp_path)
    server = serve(site)
    visit = open_visit(server)
    page = visit.page

    # Sign up for both newsletters.
    page.goto("/")
    assert _heading(page) == "Sign up for our free newsletters"
    daily = page.get_by_role("checkbox", name=re.compile("^The Daily Ledger"))
    weekly = page.get_by_role("checkbox", name=re.compile("^Good News Weekly"))
    expect(page.locator("form")).to_contain_text("Saturdays at 08:00 London time")
    expect(page.get_by_label("Timezone")).to_have_value(TIMEZONE)  # site.js guessed it
    daily.check()
    weekly.check()
    page.get_by_label("Email address").fill(READER)
    page.get_by_label(re.compile("^Name")).fill(READER_NAME)
    pages.check(page, "signup")
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator("h1")).to_have_text("Check your inbox")
    pages.check(page, "check-your-inbox")

    # The confirmation email: to the address, with nothing the visitor typed.
    [mail] = emls(site.outbox / "single" / "confirm")
    assert recipient(mail) == READER
    for part in (text_part(mail), html_part(mail), str(mail)):
        assert READER_NAME not in part
    assert "The Daily Ledger" in text_part(mail) and "Good News Weekly" in text_part(mail)
    confirm_url = local(_link(text_part(mail), "/confirm/"), server)

    # The link shows one button (a GET changes nothing); the button confirms.
    answer = page.goto(confirm_url)
    assert answer is not None and answer.status == 200
    assert _heading(page) == "Confirm your subscription"
    expect(page.locator("main li")).to_have_text(
        [re.compile("^The Daily Ledger"), re.compile("^Good News Weekly")]
    )
    assert {s for s, _ in _subscriptions(site, READER).values()} == {SubscriptionStatus.PENDING}
    pages.check(page, "confirm")
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("h1")).to_have_text("Welcome!")
    expect(page.locator("main")).to_contain_text(
        "You will receive The Daily Ledger and Good News Weekly."
    )
    pages.check(page, "welcome")
    assert _subscriptions(site, READER) == {
        "daily-briefing": (CONFIRMED, None),
        "good-news": (CONFIRMED, None),
    }

    # An edition goes out (fetch, build, check, send) through the CLI.
    site.cli("run", "--newsletter", "daily-briefing")
    [folder] = (site.outbox / "daily-briefing").glob("edition-*")
    [edition] = [m for m in emls(folder) if recipient(m) == READER]
    assert edition["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https = [
        u.strip(" <>")
        for u in str(edition["List-Unsubscribe"]).split(",")
        if u.strip(" <>").startswith("https:")
    ]
    assert len(https) == 1 and https[0].startswith(SITE + "/unsubscribe/")
    unsubscribe_url = local(https[0], server)

    # The confirmation link again: already subscribed, and the latest edition is linked.
    page.goto(confirm_url)
    expect(page.locator("h1")).to_have_text("You are already subscribed")
    latest = page.get_by_role("link", name="Read the latest The Daily Ledger")
    expect(latest).to_have_attribute("href", re.compile(r"^/archive/daily-briefing/\d{4}-"))
    pages.check(page, "welcome-again")

    # The unsubscribe link, opened: it asks first and changes nothing.
    page.goto(unsubscribe_url)
    assert _heading(page) == "Unsubscribe from The Daily Ledger?"
    pages.check(page, "unsubscribe")
    assert _subscriptions(site, READER)["daily-briefing"][0] is CONFIRMED

    # One click, as a mail provider sends it: no cookie, no CSRF token, no browser.
    for _ in range(2):  # idempotent
        done = httpx.post(
            unsubscribe_url,
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
            timeout=10,
        )
        assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert _subscriptions(site, READER) == {
        "daily-briefing": (UNSUBSCRIBED, "one-click"),
        "good-news": (CONFIRMED, None),  # the other newsletter stays
    }

    # The page's own button (after the fact: still fine, still one-click's doing).
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.locator("h1")).to_have_text("You are unsubscribed")
    expect(page.locator("main")).to_contain_text("You will not receive The Daily Ledger any more.")
    pages.check(page, "unsubscribed")
    assert _subscriptions(site, READER)["daily-briefing"] == (UNSUBSCRIBED, "one-click")

    # Preferences, from the link in the email: the daily briefing back on.
    preferences_url = local(_link(text_part(edition), "/preferences/"), server)
    page.goto(preferences_url)
    assert _heading(page) == "Your preferences"
    expect(page.locator(".lede")).to_contain_text(READER)
    daily = page.get_by_role("checkbox", name=re.compile("^The Daily Ledger"))
    weekly = page.get_by_role("checkbox", name=re.compile("^Good News Weekly"))
    expect(daily).not_to_be_checked()
    expect(weekly).to_be_checked()
    expect(page.get_by_label(re.compile("^Name"))).to_have_value(READER_NAME)
    expect(page.get_by_label("Timezone")).to_have_value(TIMEZONE)
    pages.check(page, "preferences")
    daily.check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    expect(daily).to_be_checked()
    expect(weekly).to_be_checked()
    pages.check(page, "preferences-saved")
    subs = _subscriptions(site, READER)
    assert {n: s for n, (s, _) in subs.items()} == {
        "daily-briefing": CONFIRMED,
        "good-news": CONFIRMED,
    }

    # "Delete me" asks first; going back keeps everything.
    page.get_by_role("button", name="Delete me").click()
    expect(page.locator("h1")).to_have_text(f"Delete everything about {READER}?")
    pages.check(page, "delete")
    page.get_by_role("link", name="No, keep my subscriptions").click()
    expect(page.locator("h1")).to_have_text("Your preferences")
    assert set(_subscriptions(site, READER)) == {"daily-briefing", "good-news"}

    # The archive: the newsletters, the daily briefing's editions, the web version.
    page.get_by_role("navigation", name="Site").get_by_role("link", name="Archive").click()
    expect(page.locator("h1")).to_have_text("Archive")
    web_version = _link(text_part(edition), "/archive/daily-briefing/")
    assert web_version in html_part(edition)  # "View in your browser"
    day = web_version.rsplit("/", 1)[1]
    expect(page.locator("main")).to_contain_text("Good News Weekly")
    expect(page.locator("main")).to_contain_text("No edition yet.")  # good-news: none sent
    pages.check(page, "archive")
    page.get_by_role("main").get_by_role("link", name="The Daily Ledger").click()
    expect(page.locator("h1")).to_have_text("The Daily Ledger")
    editions = page.locator("ol.editions li")
    expect(editions).to_have_count(1)
    expect(editions.first).to_contain_text(edition["Subject"].split(": ", 1)[1])
    pages.check(page, "archive-list")
    editions.first.get_by_role("link").click()
    assert page.url == local(web_version, server)
    expect(page.locator("h1")).to_have_text(str(edition["Subject"]))
    expect(page.locator("time")).to_have_attribute("datetime", day)
    titles = page.locator("section.story h2").all_inner_texts()
    mailed = " ".join(text_part(edition).split())
    assert len(titles) >= 3 and all(" ".join(t.split()) in mailed for t in titles), titles
    content = page.content()
    assert READER not in content and READER_NAME not in content
    assert "/unsubscribe/" not in content and "/preferences/" not in content
    pages.check(page, "edition")

    # A link that does not work: a plain page and a 4xx, never a traceback.
    answer = page.goto(unsubscribe_url[:-6] + "xxxxxx")
    assert answer is not None and answer.status == 400
    assert _heading(page) == "This link does not work"
    pages.check(page, "bad-link")

    # Last, the reader takes their data and goes: the JSON file, then the erasure.
    page.goto(preferences_url)
    with page.expect_download() as download:
        page.get_by_role("link", name="Download my data").click()
    held = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert held["email"] == READER and held["deliveries"][0]["status"] == "sent"
    page.get_by_role("button", name="Delete me").click()
    page.get_by_role("button", name="Yes, delete me").click()
    expect(page.locator("h1")).to_have_text("Your data is deleted")
    pages.check(page, "deleted")
    with pytest.raises(NoResultFound):
        _subscriptions(site, READER)

    assert visit.outside == [], "pages asked for something outside the site"
    assert visit.errors == [], visit.errors
    pages.assert_accessible()


@pytest.mark.timeout(120)
def test_altcha_the_sign_up_needs_the_proof_of_work_solved_in_the_browser(
    open_visit: Open, serve: Callable[[Site], str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    pages = Pages("altcha")
    site = Site.create(tmp_path, NEWSLETTER_WEB__CAPTCHA="altcha")
    confirmations = site.outbox / "single" / "confirm"
    server = serve(site)
    # Without JavaScript the form goes as a plain post, with no solution: refused.
    no_script = open_visit(server, javascript=False)
    plain = no_script.page
    plain.goto("/")
    plain.get_by_role("checkbox", name=re.compile("^Good News Weekly")).check()
    plain.get_by_label("Email address").fill("no.script@example.org")
    with plain.expect_navigation() as sent:
        plain.get_by_role("button", name="Sign up").click()
    assert sent.value is not None and sent.value.status == 400
    expect(plain.get_by_role("alert")).to_have_text("The check in your browser did not finish.")
    expect(plain.locator("noscript .error")).to_be_visible()  # it says why
    assert "This check needs JavaScript" in plain.locator("noscript").inner_html()
    pages.check(plain, "signup-refused", axe=False)  # axe-core needs JavaScript
    assert emls(confirmations) == []

    # With it, site.js fetches the challenge, solves it, and lets the form go.
    visit = open_visit(server)
    page = visit.page
    page.goto("/")
    expect(page.locator("#altcha-status")).to_have_text(
        "Check done: you can sign up.", timeout=30_000
    )
    assert page.locator("#altcha-payload").input_value()
    button = page.get_by_role("button", name="Sign up")
    expect(button).to_be_enabled()
    pages.check(page, "signup")
    page.get_by_label("Email address").fill("with.script@example.org")
    button.click()  # no newsletter chosen: the form again, with a new challenge
    expect(page.get_by_role("alert")).to_contain_text("Choose at least one newsletter")
    expect(page.locator("#altcha-status")).to_have_text(
        "Check done: you can sign up.", timeout=30_000
    )
    pages.check(page, "signup-error")
    page.get_by_role("checkbox", name=re.compile("^Good News Weekly")).check()
    expect(page.get_by_label("Email address")).to_have_value("with.script@example.org")
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator("h1")).to_have_text("Check your inbox")
    assert [recipient(m) for m in emls(confirmations)] == ["with.script@example.org"]

    for v in (no_script, visit):
        assert v.outside == [] and v.errors == [], (v.outside, v.errors)
    pages.assert_accessible()


# ----- the staff console ------------------------------------------------------------

STAFF_PASSWORD = "correct horse battery"


def _staff(site: Site, email: str, role: str) -> None:
    done = subprocess.run(
        site.command("staff", "add", email, "--role", role),
        cwd=site.root,
        env=site.environ(),
        input=STAFF_PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _log_in(page: Page, email: str) -> None:
    from playwright.sync_api import expect

    page.goto("/admin")
    expect(page.locator("h1")).to_have_text("Staff login")  # sent to the login first
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("h1")).to_have_text("Dashboard")


@pytest.mark.timeout(240)
def test_staff_build_preview_test_send_send_watch_and_ask_why(
    open_visit: Open, serve: Callable[[Site], str], tmp_path: Path
) -> None:
    """An editor builds, previews, test-sends and sends an edition and watches it
    go; an operator reads the delivery log and asks why one reader did not get it."""
    from playwright.sync_api import expect

    pages = Pages("console")
    site = Site.create(tmp_path)
    site.cli(
        "subscribers", "import", str(ROOT / "subscribers" / "sample.csv"), "--status", "confirmed"
    )
    site.cli("subscribers", "suppress", "amara.okafor@example.com", "--detail", "asked by phone")
    site.cli("stories", "fetch", "--newsletter", "daily-briefing")
    _staff(site, "ed@example.org", "editor")
    _staff(site, "ops@example.org", "operator")
    _staff(site, "admin@example.org", "admin")
    server = serve(site)
    visit = open_visit(server)
    page = visit.page

    # The editor: log in, look at the stories, build today's briefing.
    _log_in(page, "ed@example.org")
    pages.check(page, "dashboard-empty")
    expect(page.get_by_role("link", name="Delivery log")).to_have_count(0)  # not theirs
    page.get_by_role("link", name="Stories").click()
    expect(page.locator("h1")).to_contain_text("Stories")
    pages.check(page, "stories")
    page.get_by_role("link", name="Editions").click()
    page.get_by_label("Newsletter", exact=True).first.select_option("daily-briefing")
    page.get_by_role("button", name="Build").click()
    expect(page.locator("h1")).to_contain_text("Edition #")
    found = re.search(r"/admin/editions/(\d+)", page.url)
    assert found, page.url
    edition_id = int(found.group(1))
    edition_url = f"/admin/editions/{edition_id}"
    expect(page.locator("iframe")).to_have_count(2)
    expect(page.locator(".passed")).to_have_text("All checks passed.")
    frame = page.frame_locator("iframe").first
    expect(frame.locator("body")).to_contain_text("Read the full story")
    pages.check(page, "edition-built")
    pages.part(page, ".edition-previews", "edition-preview")

    # A test copy to the editor's own address, then the real send.
    page.get_by_role("button", name=re.compile("^Send a test copy")).click()
    expect(page.locator("main")).to_contain_text("ed@example.org")
    copies = [read_eml(p) for p in sorted(site.outbox.rglob("*.eml"))]
    tests = [m for m in copies if recipient(m) == "ed@example.org"]
    assert len(tests) == 1, "one test copy, to the editor"
    page.goto(edition_url)
    page.get_by_role("link", name="Send now…").click()
    expect(page.locator("h1")).to_have_text(f"Send edition #{edition_id} now?")
    send = page.get_by_role("button", name=re.compile(r"^Send to \d+ subscribers$"))
    audience = int(re.findall(r"\d+", send.inner_text())[0])
    assert audience == 18  # the sample's 19 daily-briefing readers but the suppressed one
    pages.check(page, "send-confirm")
    send.click()
    expect(page.locator('[data-field="status"]')).to_have_text("sent", timeout=60_000)
    expect(page.locator('[data-field="sent"]')).to_have_text(str(audience))
    pages.check(page, "edition-sent")
    page.get_by_role("button", name="Log out").click()
    expect(page.locator("h1")).to_have_text("Staff login")

    # The operator: the dashboard's figures, the log, and why Amara got nothing.
    _log_in(page, "ops@example.org")
    expect(page.locator("main")).to_contain_text(f"#{edition_id}")
    expect(page.locator("figure.chart img").first).to_be_visible()
    pages.check(page, "dashboard")
    page.get_by_role("link", name="Delivery log").click()
    page.get_by_label("Edition", exact=True).fill(str(edition_id))
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr")).to_have_count(audience)
    page.get_by_label("Email address").fill("amara.okafor@example.com")
    page.get_by_role("button", name="Ask").click()
    answer = page.get_by_role("status")
    expect(answer).to_contain_text("amara.okafor@example.com")
    expect(answer).to_contain_text("suppressed")
    pages.check(page, "why")
    page.get_by_role("link", name="Subscribers").click()
    expect(page.locator("h1")).to_contain_text("Subscribers")
    pages.check(page, "subscribers")
    page.get_by_role("button", name="Log out").click()

    # The admin: every edition, a special edition's form, Amara's page, and a CSV
    # upload larger than an ordinary form may be, with one malformed row.
    _log_in(page, "admin@example.org")
    page.get_by_role("link", name="Editions").click()
    expect(page.locator("main")).to_contain_text(f"#{edition_id}")
    pages.check(page, "editions")
    page.goto("/admin/editions/special")
    pages.check(page, "special")
    page.goto("/admin/subscribers?q=amara")
    page.get_by_role("link", name="amara.okafor@example.com").first.click()
    expect(page.locator("main")).to_contain_text("asked by phone")
    pages.check(page, "person")
    upload = tmp_path / "newsroom.csv"
    rows = [f"reader{n:05d}@example.org,Reader Number {n:05d} of the newsroom" for n in range(2000)]
    upload.write_text("email,name\n" + "\n".join([*rows, "not-an-address,Broken"]) + "\n")
    assert upload.stat().st_size > 64 * 1024  # past web.max_body_bytes
    page.goto("/admin/subscribers/import")
    page.get_by_label("CSV file", exact=True).set_input_files(str(upload))
    page.get_by_label("The Daily Ledger").check()
    page.get_by_role("button", name="Import").click()
    expect(page.get_by_role("status")).to_contain_text("1 of 2,001 rows were refused")
    expect(page.locator("table.refused")).to_contain_text("not-an-address")
    pages.check(page, "import")

    assert visit.outside == [] and visit.errors == [], (visit.outside, visit.errors)
    pages.assert_accessible()
