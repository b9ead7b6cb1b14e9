"""Subscribers: validation, CSV import/export, suppression, tokens, forgetting, CLI.

Every test runs on a real database (SQLite, and PostgreSQL when configured); CLI
tests go through the real `newsletter` command.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from newsletter.audience import imports
from newsletter.audience import subscribers as svc
from newsletter.audience import suppression as sup
from newsletter.audience.imports import ImportReport
from newsletter.config import Settings
from newsletter.delivery import links
from newsletter.errors import CSVImportError, InputError, NotFoundError, StateError
from newsletter.models import (
    Base,
    Delivery,
    DeliveryStatus,
    Edition,
    SendEvent,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)
from newsletter.tokens import make_token
from tests.conftest import ROOT, CliRun

CSV_DIR = Path(__file__).parent / "fixtures" / "csv"
PENDING = SubscriptionStatus.PENDING
CONFIRMED = SubscriptionStatus.CONFIRMED
UNSUBSCRIBED = SubscriptionStatus.UNSUBSCRIBED
FORMULA_NAMES = [
    '=HYPERLINK("http://evil.example/","click")',
    "+cmd|' /C calc'!A0",
    "@SUM(1+1)",
    "-2+3",
]


def import_file(session: Session, settings: Settings, path: Path, **kw: Any) -> ImportReport:
    report = imports.import_csv(session, path=path, settings=settings, **kw)
    session.commit()
    return report


def subscriptions(session: Session) -> dict[tuple[str, str], SubscriptionStatus]:
    rows = session.execute(
        select(Subscriber.email, Subscription.newsletter, Subscription.status).join(Subscription)
    )
    return {(e, n): s for e, n, s in rows}


def snapshot(session: Session) -> list[Any]:
    """Every subscriber and subscription column, to prove nothing changed."""
    session.expire_all()
    people = session.execute(select(Subscriber.__table__).order_by(Subscriber.id)).all()
    subs = session.execute(select(Subscription.__table__).order_by(Subscription.id)).all()
    return [tuple(r) for r in people] + [tuple(r) for r in subs]


def add(session: Session, settings: Settings, email: str, **kw: Any) -> Subscriber:
    kw.setdefault("newsletters", ["daily-briefing"])
    return svc.add_subscriber(session, email=email, settings=settings, **kw)


# ----- validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("alice@example.com", "alice@example.com"),
        ("  Alice@Example.COM ", "alice@example.com"),
        ("JOSÉ@Exämple.com", "josé@exämple.com"),
        ("=cmd@example.org", "=cmd@example.org"),
    ],
)
def test_normalise_email_lower_cases_the_whole_address(raw: str, stored: str) -> None:
    assert svc.normalise_email(raw) == stored
    assert sup.email_hash(raw.strip()) == sup.email_hash(stored)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("bad@", "after the @-sign"),
        ("no-at-sign", "must have an @-sign"),
        ("a@localhost", "period"),
        ("Alice <alice@example.com>", "display name"),
    ],
)
def test_normalise_email_rejects_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(InputError, match=re.escape(reason)):
        svc.normalise_email(raw)


def test_timezones_are_validated_and_canonical() -> None:
    assert svc.normalise_timezone("europe/paris") == "Europe/Paris"
    assert svc.normalise_timezone("  ") is None
    assert svc.normalise_timezone(None) is None
    for bad in ("Mars/Olympus_Mons", "localtime", "../../etc/passwd", "+05:00"):
        with pytest.raises(InputError, match="unknown timezone"):
            svc.normalise_timezone(bad)


def test_names_are_made_header_safe() -> None:
    assert svc.clean_name(" Carol\r\nBcc: x@example.com\t ") == "Carol Bcc: x@example.com"
    assert svc.clean_name("Zo\u0065\u0308\x00") == "Zo\u00eb"
    with pytest.raises(InputError, match="longer than 200"):
        svc.clean_name("x" * 201)


# ----- CSV import -------------------------------------------------------------


def test_hostile_csv_imports_good_rows_and_reports_bad_ones(
    session: Session, settings: Settings
) -> None:
    report = import_file(session, settings, CSV_DIR / "hostile.csv")

    errors = {e.line: (e.email, e.reason) for e in report.errors}
    assert sorted(errors) == [11, 12, 13, 14, 15, 17]
    assert errors[11][0] == "not-an-address" and "invalid address" in errors[11][1]
    assert "unknown timezone 'Mars/Olympus_Mons'" in errors[12][1]
    assert "unknown newsletter 'weekly-gossip'" in errors[13][1]
    assert errors[14] == ("ALICE@Example.com", "duplicate of line 2")
    assert "too many fields (7; the header has 5)" in errors[15][1]
    assert "unknown timezone 'Judy'" in errors[15][1]
    assert errors[17][0] == "kim@example.com" and "no newsletter" in errors[17][1]

    # 14 non-blank data rows (line 6 is empty, line 16 only commas).
    assert (report.rows, report.added_subscribers, report.added_subscriptions) == (14, 8, 10)
    people = {s.email: s for s in session.scalars(select(Subscriber))}
    assert sorted(people) == [
        f"{n}@example.com"
        for n in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "mallory")
    ]
    assert people["alice@example.com"].name == "Alice Example"
    assert people["bob@example.com"].name == "Builder, Bob"
    assert people["carol@example.com"].name == "Carol Multi-Line"
    assert people["carol@example.com"].timezone == "Asia/Tokyo"
    assert people["dave@example.com"].timezone is None
    assert people["mallory@example.com"].timezone == "UTC"
    stored_names = {p.name for p in people.values()}
    assert set(FORMULA_NAMES) <= stored_names
    subs = subscriptions(session)
    assert subs[("mallory@example.com", "good-news")] is PENDING
    assert subs[("bob@example.com", "good-news")] is PENDING
    assert len(subs) == 10


def test_newsletter_option_fills_empty_cells_only(session: Session, settings: Settings) -> None:
    report = import_file(
        session, settings, CSV_DIR / "hostile.csv", newsletters=["good-news"], status=CONFIRMED
    )
    assert 17 not in {e.line for e in report.errors}
    subs = subscriptions(session)
    assert subs[("kim@example.com", "good-news")] is CONFIRMED
    # A row's own newsletters cell wins over --newsletter.
    assert ("alice@example.com", "good-news") not in subs
    assert subs[("alice@example.com", "daily-briefing")] is CONFIRMED


def test_bulk_import_sets_keys_and_timestamps(session: Session, settings: Settings) -> None:
    import_file(session, settings, ROOT / "subscribers" / "sample.csv")
    people = list(session.scalars(select(Subscriber)))
    assert len(people) == 26
    keys = {p.key for p in people}
    assert len(keys) == 26 and all(re.fullmatch(r"[0-9a-f]{32}", k) for k in keys)
    assert all(p.created_at.tzinfo is not None and p.updated_at for p in people)
    subs = list(session.scalars(select(Subscription)))
    assert all(s.source == "import" and s.confirmed_at is None for s in subs)


def test_sample_list_imports_cleanly(session: Session, settings: Settings) -> None:
    report = import_file(session, settings, ROOT / "subscribers" / "sample.csv")
    assert report.errors == [] and report.added_subscribers == report.rows == 26
    people = {p.email: p for p in session.scalars(select(Subscriber))}
    assert people["nikolai.ivanov@example.org"].name == "Николай Иванов"
    assert sum(p.timezone is None for p in people.values()) >= 2
    assert len({p.timezone for p in people.values()}) > 15


def test_reimport_changes_nothing(session: Session, settings: Settings) -> None:
    first = import_file(session, settings, CSV_DIR / "hostile.csv")
    before = snapshot(session)
    second = import_file(session, settings, CSV_DIR / "hostile.csv")
    assert snapshot(session) == before
    assert (second.added_subscribers, second.added_subscriptions, second.updated) == (0, 0, 0)
    assert second.unchanged == first.added_subscribers == 8
    assert [e.line for e in second.errors] == [e.line for e in first.errors]


def test_reimport_confirms_pending_but_never_downgrades(
    session: Session, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email,newsletters\na@example.com,daily-briefing\nb@example.com,good-news\n")
    import_file(session, settings, path)
    report = import_file(session, settings, path, status=CONFIRMED)
    assert (report.updated, report.unchanged) == (2, 0)
    assert set(subscriptions(session).values()) == {CONFIRMED}
    confirmed_at = session.scalars(select(Subscription.confirmed_at)).all()
    assert all(confirmed_at)
    report = import_file(session, settings, path)  # pending again: no downgrade
    assert (report.updated, report.unchanged) == (0, 2)
    assert set(subscriptions(session).values()) == {CONFIRMED}


def test_import_updates_name_and_timezone_only_when_given(
    session: Session, settings: Settings, tmp_path: Path
) -> None:
    add(session, settings, "a@example.com", name="Ann", timezone="Europe/Paris")
    add(session, settings, "b@example.com", name="Ben", timezone="Asia/Tokyo")
    session.commit()
    path = tmp_path / "list.csv"
    path.write_text(
        "email,name,timezone,newsletters\n"
        "a@example.com,,,daily-briefing\n"
        "b@example.com,Benjamin,,daily-briefing\n"
    )
    report = import_file(session, settings, path)
    assert (report.updated, report.unchanged) == (1, 1)
    people = {p.email: (p.name, p.timezone) for p in session.scalars(select(Subscriber))}
    assert people == {
        "a@example.com": ("Ann", "Europe/Paris"),
        "b@example.com": ("Benjamin", "Asia/Tokyo"),
    }


def test_import_never_resubscribes_unsubscribed_or_suppressed(
    session: Session, settings: Settings, tmp_path: Path
) -> None:
    add(session, settings, "left@example.com", newsletters=["daily-briefing", "good-news"])
    svc.unsubscribe(session, email="left@example.com", newsletter="daily-briefing")
    add(session, settings, "quit@example.com")
    svc.unsubscribe(session, email="quit@example.com", newsletter=None)
    sup.suppress(session, email="bounce@example.com", reason=SuppressionReason.BOUNCED)
    add(session, settings, "gone@example.com")
    svc.remove(session, email="gone@example.com", newsletter=None, forget=True)
    session.commit()
    path = tmp_path / "list.csv"
    path.write_text(
        "email,newsletters,status\n"
        "LEFT@example.com,daily-briefing;good-news,confirmed\n"
        "quit@example.com,daily-briefing,confirmed\n"
        "Bounce@Example.com,good-news,confirmed\n"
        "gone@example.com,good-news,confirmed\n"
    )
    report = import_file(session, settings, path)
    assert report.skipped_suppressed == 3
    assert report.skipped_unsubscribed == 1
    assert report.added_subscribers == report.added_subscriptions == 0
    subs = subscriptions(session)
    assert subs[("left@example.com", "daily-briefing")] is UNSUBSCRIBED
    assert subs[("left@example.com", "good-news")] is CONFIRMED  # pending → confirmed
    assert subs[("quit@example.com", "daily-briefing")] is UNSUBSCRIBED
    emails = set(session.scalars(select(Subscriber.email)))
    assert "bounce@example.com" not in emails and "gone@example.com" not in emails


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("latin1.csv", "latin1.csv is not UTF-8 text (byte 0xeb on line 2)"),
        ("no_email.csv", "no_email.csv: the header has no email column (found 'name'"),
        ("empty.csv", "empty.csv is empty"),
    ],
)
def test_unreadable_files_are_refused_whole(
    session: Session, settings: Settings, name: str, message: str
) -> None:
    with pytest.raises(CSVImportError, match=re.escape(message)):
        imports.import_csv(session, path=CSV_DIR / name, settings=settings)
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 0


def test_file_without_newsletters_column_needs_a_newsletter(
    session: Session, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("email\na@example.com\n")
    with pytest.raises(CSVImportError, match="--newsletter"):
        imports.import_csv(session, path=path, settings=settings)
    with pytest.raises(NotFoundError, match="unknown newsletter 'nope'"):
        imports.import_csv(session, path=path, settings=settings, newsletters=["nope"])
    report = import_file(session, settings, path, newsletters=["good-news"])
    assert report.added_subscriptions == 1


def test_very_long_lines_are_row_errors(
    session: Session, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "long.csv"
    path.write_text(
        "email,name,newsletters\n"
        f'a@example.com,"{"x" * 200_000}",daily-briefing\n'
        f"b@example.com,{'y' * 300},daily-briefing\n"
        f"{'c' * 5000}@example.com,C,daily-briefing\n"
        "d@example.com,Dee,daily-briefing\n"
    )
    report = import_file(session, settings, path)
    errors = {e.line: e for e in report.errors}
    assert sorted(errors) == [2, 3, 4]
    assert "field larger than field limit" in errors[2].reason
    assert "longer than 200" in errors[3].reason
    assert "invalid address" in errors[4].reason and len(errors[4].email) <= 80
    assert list(session.scalars(select(Subscriber.email))) == ["d@example.com"]


def test_per_newsletter_status_column(session: Session, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text(
        "email,newsletters,status\n"
        "a@example.com,daily-briefing;good-news,confirmed;pending\n"
        "b@example.com,daily-briefing;good-news,confirmed;pending;confirmed\n"
        "c@example.com,daily-briefing,unsubscribed\n"
    )
    report = import_file(session, settings, path)
    assert [(e.line, e.reason) for e in report.errors] == [
        (3, "3 statuses for 2 newsletters"),
        (4, "status 'unsubscribed' is not pending or confirmed"),
    ]
    subs = subscriptions(session)
    assert subs == {
        ("a@example.com", "daily-briefing"): CONFIRMED,
        ("a@example.com", "good-news"): PENDING,
    }


def test_failed_import_writes_nothing(run_cli: CliRun, session: Session, tmp_path: Path) -> None:
    """A database error half-way (after subscribers were inserted) rolls everything back."""
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        trigger = (
            "CREATE TRIGGER refuse BEFORE INSERT ON subscriptions "
            "WHEN NEW.newsletter = 'good-news' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        session.execute(text(trigger))
    else:
        session.execute(
            text(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.newsletter = 'good-news' THEN RAISE unique_violation; END IF; "
                "RETURN NEW; END $$"
            )
        )
        session.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON subscriptions "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        )
    session.commit()
    result = run_cli("subscribers", "import", str(CSV_DIR / "hostile.csv"), expect=1)
    assert "Error: the subscriber list changed while importing" in result.output
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 0


# ----- add, confirm, unsubscribe, suppress, forget ------------------------------


def test_add_refuses_suppressed_and_forgotten(session: Session, settings: Settings) -> None:
    sup.suppress(session, email="b@example.com", reason=SuppressionReason.COMPLAINED)
    with pytest.raises(StateError, match=r"b@example.com is suppressed \(complained\)"):
        add(session, settings, "B@example.com")
    add(session, settings, "f@example.com")
    svc.remove(session, email="f@example.com", newsletter=None, forget=True)
    with pytest.raises(StateError, match=r"is suppressed \(forgotten\)"):
        add(session, settings, "F@Example.com", resubscribe=True)


def test_add_resubscribes_only_when_asked(session: Session, settings: Settings) -> None:
    add(session, settings, "a@example.com", newsletters=["daily-briefing", "good-news"])
    svc.unsubscribe(session, email="a@example.com", newsletter="good-news")
    with pytest.raises(StateError, match="unsubscribed from good-news on .*own request"):
        add(session, settings, "a@example.com", newsletters=["good-news"], status=CONFIRMED)
    assert subscriptions(session)[("a@example.com", "good-news")] is UNSUBSCRIBED
    add(session, settings, "a@example.com", newsletters=["good-news"], resubscribe=True)
    assert subscriptions(session)[("a@example.com", "good-news")] is PENDING


def test_add_validates_everything(session: Session, settings: Settings) -> None:
    with pytest.raises(NotFoundError, match="unknown newsletter 'nope'"):
        add(session, settings, "a@example.com", newsletters=["nope"])
    with pytest.raises(InputError, match="unknown timezone"):
        add(session, settings, "a@example.com", timezone="Nowhere/Land")
    with pytest.raises(InputError, match="at least one newsletter"):
        add(session, settings, "a@example.com", newsletters=[])
    with pytest.raises(InputError, match="pending or confirmed"):
        add(session, settings, "a@example.com", status=UNSUBSCRIBED)
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 0


def test_confirm_and_unsubscribe(session: Session, settings: Settings) -> None:
    add(session, settings, "a@example.com", newsletters=["daily-briefing", "good-news"])
    confirmed = svc.confirm(session, email="A@example.com", newsletter="good-news")
    assert [s.newsletter for s in confirmed] == ["good-news"]
    assert subscriptions(session)[("a@example.com", "daily-briefing")] is PENDING
    with pytest.raises(NotFoundError):
        svc.confirm(session, email="nobody@example.com")

    changed = svc.unsubscribe(session, email="a@example.com", newsletter="daily-briefing")
    assert [s.newsletter for s in changed] == ["daily-briefing"]
    assert svc.unsubscribe(session, email="a@example.com", newsletter="daily-briefing") == []
    with pytest.raises(StateError, match="has unsubscribed"):
        svc.confirm(session, email="a@example.com", newsletter="daily-briefing")
    assert sup.is_suppressed(session, email="a@example.com") is None

    svc.unsubscribe(session, email="a@example.com", newsletter=None)
    assert set(subscriptions(session).values()) == {UNSUBSCRIBED}
    assert sup.is_suppressed(session, email="a@example.com") is SuppressionReason.UNSUBSCRIBED
    with pytest.raises(StateError, match="suppressed"):
        svc.confirm(session, email="a@example.com")
    # An address never subscribed is not found, and nothing is suppressed (a typo
    # must not block a stranger).
    with pytest.raises(NotFoundError, match="no subscriber stranger@example.com"):
        svc.unsubscribe(session, email="stranger@example.com", newsletter=None)
    assert sup.is_suppressed(session, email="Stranger@example.com") is None


def test_suppress_is_idempotent_and_keeps_the_first_reason(session: Session) -> None:
    first = sup.suppress(
        session, email="x@example.com", reason=SuppressionReason.BOUNCED, detail="550"
    )
    again = sup.suppress(session, email="X@example.com", reason=SuppressionReason.COMPLAINED)
    assert again.id == first.id and again.reason is SuppressionReason.BOUNCED
    assert [s.email for s in sup.list_suppressions(session)] == ["x@example.com"]
    assert (
        sup.unsuppress(session, email="x@example.com", reason="asked us by phone")
        is SuppressionReason.BOUNCED
    )
    assert sup.unsuppress(session, email="x@example.com", reason="again") is None
    assert sup.is_suppressed(session, email="x@example.com") is None


def test_forget_leaves_no_trace_of_the_address(session: Session, settings: Settings) -> None:
    address = "Erin.Erased@Example.com"
    person = add(session, settings, address, name="Erin Erased", timezone="Europe/Oslo")
    keep = add(session, settings, "kept@example.com", name="Kept")
    sup.suppress(session, email=address, reason=SuppressionReason.BOUNCED, detail=f"550 {address}")
    edition = Edition(newsletter="daily-briefing", issue_date=date(2026, 1, 5), subject="Hi")
    session.add(edition)
    session.flush()
    sent = Delivery(
        edition_id=edition.id,
        subscriber_id=person.id,
        email=person.email,
        name=person.name,
        subscriber_key=person.key,
        status=DeliveryStatus.FAILED,
        error=f"550 5.1.1 <{address.upper()}>: unknown user",
    )
    queued = Delivery(
        edition_id=edition.id,
        subscriber_id=keep.id,  # a queued row for the same address under an old id
        email=person.email,
        name=person.name,
        subscriber_key="0" * 32,
    )
    other = Delivery(
        edition_id=edition.id,
        subscriber_id=None,
        email=keep.email,
        name=keep.name,
        subscriber_key=keep.key,
    )
    session.add_all([sent, queued, other])
    session.flush()
    session.add(
        SendEvent(
            delivery_id=sent.id,
            kind="bounce",
            detail={"email": person.email, "reason": f"bounced: {address}", "n": [address]},
        )
    )
    session.commit()

    result = svc.remove(session, email=address, newsletter=None, forget=True)
    session.commit()
    assert result == svc.RemoveResult(
        subscriber_deleted=True, subscriptions_deleted=1, deliveries_anonymised=2
    )
    session.expire_all()
    needle = address.lower()
    for table in Base.metadata.sorted_tables:
        for row in session.execute(select(table)):
            assert needle not in repr(tuple(row)).lower(), (table.name, row)
    entry = session.scalars(select(Suppression)).one()
    assert (entry.email, entry.reason, entry.detail) == (None, SuppressionReason.FORGOTTEN, "")
    assert entry.email_hash == sup.email_hash(needle)
    statuses = {i: s for i, s in session.execute(select(Delivery.id, Delivery.status))}
    assert statuses[sent.id] is DeliveryStatus.FAILED
    assert statuses[queued.id] is DeliveryStatus.CANCELLED
    assert statuses[other.id] is DeliveryStatus.QUEUED
    assert session.get(Delivery, other.id).email == "kept@example.com"  # type: ignore[union-attr]
    assert sup.is_suppressed(session, email=address) is SuppressionReason.FORGOTTEN


def test_remove_without_forget_unsubscribes(session: Session, settings: Settings) -> None:
    add(session, settings, "a@example.com", newsletters=["daily-briefing", "good-news"])
    assert svc.remove(session, email="a@example.com", newsletter="good-news", forget=False) == (
        svc.RemoveResult(unsubscribed=1)
    )
    with pytest.raises(InputError, match="from every newsletter, not from one"):
        svc.remove(session, email="a@example.com", newsletter="good-news", forget=True)
    with pytest.raises(NotFoundError):
        svc.remove(session, email="zz@example.com", newsletter="good-news", forget=False)
    svc.remove(session, email="a@example.com", newsletter=None, forget=False)
    assert sup.is_suppressed(session, email="a@example.com") is SuppressionReason.UNSUBSCRIBED


# ----- tokens -----------------------------------------------------------------


def token(settings: Settings, key: str, newsletter: str, purpose: Any = "unsubscribe") -> str:
    return make_token(
        settings.signing_key, purpose=purpose, subscriber_key=key, newsletter=newsletter
    )


def test_unsubscribe_by_token(session: Session, settings: Settings) -> None:
    person = add(session, settings, "a@example.com", newsletters=["daily-briefing", "good-news"])
    one = token(settings, person.key, "good-news")
    changed = svc.unsubscribe_by_token(session, token=one, settings=settings)
    assert [s.newsletter for s in changed] == ["good-news"]
    assert svc.unsubscribe_by_token(session, token=one, settings=settings) == []
    assert sup.is_suppressed(session, email="a@example.com") is None

    every = token(settings, person.key, "")
    changed = svc.unsubscribe_by_token(session, token=every, settings=settings)
    assert [s.newsletter for s in changed] == ["daily-briefing"]
    assert sup.is_suppressed(session, email="a@example.com") is SuppressionReason.UNSUBSCRIBED
    assert svc.unsubscribe_by_token(session, token=every, settings=settings) == []
    # A person since forgotten: the link still "works" and does nothing.
    gone = token(settings, "f" * 32, "")
    assert svc.unsubscribe_by_token(session, token=gone, settings=settings) == []

    # Tampered payload, tampered signature (first character: carries 6 full bits),
    # and a token signed for another purpose are all refused.
    cut = one.rindex(".") + 1
    bad_signature = one[:cut] + ("B" if one[cut] == "A" else "A") + one[cut + 1 :]
    wrong_purpose = token(settings, person.key, "", purpose="confirm")
    for bad in (one.replace("good-news", "daily-briefing"), bad_signature, wrong_purpose):
        with pytest.raises(InputError, match="invalid or tampered unsubscribe token"):
            svc.unsubscribe_by_token(session, token=bad, settings=settings)


def test_token_from_every_form_the_sender_writes() -> None:
    t = "0123456789abcdef0123456789abcdef:good-news.Sig_-nature"
    for given in (
        t,
        f"  {t}\n",
        f"https://news.example.com/unsubscribe/{t}",
        f"https://news.example.com/preferences/{t.replace(':', '%3A')}/",
        f"mailto:unsubscribe@news.example.com?subject=unsubscribe%20{t}",
        f"Re: unsubscribe {t}",
    ):
        assert links.token_from(given) == t, given
    assert links.token_from("mailto:unsubscribe@news.example.com") == ""


def test_cli_unsubscribe_token(run_cli: CliRun, session: Session, settings: Settings) -> None:
    person = add(session, settings, "a@example.com")
    session.commit()
    valid = token(settings, person.key, "daily-briefing")
    result = run_cli("subscribers", "unsubscribe-token", valid)
    assert result.output == "unsubscribed a@example.com from daily-briefing\n"
    mailto = f"mailto:unsubscribe@news.example.com?subject=unsubscribe%20{valid}"
    result = run_cli("subscribers", "unsubscribe-token", mailto)
    assert "nothing to do" in result.output
    result = run_cli("subscribers", "unsubscribe-token", valid + "x", expect=2)
    assert result.output == "Error: invalid or tampered unsubscribe token\n"


# ----- listing and export ---------------------------------------------------------


def test_export_import_round_trip_is_formula_safe(
    run_cli: CliRun, session: Session, settings: Settings, tmp_path: Path
) -> None:
    for i, name in enumerate(FORMULA_NAMES):
        add(session, settings, f"p{i}@example.com", name=name, timezone="Asia/Kolkata")
    add(session, settings, "=cmd@example.org", name="Formula Address", status=CONFIRMED)
    mixed = add(session, settings, "mixed@example.net", name="Zoë, “Mixed”", status=CONFIRMED)
    add(session, settings, "mixed@example.net", newsletters=["good-news"])
    add(session, settings, "left@example.com")
    svc.unsubscribe(session, email="left@example.com", newsletter="daily-briefing")
    session.commit()
    assert mixed.name == "Zoë, “Mixed”"

    out = tmp_path / "export.csv"
    run_cli("subscribers", "export", "--output", str(out))
    exported = out.read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(exported)))
    assert rows[0] == list(svc.EXPORT_COLUMNS)
    assert len(rows) == 1 + 6  # "left" has no active subscription
    for row in rows:
        for cell in row:
            assert cell[:1] not in ("=", "+", "-", "@"), row
    by_email = {r[0]: r for r in rows[1:]}
    assert by_email["'=cmd@example.org"][4] == "confirmed"
    assert by_email["mixed@example.net"][3:] == ["daily-briefing;good-news", "confirmed;pending"]
    assert by_email["p0@example.com"][1] == "'" + FORMULA_NAMES[0]
    assert not list(tmp_path.glob(".export.csv.*"))  # no temp file left behind

    before = {(p.email, p.name, p.timezone) for p in session.scalars(select(Subscriber))}
    subs_before = subscriptions(session)
    session.execute(delete(Subscriber))
    session.commit()
    result = run_cli("subscribers", "import", str(out))
    assert re.search(r"skipped \(errors\) +0\n", result.output)
    session.expire_all()
    after = {(p.email, p.name, p.timezone) for p in session.scalars(select(Subscriber))}
    assert after == {b for b in before if b[0] != "left@example.com"}
    assert subscriptions(session) == {
        k: v for k, v in subs_before.items() if k[0] != "left@example.com"
    }
    assert run_cli("subscribers", "export").output == exported
    result = run_cli("subscribers", "export", "-o", str(tmp_path / "no" / "dir.csv"), expect=2)
    assert result.output.startswith("Error: cannot write ")


def test_list_json_parses_back(run_cli: CliRun, session: Session, settings: Settings) -> None:
    add(session, settings, "a@example.com", name="Ann", timezone="Europe/Paris", status=CONFIRMED)
    add(session, settings, "b@example.com", newsletters=["daily-briefing", "good-news"])
    sup.suppress(session, email="b@example.com", reason=SuppressionReason.BOUNCED)
    session.commit()
    rows = json.loads(run_cli("subscribers", "list", "--format", "json").output)
    assert [(r["email"], r["newsletter"], r["status"], r["suppressed"]) for r in rows] == [
        ("a@example.com", "daily-briefing", "confirmed", None),
        ("b@example.com", "daily-briefing", "pending", "bounced"),
        ("b@example.com", "good-news", "pending", "bounced"),
    ]
    assert rows[0]["name"] == "Ann" and rows[0]["timezone"] == "Europe/Paris"
    assert rows[0]["confirmed_at"] and rows[1]["confirmed_at"] is None
    filtered = run_cli(
        "subscribers",
        "list",
        "--newsletter",
        "good-news",
        "--status",
        "pending",
        "--format",
        "json",
    )
    assert [r["email"] for r in json.loads(filtered.output)] == ["b@example.com"]
    suppressed = json.loads(run_cli("subscribers", "suppressions", "--format", "json").output)
    assert [(s["email"], s["reason"]) for s in suppressed] == [("b@example.com", "bounced")]


# ----- CLI ----------------------------------------------------------------------


def test_cli_import_prints_summary_and_every_bad_row(run_cli: CliRun) -> None:
    result = run_cli("subscribers", "import", str(CSV_DIR / "hostile.csv"), expect=1)
    out = result.stdout
    assert re.search(r"\n  added subscribers +8\n", out)
    assert re.search(r"\n  skipped \(errors\) +6\n", out)
    bad = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert [b.split(":")[0] for b in bad] == [f"line {n}" for n in (11, 12, 13, 14, 15, 17)]
    assert "line 14: ALICE@Example.com: duplicate of line 2" in bad


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("latin1.csv", "is not UTF-8 text"),
        ("no_email.csv", "the header has no email column"),
        ("empty.csv", "is empty"),
        ("missing.csv", "cannot read"),
    ],
)
def test_cli_unreadable_file_exits_2(
    run_cli: CliRun, session: Session, name: str, message: str
) -> None:
    result = run_cli("subscribers", "import", str(CSV_DIR / name), expect=2)
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 0


def test_cli_add_and_errors(run_cli: CliRun, session: Session) -> None:
    result = run_cli("subscribers", "add", "bad@", "--newsletter", "good-news", expect=2)
    assert result.output.startswith("Error: invalid email address 'bad@'")
    result = run_cli("subscribers", "add", "a@example.com", expect=2)
    assert "choose a newsletter with --newsletter" in result.output
    result = run_cli(
        "subscribers", "add", "A@Example.com", "--newsletter", "good-news", "--name", "Ann"
    )
    assert result.output == "a@example.com: good-news=pending\n"
    run_cli("subscribers", "confirm", "a@example.com")
    run_cli("subscribers", "remove", "a@example.com", "--newsletter", "good-news")
    result = run_cli("subscribers", "add", "a@example.com", "--newsletter", "good-news", expect=1)
    assert "--resubscribe" in result.output
    run_cli("subscribers", "add", "a@example.com", "--newsletter", "good-news", "--resubscribe")
    run_cli("subscribers", "suppress", "a@example.com", "--reason", "complained")
    result = run_cli("subscribers", "add", "a@example.com", "--newsletter", "good-news", expect=1)
    assert result.output == "Error: a@example.com is suppressed (complained)\n"
    result = run_cli("subscribers", "remove", "a@example.com", "--forget")
    assert "address kept only as a hash" in result.output
    emails = json.loads(run_cli("subscribers", "list", "--format", "json").output)
    assert emails == []
    result = run_cli("subscribers", "suppressions", "--format", "csv")
    assert result.output.splitlines()[1].startswith(",")  # email gone, hash kept
