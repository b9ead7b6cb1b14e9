"""The `outbox` provider: one .eml file per recipient in a folder.

The embedded default and a first-class provider (not a mock): each file holds the
RFC 5322 message :mod:`newsletter.delivery.message` builds, byte for byte what the
SMTP provider would carry (it adds only its DKIM signature). Files are named after the
delivery, written to a temporary name and renamed, so a repeated delivery replaces
its file rather than adding a copy and a crash never leaves half a message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from newsletter.delivery.message import UnsendableRecipient, date_header, template_for
from newsletter.delivery.types import Outcome, OutcomeStatus, PreparedEdition, Recipient
from newsletter.errors import ProviderConfigError
from newsletter.models import utcnow

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
        template = template_for(edition)
        date = date_header(utcnow())
        outcomes: list[Outcome] = []
        for r in recipients:
            try:
                message_id, data = template.render(r, date=date)
            except UnsendableRecipient as exc:
                outcomes.append(Outcome(r.delivery_id, OutcomeStatus.FAILED, error=str(exc)))
                continue
            path = self.path_for(edition, r)
            tmp = path.with_suffix(".tmp")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, path)
            except OSError as exc:
                error = f"outbox write failed: {exc.strerror}"
                outcomes.append(Outcome(r.delivery_id, OutcomeStatus.RETRY, error=error))
                continue
            outcomes.append(Outcome(r.delivery_id, OutcomeStatus.SENT, message_id=message_id))
        return outcomes

    def send_single(self, message: PreparedEdition, recipient: Recipient) -> Outcome:
        """Write one message under ``root/single/<kind>/``, named after time and address."""
        folder = self.root / "single" / message.newsletter
        folder.mkdir(parents=True, exist_ok=True)
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        path = folder / f"{stamp}-{_UNSAFE.sub('_', recipient.email)}.eml"
        try:
            message_id, data = template_for(message).render(recipient, date=date_header(utcnow()))
        except UnsendableRecipient as exc:
            return Outcome(recipient.delivery_id, OutcomeStatus.FAILED, error=str(exc))
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            error = f"outbox write failed: {exc.strerror}"
            return Outcome(recipient.delivery_id, OutcomeStatus.RETRY, error=error)
        return Outcome(recipient.delivery_id, OutcomeStatus.SENT, message_id=message_id)

    def check(self) -> None:
        """The folder must be writable."""
        if not os.access(self.root, os.W_OK):
            raise ProviderConfigError(f"outbox folder {self.root} is not writable")

    def close(self) -> None:
        """Nothing to release."""
