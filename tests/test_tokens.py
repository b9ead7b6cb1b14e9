"""Signed link tokens: verifiable, tamper-evident, opaque, itsdangerous-compatible."""

from __future__ import annotations

import hashlib

import pytest
from itsdangerous import Signer

from newsletter.errors import InputError
from newsletter.tokens import make_token, read_token

SECRET = "a-test-secret-of-some-length"


@pytest.mark.parametrize("newsletter", ["daily-briefing", ""])
def test_round_trip_and_shared_by_unsubscribe_and_preferences(newsletter: str) -> None:
    token = make_token(
        SECRET, purpose="unsubscribe", subscriber_key="k" * 32, newsletter=newsletter
    )
    for purpose in ("unsubscribe", "preferences"):
        data = read_token(SECRET, token, purpose=purpose)
        assert (data.subscriber_key, data.newsletter) == ("k" * 32, newsletter)


def test_is_exactly_what_itsdangerous_signs() -> None:
    token = make_token(SECRET, purpose="unsubscribe", subscriber_key="abc123", newsletter="x")
    reference = Signer(SECRET, salt="newsletter.subscription", digest_method=hashlib.sha256)
    assert token == reference.sign("abc123:x").decode()
    assert reference.unsign(token) == b"abc123:x"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature altered
        lambda t: "evil" + t,  # payload altered
        lambda t: t.replace(":x", ":y"),  # other newsletter
        lambda t: t.split(".")[0],  # signature dropped
        lambda t: "",
    ],
)
def test_tampering_is_refused(mangle: object) -> None:
    token = make_token(SECRET, purpose="unsubscribe", subscriber_key="abc123", newsletter="x")
    with pytest.raises(InputError, match="invalid"):
        read_token(SECRET, mangle(token), purpose="unsubscribe")  # type: ignore[operator]


def test_other_secret_and_other_purpose_are_refused() -> None:
    token = make_token(SECRET, purpose="unsubscribe", subscriber_key="abc123", newsletter="x")
    with pytest.raises(InputError):
        read_token("another-secret-entirely", token, purpose="unsubscribe")
    with pytest.raises(InputError):
        read_token(SECRET, token, purpose="confirm")
    confirm = make_token(SECRET, purpose="confirm", subscriber_key="abc123", newsletter="x")
    with pytest.raises(InputError):
        read_token(SECRET, confirm, purpose="unsubscribe")
