"""Email addresses: validation and the one stored form every module compares.

Addresses are validated and normalised with email-validator (syntax only, no DNS)
and then lower-cased as a whole. Local parts are case-sensitive in theory, but no
real mailbox provider treats them so, and one lower-case form is what makes
``Alice@Example.com`` and ``alice@example.com`` one subscriber, one suppression hash
and one "duplicate in file". That lower-case form is what is stored and mailed.

Its own module so that :mod:`newsletter.subscribers` and
:mod:`newsletter.suppression` can both use it without importing each other.
"""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

from newsletter.errors import InputError


def email_problem(raw: str) -> tuple[str, str]:
    """Normalise ``raw``: returns ``(address, "")`` or ``("", reason)`` if invalid."""
    value = raw.strip()
    if not value:
        return "", "email address is empty"
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        return "", str(exc)
    return result.normalized.lower(), ""


def normalise_email(raw: str) -> str:
    """The stored form of an address (validated, normalised, lower-case).

    Raises InputError naming the address and why it is invalid.
    """
    address, problem = email_problem(raw)
    if problem:
        shown = raw.strip()
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise InputError(f"invalid email address {shown!r}: {problem}")
    return address
