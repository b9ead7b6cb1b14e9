"""Contract tests: every request shape the sendgrid provider sends, judged by SendGrid's own
OpenAPI description through Prism; and the limits the description cannot express.

Prism: ``npm install --prefix .prism @stoplight/prism-cli`` in the repository root. The
Prism tests skip (with the reason) when it or ../shared is missing, except that with
``CI=true`` a missing Prism fails them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sendgrid
from python_http_client.exceptions import HTTPError

from newsletter.config import Settings
from newsletter.content.types import RenderedEdition
from newsletter.delivery import links
from newsletter.delivery.providers.base import PreparedEdition, Recipient
from newsletter.delivery.providers.sendgrid import SendGridProvider
from newsletter.delivery.providers.sendgrid_request import validate_request
from tests.conftest import ROOT, SHARED

PRISM = ROOT / ".prism" / "node_modules" / ".bin" / "prism"
SPEC = SHARED / "sendgrid" / "tsg_mail_v3.prism.json"
GOLDEN = Path(__file__).parent / "golden"
PRISM_MESSAGE_ID = "W8nUbdWuQh-gKVMj3HLs2A"  # the example in the description's 202


def _missing_prism() -> str | None:
    if not SPEC.exists():
        return f"SendGrid's API description {SPEC} is absent (../shared not checked out)"
    if not PRISM.exists():
        return "Prism is not installed: run `npm install --prefix .prism @stoplight/prism-cli`"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prism mock of /v3/mail/send on 127.0.0.1, for this module."""
    reason = _missing_prism()
    if reason:
        if os.environ.get("CI") == "true" and SPEC.exists():
            pytest.fail(f"CI must run the SendGrid contract tests: {reason}")
        pytest.skip(reason)
    port = _free_port()
    log = tmp_path_factory.mktemp("prism") / "prism.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(PRISM), "mock", "-v", "error", "-h", "127.0.0.1", "-p", str(port), str(SPEC)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait_until_up(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Prism exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/", timeout=1):
                return
        except urllib.error.HTTPError as exc:  # any HTTP answer means it is serving
            exc.close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"Prism did not answer within 60 s: {log.read_text()[-2000:]}")


# ----- request shapes the provider sends ------------------------------------------------


def _content(realistic: bool) -> RenderedEdition:
    if realistic and (GOLDEN / "briefing.html").exists():
        return RenderedEdition(
            subject=(GOLDEN / "briefing.subject").read_text(encoding="utf-8").strip(),
            html=(GOLDEN / "briefing.html").read_text(encoding="utf-8"),
            text=(GOLDEN / "briefing.txt").read_text(encoding="utf-8"),
        )
    return RenderedEdition(
        subject="Die Morgenlage: Zürich — 早上好 ☕",
        html='<p>Hi %%NAME%%,</p><a href="%%UNSUBSCRIBE_URL%%">Unsubscribe</a>'
        '<a href="%%PREFERENCES_URL%%">Preferences</a>',
        text="Hi %%NAME%%,\nUnsubscribe: %%UNSUBSCRIBE_URL%%\nPrefs: %%PREFERENCES_URL%%\n",
    )


def _edition(*, realistic: bool = True, reply_to: str | None = "editors@news.example.com",
             from_name: str = "The Daily Briefing") -> PreparedEdition:  # fmt: skip
    content = _content(realistic)
    return PreparedEdition(
        edition_id=42,
        newsletter="daily-briefing",
        content=content,
        from_name=from_name,
        from_address="briefing@news.example.com",
        reply_to=reply_to,
        list_id='"The Daily Briefing" <daily-briefing.news.example.com>',
        domain="news.example.com",
    )


def _recipients(n: int, names: list[str] | None = None, start: int = 1) -> list[Recipient]:
    settings = Settings()
    names = names or ["Reader"]
    return [
        links.recipient(
            settings,
            delivery_id=start + i,
            email=f"reader{start + i}@example.com",
            name=names[i % len(names)],
            key=f"key{start + i:012d}",
            newsletter="daily-briefing",
        )
        for i in range(n)
    ]


