"""The `outbox` provider: one .eml file per recipient in a folder.

The embedded default and a first-class provider (not a mock): each message is the
exact RFC 5322 message another provider would carry. Files are named after the
delivery, written to a temporary name and renamed, so a repeated delivery replaces
its file rather than adding a copy and a crash never leaves half a message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from email import policy
from pathlib import Path

from newsletter.delivery.messages import build_message
from newsletter.delivery.providers.base import Outcome, PreparedEdition, Recipient
from newsletter.errors import ProviderConfigError

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")


class OutboxProvider:
    """Writes messages under ``root/<newsletter>/edition-<id>/``."""

    name = "outbox"
    max_batch = 1000
    idempotent = True  # one file per delivery: a repeat replaces it

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProviderConfigError(
                f"cannot create outbox folder {root}: {exc.strerror}"
            ) from None

    def folder(self, edition: PreparedEdition) -> Path:
        return self.root / edition.newsletter / f"edition-{edition.edition_id}"

    def path_for(self, edition: PreparedEdition, recipient: Recipient) -> Path:
        who = _UNSAFE.sub("_", recipient.email)
        stem = (
            f"{recipient.delivery_id:09d}-{who}"
            if recipient.delivery_id is not None
            else f"test-{who}"
        )
        return self.folder(edition) / f"{stem}.eml"

    def send_batch(
        self, edition: PreparedEdition, recipients: Sequence[Recipient]
    ) -> list[Outcome]:
        folder = self.folder(edition)
        folder.mkdir(parents=True, exist_ok=True)
        outcomes: list[Outcome] = []
        for r in recipients:
            msg = build_message(edition, r)
            path = self.path_for(edition, r)
            tmp = path.with_suffix(".tmp")
            try:
                tmp.write_bytes(msg.as_bytes(policy=policy.SMTP))
                os.replace(tmp, path)
            except OSError as exc:
                outcomes.append(
                    Outcome(r.delivery_id, "retry", error=f"outbox write failed: {exc.strerror}")
                )
                continue
            outcomes.append(Outcome(r.delivery_id, "sent", message_id=str(msg["Message-ID"])))
        return outcomes

    def check(self) -> None:
        """The folder must be writable."""
        if not os.access(self.root, os.W_OK):
            raise ProviderConfigError(f"outbox folder {self.root} is not writable")

    def close(self) -> None:
        """Nothing to release."""
