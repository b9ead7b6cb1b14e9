"""The `sendgrid` provider: one v3 Mail Send request per batch of up to 1000 recipients.

This module is the HTTP side: it posts the bodies
:mod:`newsletter.providers.sendgrid_request` builds (the edition once, one
personalization per recipient) and maps SendGrid's answers to outcomes.

Outcomes: 202 → all sent (message id = X-Message-Id); 401/403, 404/405 or a non-202
success → ProviderConfigError (or ``retry`` once part of the batch was accepted);
429/5xx/408 and failures before the request went out (refused, connect timeout, a
reset while sending) → retry; a timeout or a dropped connection after the whole
request went out → uncertain (it may have been accepted); 413 → halve and try
again (bounded); 400 naming personalizations → those recipients failed, the rest
posted once more; any other 400/4xx → all failed. The provider never sleeps or
loops for retries: the ledger schedules them. :meth:`SendGridProvider.check` is the
preflight: an authenticated ``GET /v3/scopes`` that must list ``mail.send``.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.error import URLError

import sendgrid
from python_http_client.exceptions import HTTPError

from newsletter.config import PLACEHOLDER_SECRETS, Settings
from newsletter.delivery.providers.sendgrid_request import (
    MAX_PERSONALIZATIONS,
    build_request,
    posted_body,
    retry_after,
    validate_request,
)
from newsletter.delivery.types import Outcome, OutcomeStatus, PreparedEdition, Recipient
from newsletter.errors import ProviderConfigError, ProviderError

MAX_SPLITS = 10  # 1000 → 1 recipient in ten halvings
MAIL_SEND_SCOPE = "mail.send"
PREFLIGHT_TIMEOUT = 10.0
KEY_ENV = "NEWSLETTER_SENDGRID_API_KEY"
_TOO_LARGE = "SendGrid: request too large (413) even for one recipient"
CONTENT_TYPE = "application/json; charset=utf-8"

_INDEX = re.compile(r"personalizations(?:\.|\[)(\d+)")
_BEARER = re.compile(r"(Bearer\s+)[^\s'\",}]+")


# ----- the provider --------------------------------------------------------------


class _RedactBearer(logging.Filter):
    """Masks bearer tokens in python_http_client's DEBUG lines (it logs its headers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "Bearer" in record.msg:
            record.msg = _BEARER.sub(r"\1[redacted]", record.msg)
        return True


def _install_redaction() -> None:
    logger = logging.getLogger("python_http_client.client")
    if not any(isinstance(f, _RedactBearer) for f in logger.filters):
        logger.addFilter(_RedactBearer())


def _error_text(exc: HTTPError) -> str:
    """The messages of a SendGrid error body, or a short description of another body."""
    raw = exc.body if isinstance(exc.body, bytes) else str(exc.body or "").encode()
    try:
        data = json.loads(raw)
        # SendGrid's {"errors": [...]}, or a validator's problem+json {"validation": [...]}
        errors = data.get("errors") or data.get("validation") or []
        text = "; ".join(str(e.get("message") or e) for e in errors)
    except (ValueError, AttributeError):
        text = ""
    return (text or f"HTTP {exc.status_code} {exc.reason or ''}".strip())[:300]


def _field_errors(exc: HTTPError) -> dict[int, str]:
    """Personalization index → message for the errors of a 400 that name one."""
    try:
        errors = json.loads(exc.body).get("errors") or []
    except (ValueError, AttributeError, TypeError):
        return {}
    found: dict[int, str] = {}
    for e in errors:
        match = _INDEX.match(str(e.get("field") or "")) if isinstance(e, dict) else None
        if match:
            index = int(match.group(1))
            message = f"{e.get('message') or 'rejected'} [{e['field']}]"
            found[index] = f"{found[index]}; {message}" if index in found else message
    return found