SHAPES: dict[str, tuple[PreparedEdition, list[Recipient]]] = {
    "one recipient": (_edition(), _recipients(1)),
    "1000 recipients": (_edition(), _recipients(1000, ["Ada", "", "Zoë O'Brien"])),
    "no reply_to, no from name": (_edition(reply_to=None, from_name=""), _recipients(3)),
    "empty names": (_edition(), _recipients(4, ["", "   "])),
    "names with commas": (_edition(), _recipients(2, ["Smith, John", 'a; "b" \\ c'])),
    "non-ASCII names and subject": (
        _edition(realistic=False),
        _recipients(5, ["李雷", "Zoë", "Ærøskøbing ☃", 'Tom & "Jerry" <x>', "a\tb\nc"]),
    ),
    "long name near the substitutions limit": (_edition(), _recipients(1, ["n" * 4500])),
    "a test copy (no delivery id)": (
        _edition(),
        [_recipients(1)[0]._replace(delivery_id=None, email="editor@example.com")],
    ),
    "names that need escaping": (
        _edition(),
        [r._replace(name='Tom & "Jerry" <tj>, Esq.') for r in _recipients(2)],
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_request_shape_is_accepted(prism: str, shape: str) -> None:
    edition, recipients = SHAPES[shape]
    provider = SendGridProvider("SG.contract-test", api_base_url=prism, timeout=30, verify=True)
    outcomes = provider.send_batch(edition, recipients)
    assert [(o.status, o.error) for o in outcomes] == [("sent", None)] * len(recipients)
    assert {o.message_id for o in outcomes} == {PRISM_MESSAGE_ID}


def test_prism_judges_the_provider_bodies_too(prism: str) -> None:
    edition = replace(_edition(), from_address="not-an-address")
    provider = SendGridProvider("SG.contract-test", api_base_url=prism, timeout=30)
    [outcome] = provider.send_batch(edition, _recipients(1))
    assert outcome.status == "failed"
    assert outcome.error == (
        "SendGrid rejected the request (422): "
        'Request body property from.email must match format "email"'
    )


def _post(url: str, body: dict[str, Any], key: str | None = "SG.contract-test") -> int:
    client = sendgrid.SendGridAPIClient(api_key=key or "", host=url)
    if key is None:
        del client.client.request_headers["Authorization"]
    try:
        return int(client.client.mail.send.post(request_body=body).status_code)
    except HTTPError as exc:
        return int(exc.status_code)


def _body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "a@example.com"}]}],
        "from": {"email": "briefing@news.example.com"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi"}],
    }
    body.update(extra)
    return body


def test_long_custom_args_within_the_limit_are_accepted(prism: str) -> None:
    args = {f"k{i}": "v" * 95 for i in range(100)}  # 9,890 bytes
    body = _body(personalizations=[{"to": [{"email": "a@example.com"}], "custom_args": args}])
    assert validate_request(body) == []
    assert _post(prism, body) == 202


def test_prism_judges_bodies(prism: str) -> None:
    body = _body()
    assert _post(prism, body) == 202
    del body["from"]
    assert _post(prism, body) == 422
    many = _body(personalizations=[{"to": [{"email": f"r{i}@example.com"}]} for i in range(1001)])
    assert _post(prism, many) == 422
    assert validate_request(many) == [
        "personalizations: 1001, over the limit of 1000",
        "recipients: 1001, over the limit of 1000",
    ]
    assert _post(prism, _body(), key=None) == 401


# ----- limits SendGrid's description does not express -------------------------------------


NOW = 1_800_000_000


def _problems(**extra: Any) -> list[str]:
    return validate_request(_body(**extra), now=NOW)


def test_a_plain_body_passes() -> None:
    assert _problems() == []
    assert _problems(content=None, template_id="d-123") == []


def test_more_than_1000_recipients_in_one_to_list() -> None:
    to = [{"email": f"r{i}@example.com"} for i in range(1001)]
    assert _problems(personalizations=[{"to": to}]) == ["recipients: 1001, over the limit of 1000"]


