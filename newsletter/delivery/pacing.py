"""Pacing a send: how fast it may go, and through which provider.

:class:`RateLimiter` keeps all sender threads of a process under
``delivery.rate_per_second``; :class:`Failover` moves the rest of a send to the
secondary provider once the primary has failed transiently too often in a row.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from newsletter.delivery.providers.base import Provider
from newsletter.delivery.types import Outcome, OutcomeStatus
from newsletter.errors import ProviderError

log = logging.getLogger(__name__)


class RateLimiter:
    """Spaces batches so a provider gets at most ``rate`` messages per second overall."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self.next_free = clock()
        self.lock = threading.Lock()

    def delay_for(self, messages: int) -> float:
        """Reserve ``messages`` slots; returns how long the caller must wait first."""
        with self.lock:
            now = self.clock()
            start = max(now, self.next_free)
            self.next_free = start + messages / self.rate
            return start - now


class FailureGuard:
    """Stops a send whose batches keep failing outright for the same reason.

    When every recipient of ``limit`` batches in a row is failed permanently with
    one identical reason, the fault is in the shared part of the message or the
    account (a bad From address, a relay refusing everyone), not in the
    recipients: failing the rest of the audience one batch at a time would only
    make more work for the operator.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reason: str | None = None
        self.count = 0
        self.lock = threading.Lock()

    def check(self, outcomes: list[Outcome]) -> None:
        """Count this batch; ProviderError once ``limit`` batches failed alike."""
        reasons = {o.error for o in outcomes if o.status is OutcomeStatus.FAILED}
        all_failed = bool(outcomes) and all(o.status is OutcomeStatus.FAILED for o in outcomes)
        with self.lock:
            if all_failed and len(reasons) == 1:
                reason = reasons.pop()
                self.count = self.count + 1 if reason == self.reason else 1
                self.reason = reason
            else:
                self.count, self.reason = 0, None
            if self.count >= self.limit:
                raise ProviderError(
                    f"stopped: every recipient of the last {self.count} batches failed with "
                    f"{self.reason!r}",
                    code="send.failing",
                    reason=self.reason,
                    batches=self.count,
                )


class Failover:
    """The provider in use: the primary until it fails transiently too often in a row."""

    def __init__(self, primary: Provider, secondary: Provider | None, threshold: int) -> None:
        self.primary, self.secondary, self.threshold = primary, secondary, threshold
        self.current = primary
        self.failures = 0
        self.lock = threading.Lock()

    def record(self, provider: Provider, outcomes: list[Outcome]) -> None:
        """Count a batch that was wholly transient failures; switch at the threshold."""
        with self.lock:
            if provider is not self.current:
                return
            if outcomes and all(o.status is OutcomeStatus.RETRY for o in outcomes):
                self.failures += 1
            else:
                self.failures = 0
            if self.secondary and self.current is self.primary and self.failures >= self.threshold:
                log.warning(
                    "%s failed %d batches in a row: failing over to %s",
                    self.primary.name,
                    self.failures,
                    self.secondary.name,
                )
                self.current, self.failures = self.secondary, 0
