"""Special editions (breaking news) from Markdown and MJML files."""

from __future__ import annotations

import email
from email import policy
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import render, special
from newsletter.content.types import UNSUBSCRIBE_URL
from newsletter.errors import CheckFailed, InputError, RenderError
from newsletter.models import Edition, EditionKind
from tests import factories
from tests.conftest import CliRun

SLUG = "daily-briefing"

MARKDOWN = """# Bridge closed

The **Main Street bridge** is closed until further notice. <script>alert(1)</script>

<img src="https://evil.example/x.png" onerror="alert(1)">

Read the [details](https://news.example.com/bridge) — not [this](javascript:alert(1)).

![Map of the closure](https://news.example.com/map.png)
"""

MJML = """<mjml>
  <mj-body>
    <mj-section>
      <mj-column>
        <mj-text>Polls close at <b>8 pm</b>.
          <a href="https://news.example.com/vote">Where to vote</a></mj-text>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>
"""


BROKEN = (
    "<mjml><mj-body><mj-section><mj-column><mj-text>x</mj-column></mj-section></mj-body></mjml>"
)


class Tags(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_markdown_is_rendered_sanitised_and_passes_checks(
    settings: Settings, tmp_path: Path
) -> None:
    content = special.load_special(
        write(tmp_path, "news.md", MARKDOWN), settings=settings, slug=SLUG, subject="Bridge closed"
    )
    assert content.subject == "Bridge closed"
    assert "<strong>Main Street bridge</strong>" in content.html
    tags = Tags(content.html).tags
    assert "script" not in {t for t, _ in tags}
    attributes = [(name, value or "") for _, attrs in tags for name, value in attrs.items()]
    assert not [n for n, _ in attributes if n.startswith("on")]
    assert not [v for _, v in attributes if "javascript:" in v or "evil.example" in v]
    assert "&lt;script&gt;" in content.html  # raw HTML in Markdown stays text
    assert 'href="https://news.example.com/bridge"' in content.html
    assert 'alt="Map of the closure"' in content.html
    assert render.check_rendered(content) == []
    # the text part is the body's text (the one HTML-to-text conversion), then the footer
    assert content.text.startswith("THE DAILY LEDGER\nBridge closed\n\nBridge closed\n")
    assert "Main Street bridge is closed" in content.text and "<strong>" not in content.text
    assert "<https://news.example.com/bridge>" in content.text  # a link keeps its URL
    assert UNSUBSCRIBE_URL in content.text and settings.sender.postal_address in content.text
    assert "css" not in content.text.lower() and "{" not in content.text


def test_markdown_with_a_relative_link_fails_the_checks(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path, "news.md", "See [the page](/local/page).\n")
    with pytest.raises(CheckFailed, match="not an absolute http"):
        special.load_special(path, settings=settings, slug=SLUG, subject="S")


def test_mjml_gets_the_footer_and_a_text_part(settings: Settings, tmp_path: Path) -> None:
    content = special.load_special(
        write(tmp_path, "vote.mjml", MJML), settings=settings, slug=SLUG, subject="Election day"
    )
    assert "Where to vote" in content.html and UNSUBSCRIBE_URL in content.html
    assert render.check_rendered(content) == []
    assert content.text.startswith(
        "THE DAILY LEDGER\nElection day\n\n"
        "Polls close at 8 pm. Where to vote <https://news.example.com/vote>"
    )
    assert f"Unsubscribe: {UNSUBSCRIBE_URL}" in content.text
    assert content.text.count("You are receiving") == 1  # the footer once, not scraped twice
    assert 'style="' in content.html  # CSS inlined as for the briefing


@pytest.mark.parametrize(
    ("name", "text", "error", "message"),
    [
        ("broken.mjml", BROKEN, RenderError, "MJML error in broken.mjml"),
        ("plain.mjml", "<p>hello</p>", InputError, "plain.mjml: not an MJML document"),
        ("news.txt", "hello", InputError, "expected a Markdown (.md) or MJML (.mjml) file"),
        ("empty.md", "  \n", InputError, "is empty"),
    ],
)
def test_bad_files_are_one_line_errors(
    settings: Settings, tmp_path: Path, name: str, text: str, error: type, message: str
) -> None:
    with pytest.raises(error) as err:
        special.load_special(write(tmp_path, name, text), settings=settings, slug=SLUG, subject="S")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_mjml_error_on_the_command_line(run_cli: CliRun, tmp_path: Path) -> None:
    path = write(tmp_path, "broken.mjml", BROKEN)
    result = run_cli(
        "edition", "from-file", str(path), "--newsletter", SLUG, "--subject", "S", expect=1
    )
    assert "MJML error in broken.mjml" in result.output
    assert len(result.output.strip().splitlines()) == 1
    missing = run_cli(
        "edition", "from-file", str(tmp_path / "nope.md"), "--newsletter", SLUG, "--subject", "S",
        expect=2,
    )  # fmt: skip
    assert "cannot read" in missing.output


def test_special_editions_go_to_the_audience_beside_the_regular_one(
    run_cli: CliRun, sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    with sessions.begin() as s:
        readers = [factories.subscriber(s).email for _ in range(3)]
        factories.subscriber(s, "weekly@example.com", newsletters=("good-news",))
        factories.story(s)
    regular = run_cli("edition", "build", "--newsletter", SLUG).stdout.strip()
    path = write(tmp_path, "news.md", MARKDOWN)
    ids = [
        run_cli(
            "edition", "from-file", str(path), "--newsletter", SLUG, "--subject", f"Breaking {n}"
        ).stdout.strip()
        for n in (1, 2)
    ]
    assert len({regular, *ids}) == 3  # specials are not limited to one per day
    assert run_cli("edition", "build", "--newsletter", SLUG).stdout.strip() == regular
    run_cli("send", "--edition", ids[0])
    files = sorted((settings.outbox_path / SLUG / f"edition-{ids[0]}").glob("*.eml"))
    assert len(files) == 3
    msg = email.message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert msg["Subject"] == "Breaking 1"
    assert msg["List-Unsubscribe"]
    assert {str(m["To"]).split("<")[-1].rstrip(">") for m in map(_parse, files)} == set(readers)
    with sessions() as s:
        kinds = dict(s.execute(select(Edition.id, Edition.kind)).all())
    assert kinds[int(ids[1])] is EditionKind.SPECIAL and kinds[int(regular)] is EditionKind.REGULAR


def _parse(path: Path) -> email.message.EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg
