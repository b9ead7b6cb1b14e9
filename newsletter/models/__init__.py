"""Database tables (SQLAlchemy 2.x typed mappings) and their status enums.

Statuses change only through the transition functions here (``transition_*``), or,
for deliveries, through the ledger's bulk statements whose WHERE clauses come from
``DELIVERY_TRANSITIONS``. Uniqueness that the service relies on ("never twice") is
enforced by the database: one subscription per (subscriber, newsletter), one
edition per (newsletter, date), one delivery per (edition, subscriber).

``core`` holds the base, the types and every enum with its transition table;
``tables`` the subscribers, stories, editions and the delivery ledger; ``schedule``
the scheduler's tables; ``staff`` the console's accounts and API tokens. Everything
is importable from ``newsletter.models``.
"""

from __future__ import annotations

from newsletter.models.core import *  # noqa: F403
from newsletter.models.core import __all__ as _core
from newsletter.models.schedule import *  # noqa: F403
from newsletter.models.schedule import __all__ as _schedule
from newsletter.models.staff import *  # noqa: F403
from newsletter.models.staff import __all__ as _staff
from newsletter.models.tables import *  # noqa: F403
from newsletter.models.tables import __all__ as _tables

__all__ = [*_core, *_tables, *_schedule, *_staff]
