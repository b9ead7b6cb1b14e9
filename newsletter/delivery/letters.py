"""One-off messages outside the ledger: the confirmation email of a web sign-up.

A letter is rendered from the email templates like an edition, and carries only
what we wrote: the newsletters' names and cadence, the signed confirmation link,
the postal address. It goes through the configured provider's single-message path.
"""

from __future__ import annotations

from collections.abc import Sequence

from newsletter.config import Settings, describe_cadence
from newsletter.content import render
from newsletter.content.types import Brand
from newsletter.delivery import links
from newsletter.delivery.types import PreparedEdition, Recipient

CONFIRM = "confirm"


def confirmation(
    settings: Settings, *, to: str, token: str, newsletters: Sequence[str]
) -> tuple[PreparedEdition, Recipient]:
    """The confirmation email for ``newsletters`` (slugs), ready for ``send_single``."""
    chosen = [
        {"name": settings.newsletters[s].name, "cadence": describe_cadence(settings.newsletters[s])}
        for s in newsletters
        if s in settings.newsletters
    ]
    content = render.render_letter(
        CONFIRM,
        subject=f"Confirm your subscription to {settings.service.name}",
        brand=Brand.from_settings(settings),
        templates_dir=settings.templates_path,
        context={
            "newsletters": chosen,
            "confirm_url": links.confirm_url(settings, token),
            "days": settings.web.confirm_days,
        },
    )
    sender = settings.sender
    message = PreparedEdition(
        edition_id=0,
        newsletter=CONFIRM,
        content=content,
        from_name=sender.from_name,
        from_address=sender.from_address,
        reply_to=sender.reply_to,
        list_id="",
        domain=sender.domain,
        single=True,
    )
    return message, Recipient(None, to, "", "", "", "")
