"""What every request of one web app shares (built once by the app factory)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cachetools import TTLCache
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from newsletter.audience.subscribers import timezone_names
from newsletter.config import Settings
from newsletter.delivery.providers.base import Provider
from newsletter.web.ratelimit import Limits
from newsletter.web.security import CSRF


@dataclass
class WebState:
    settings: Settings
    sessions: sessionmaker[Session]
    csrf: CSRF
    limits: Limits
    provider: Provider | None = None  # opened by the app's lifespan
    zones: tuple[str, ...] = field(default_factory=lambda: tuple(timezone_names()))
    # Edition pages as served (they name no reader), for a minute: an archive link
    # shared widely is read thousands of times, and the page barely ever changes.
    pages: TTLCache[tuple[str, str], bytes] = field(
        default_factory=lambda: TTLCache(maxsize=512, ttl=60, timer=time.time)
    )


def web_state(request: Request) -> WebState:
    """The state the app factory built, from a request."""
    web: WebState = request.app.state.web
    return web