def test_duplicate_recipients_in_one_request() -> None:
    ps = [{"to": [{"email": "a@example.com"}]}, {"to": [{"email": "A@Example.com"}]}]
    assert _problems(personalizations=ps) == [
        "personalizations.1.to.0.email: duplicate recipient A@Example.com "
        "(also in personalizations.0.to.0)"
    ]


def test_custom_args_over_10000_bytes() -> None:
    exactly = {"k": "v" * 9_999}
    assert (
        _problems(personalizations=[{"to": [{"email": "a@x.com"}], "custom_args": exactly}]) == []
    )
    over = {"k": "é" * 5_000}  # 10,001 bytes in UTF-8
    assert _problems(personalizations=[{"to": [{"email": "a@x.com"}], "custom_args": over}]) == [
        "personalizations.0.custom_args: 10001 bytes, over the 10,000-byte limit"
    ]
    merged = _problems(
        custom_args={"top": "t" * 6_000},
        personalizations=[{"to": [{"email": "a@x.com"}], "custom_args": {"p": "p" * 4_000}}],
    )
    assert merged == ["personalizations.0.custom_args: 10004 bytes, over the 10,000-byte limit"]


def test_custom_args_must_be_strings() -> None:
    ps = [{"to": [{"email": "a@x.com"}], "custom_args": {"delivery_id": 12}}]
    assert _problems(personalizations=ps) == [
        "personalizations.0.custom_args.delivery_id must be a string"
    ]


def test_substitutions_over_10000_bytes() -> None:
    ps = [{"to": [{"email": "a@x.com"}], "substitutions": {"%%NAME%%": "n" * 9_999}}]
    assert _problems(personalizations=ps) == [
        "personalizations.0.substitutions: 10007 bytes, over the 10,000-byte limit"
    ]


def test_send_at_more_than_72_hours_ahead() -> None:
    assert _problems(send_at=NOW + 72 * 3600) == []
    assert _problems(send_at=NOW + 72 * 3600 + 1) == ["send_at: more than 72 hours ahead"]
    ps = [{"to": [{"email": "a@x.com"}], "send_at": NOW + 4 * 86400}]
    assert _problems(personalizations=ps) == [
        "personalizations.0.send_at: more than 72 hours ahead"
    ]


def test_reply_to_and_reply_to_list_together() -> None:
    both = _problems(reply_to={"email": "r@x.com"}, reply_to_list=[{"email": "s@x.com"}])
    assert both == ["reply_to and reply_to_list cannot both be set"]


def test_content_is_required_in_order() -> None:
    assert _problems(content=[]) == ["content: neither content nor template_id is set"]
    html_first = [{"type": "text/html", "value": "<p>x</p>"}, {"type": "text/plain", "value": "x"}]
    assert _problems(content=html_first) == [
        "content: text/plain must come first",
        "content: text/html must follow text/plain",
    ]


def test_personalizations_need_recipients_and_a_subject() -> None:
    assert _problems(personalizations=[]) == ["personalizations: at least one is required"]
    assert _problems(personalizations=[{"to": []}]) == [
        "personalizations.0.to: at least one recipient is required"
    ]
    assert _problems(subject="") == ["personalizations.0.subject: a subject is required"]


def test_names_with_commas_must_be_quoted() -> None:
    to = [{"email": "a@x.com", "name": "Smith, John"}, {"email": "b@x.com", "name": '"Doe; J"'}]
    assert _problems(personalizations=[{"to": to}]) == [
        "personalizations.0.to.0.name: a name with , or ; must be in double quotes"
    ]


def test_at_most_ten_unique_categories() -> None:
    assert _problems(categories=[f"c{i}" for i in range(10)]) == []
    assert _problems(categories=[f"c{i}" for i in range(11)]) == [
        "categories: at most 10, each once"
    ]
    assert _problems(categories=["a", "a"]) == ["categories: at most 10, each once"]