class SendGridProvider:
    """Sends batches through SendGrid's v3 Mail Send API (the ``sendgrid`` package).

    Thread-safe: it keeps no per-request state, and the package opens a new
    connection for every request.
    """

    name = "sendgrid"
    max_batch = MAX_PERSONALIZATIONS
    idempotent = False

    def __init__(
        self,
        api_key: str | None,
        *,
        api_base_url: str = "https://api.sendgrid.com",
        timeout: float = 30.0,
        verify: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = api_key or ""
        self.api_base_url = api_base_url.rstrip("/")
        self.timeout = timeout
        self.verify = verify
        self._clock = clock
        self._endpoint: Any = None
        self._scopes: Any = None
        _install_redaction()
        if not self._key_missing():
            client = sendgrid.SendGridAPIClient(api_key=self._key, host=self.api_base_url)
            http_client = client.client
            http_client.timeout = timeout
            http_client.request_headers["Content-Type"] = CONTENT_TYPE
            self._endpoint = http_client.mail.send
            self._scopes = http_client.scopes

    @classmethod
    def from_settings(cls, settings: Settings) -> SendGridProvider:
        """Build from ``delivery.sendgrid`` and NEWSLETTER_SENDGRID_API_KEY."""
        key = settings.sendgrid_api_key
        conf = settings.delivery.sendgrid
        return cls(
            key.get_secret_value() if key else None,
            api_base_url=conf.api_base_url,
            timeout=conf.timeout_seconds,
        )

    def __repr__(self) -> str:
        return f"SendGridProvider({self.api_base_url!r})"

    def _key_missing(self) -> bool:
        return self._key.strip().lower() in PLACEHOLDER_SECRETS

    def _configured(self) -> None:
        """Raise ProviderConfigError for a missing/placeholder key or a non-http(s) URL."""
        if self._key_missing() or self._endpoint is None:
            raise ProviderConfigError(f"{KEY_ENV} is not set")
        if not self.api_base_url.startswith(("https://", "http://")):
            raise ProviderConfigError(
                f"delivery.sendgrid.api_base_url must be an http(s) URL, not {self.api_base_url!r}"
            )

    def check(self) -> None:
        """Prove SendGrid is reachable and takes the key, sending nothing.

        An authenticated ``GET /v3/scopes`` must answer and list ``mail.send``.
        Raises ProviderConfigError (no key, unreachable, 401/403, scope missing) or
        ProviderError (SendGrid answers, but with 429 or a 5xx: try again later).
        """
        self._configured()
        where = f"SendGrid at {self.api_base_url}"
        try:
            response = self._scopes.get(timeout=min(self.timeout, PREFLIGHT_TIMEOUT))
            scopes = json.loads(response.body or b"{}").get("scopes") or []
        except HTTPError as exc:
            code = int(exc.status_code)
            if code in (401, 403):
                raise ProviderConfigError(f"{where} rejected the API key ({code})") from None
            if code == 429 or code >= 500:
                raise ProviderError(f"{where} is not answering properly ({code})") from None
            raise ProviderConfigError(f"{where} answered {code} to GET /v3/scopes") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ProviderConfigError(f"cannot reach {where}: {self._reason(exc)}") from None
        except (ValueError, AttributeError):
            raise ProviderConfigError(f"{where} did not answer GET /v3/scopes with JSON") from None
        if MAIL_SEND_SCOPE not in scopes:
            raise ProviderConfigError(
                f"the API key may not send mail: its scopes lack {MAIL_SEND_SCOPE!r}"
            )

    def send_batch(
        self, edition: PreparedEdition, recipients: Sequence[Recipient]
    ) -> list[Outcome]:
        """Post the batch (1000 recipients per request); one outcome per recipient."""
        self._configured()
        outcomes: list[Outcome] = []
        attempt = _Attempt()
        for start in range(0, len(recipients), MAX_PERSONALIZATIONS):
            chunk = recipients[start : start + MAX_PERSONALIZATIONS]
            outcomes += self._deliver(edition, chunk, attempt)
        return outcomes

    def send_single(self, message: PreparedEdition, recipient: Recipient) -> Outcome:
        """One message outside the ledger (a confirmation): a batch of one."""
        [outcome] = self.send_batch(message, [recipient])
        return outcome

    def close(self) -> None:
        """Nothing to release: the package opens a connection per request."""

    # ----- one request and what its answer means -----------------------------

    def _deliver(
        self,
        edition: PreparedEdition,
        recipients: Sequence[Recipient],
        attempt: _Attempt,
        *,
        depth: int = 0,
    ) -> list[Outcome]:
        if attempt.too_large:
            return _all(recipients, OutcomeStatus.FAILED, _TOO_LARGE)
        body, included, outcomes = build_request(edition, recipients)
        if not included:
            return outcomes
        if self.verify:
            problems = validate_request(json.loads(body))
            if problems:
                raise AssertionError(f"SendGrid body breaks limits: {problems}")
        try:
            response = self._endpoint.post(request_body=posted_body(body), timeout=self.timeout)
        except HTTPError as exc:
            return outcomes + self._on_error(exc, edition, included, attempt, depth)
        except URLError as exc:
            # urllib wraps what fails while the request goes out: it was not received.
            return outcomes + _all(included, OutcomeStatus.RETRY, self._transport_error(exc))
        except (OSError, http.client.HTTPException) as exc:
            # The whole request went out and the answer was lost: it may have been
            # accepted. Sending it again could mail everyone in it twice.
            error = f"{self._transport_error(exc)} after the request was sent"
            return outcomes + _all(included, OutcomeStatus.UNCERTAIN, error)
        if response.status_code != 202:
            return outcomes + self._unusable(
                attempt,
                included,
                f"SendGrid answered {response.status_code}, not 202, at {self.api_base_url}: "
                "sandbox mode or not the Mail Send API; nothing was delivered",
            )
        attempt.accepted = True
        message_id = response.headers.get("X-Message-Id")
        return outcomes + [
            Outcome(r.delivery_id, OutcomeStatus.SENT, message_id=message_id) for r in included
        ]

    def _reason(self, exc: BaseException) -> str:
        reason = exc.reason if isinstance(exc, URLError) else exc
        if isinstance(reason, TimeoutError):
            return f"no answer within {self.timeout:g} s"
        return str(reason) or type(reason).__name__

    def _transport_error(self, exc: BaseException) -> str:
        reason = exc.reason if isinstance(exc, URLError) else exc
        if isinstance(reason, TimeoutError):
            return self._reason(exc)
        if isinstance(exc, URLError):
            return f"cannot reach SendGrid: {self._reason(exc)}"
        return f"connection to SendGrid failed: {self._reason(exc)}"

    @staticmethod
    def _unusable(attempt: _Attempt, included: list[Recipient], reason: str) -> list[Outcome]:
        """Nothing can be sent: raise, unless part of this batch was already accepted.

        The sender hands a batch back as it was when this raises, so raising after a
        202 for an earlier part (a 413 half, a 400 re-post) would send that part twice.
        """
        if attempt.accepted:
            return _all(included, OutcomeStatus.RETRY, reason)
        raise ProviderConfigError(reason) from None

    def _on_error(
        self,
        exc: HTTPError,
        edition: PreparedEdition,
        included: list[Recipient],
        attempt: _Attempt,
        depth: int,
    ) -> list[Outcome]:
        code = int(exc.status_code)
        if code in (401, 403):
            return self._unusable(attempt, included, f"SendGrid rejected the API key ({code})")
        if code in (404, 405):
            return self._unusable(
                attempt,
                included,
                f"SendGrid answered {code} for /v3/mail/send at {self.api_base_url}: "
                "check delivery.sendgrid.api_base_url",
            )
        if code == 413:
            if len(included) > 1 and depth < MAX_SPLITS:
                half = len(included) // 2
                first = self._deliver(edition, included[:half], attempt, depth=depth + 1)
                return first + self._deliver(edition, included[half:], attempt, depth=depth + 1)
            attempt.too_large = True  # the edition alone is too large: stop splitting
            return _all(included, OutcomeStatus.FAILED, _TOO_LARGE)
        if code == 429:
            wait = retry_after(exc.headers, now=self._clock())
            note = f"; retry in {wait:.0f} s" if wait is not None else ""
            return _all(
                included, OutcomeStatus.RETRY, f"rate limited by SendGrid (429){note}", wait
            )
        message = _error_text(exc)
        if code == 400:
            named = {i: m for i, m in _field_errors(exc).items() if i < len(included)}
            if named and not attempt.reposted:
                attempt.reposted = True
                failed = [
                    Outcome(
                        r.delivery_id,
                        OutcomeStatus.FAILED,
                        error=f"SendGrid rejected (400): {named[i]}",
                    )
                    for i, r in enumerate(included)
                    if i in named
                ]
                others = [r for i, r in enumerate(included) if i not in named]
                if others:
                    failed += self._deliver(edition, others, attempt, depth=depth)
                return failed
            return _all(
                included, OutcomeStatus.FAILED, f"SendGrid rejected the request (400): {message}"
            )
        if code >= 500 or code in (408, 425):
            return _all(included, OutcomeStatus.RETRY, f"SendGrid answered {code}: {message}")
        return _all(
            included, OutcomeStatus.FAILED, f"SendGrid rejected the request ({code}): {message}"
        )


@dataclass
class _Attempt:
    """One batch's state: its one re-post after a 400 used, too large, a part accepted."""

    reposted: bool = False
    too_large: bool = False
    accepted: bool = False


def _all(
    recipients: Sequence[Recipient], status: OutcomeStatus, error: str, wait: float | None = None
) -> list[Outcome]:
    return [Outcome(r.delivery_id, status, error=error, retry_after=wait) for r in recipients]
