"""Optional proof of work on the sign-up form (``web.captcha = "altcha"``).

The ``altcha`` package makes and checks the challenges (no third party involved);
the browser solves one (static/site.js) before the form can be sent. A solved
challenge counts once: the shared rate-limit table remembers it until it expires.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

from altcha.v1 import ChallengeOptions, create_challenge, verify_solution

from newsletter.models import utcnow
from newsletter.web.state import WebState

#: How long a challenge may be solved for, and how much work it asks (~0.1-1 s).
LIFETIME = timedelta(minutes=10)
MAX_NUMBER = 100_000


def challenge(web: WebState) -> dict[str, Any]:
    """A new signed challenge for the browser."""
    made = create_challenge(
        ChallengeOptions(
            hmac_key=web.settings.signing_key,
            max_number=MAX_NUMBER,
            expires=utcnow() + LIFETIME,
        )
    )
    data: dict[str, Any] = made.to_dict()
    return data


def verify(web: WebState, payload: str) -> bool:
    """Whether ``payload`` solves one of our challenges, unexpired, for the first time."""
    if not payload or len(payload) > 2000:
        return False
    ok, _ = verify_solution(payload, web.settings.signing_key, check_expires=True)
    if not ok:
        return False
    solved = json.loads(base64.b64decode(payload))  # valid: verify_solution read it
    seconds = int(LIFETIME.total_seconds())
    return web.limits.first_use(str(solved["challenge"]), seconds=seconds)
