"""The delivery-events endpoint: SendGrid's Signed Event Webhook.

The signature is verified over the raw body before anything is parsed; a bad or
missing one, or one outside the replay window, is 403 and changes nothing. A
batch (SendGrid posts up to thousands of events at once) is taken in one
transaction; unknown deliveries are kept and counted, not an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from newsletter.db import transaction
from newsletter.errors import InputError
from newsletter.events import sendgrid
from newsletter.events.ingest import ingest
from newsletter.models import utcnow
from newsletter.web.state import WebState

log = logging.getLogger(__name__)
router = APIRouter()
#: Webhook batches are far larger than any form (see the body limit in app.py).
MAX_WEBHOOK_BYTES = 32 * 1024 * 1024


def _json(status: int, data: Mapping[str, object]) -> Response:
    return Response(json.dumps(data), status_code=status, media_type="application/json")


@router.post("/webhooks/sendgrid")
async def sendgrid_events(request: Request) -> Response:
    web: WebState = request.app.state.web
    body = await request.body()
    try:
        sendgrid.verify(
            web.settings,
            body=body,
            signature=request.headers.get(sendgrid.SIGNATURE),
            timestamp=request.headers.get(sendgrid.TIMESTAMP),
        )
    except sendgrid.Refused as exc:
        log.warning("SendGrid webhook refused: %s", exc)
        return _json(403, {"error": "forbidden"})
    try:
        events = sendgrid.parse(body)
    except InputError as exc:
        return _json(400, {"error": str(exc)})

    def store() -> dict[str, int]:
        with transaction(web.sessions) as session:
            return ingest(session, settings=web.settings, events=events, now=utcnow()).as_dict()

    report = await run_in_threadpool(store)
    return _json(200, report)
