"""What each role may do. Every console page and API endpoint names one permission.

- **editor:** stories, editions, previews, test sends, send and schedule;
- **operator:** the delivery log and why, pause/resume/cancel and requeue of a
  send, subscribers read-only;
- **admin:** everything, including staff, subscriber changes and suppression.
"""

from __future__ import annotations

import enum

from newsletter.models import StaffRole


class Permission(enum.StrEnum):
    DASHBOARD = "dashboard"  # the overview every role starts on
    STORIES = "stories"  # list, add, pin, hide, fetch feeds
    EDITIONS = "editions"  # build, preview, check, test send, hold and release
    SEND = "send"  # send now, schedule
    SEND_CONTROL = "send_control"  # pause, resume, cancel, requeue a running send
    DELIVERIES = "deliveries"  # the delivery log, stats and why
    SUBSCRIBERS_READ = "subscribers_read"  # search, a person's timeline, export
    SUBSCRIBERS_WRITE = "subscribers_write"  # create, update, unsubscribe, import
    SUPPRESSION = "suppression"  # suppress and unsuppress an address
    STAFF = "staff"  # accounts and API tokens


_EDITOR = {
    Permission.DASHBOARD,
    Permission.STORIES,
    Permission.EDITIONS,
    Permission.SEND,
}
_OPERATOR = {
    Permission.DASHBOARD,
    Permission.SEND_CONTROL,
    Permission.DELIVERIES,
    Permission.SUBSCRIBERS_READ,
}
ROLE_PERMISSIONS: dict[StaffRole, frozenset[Permission]] = {
    StaffRole.EDITOR: frozenset(_EDITOR),
    StaffRole.OPERATOR: frozenset(_OPERATOR),
    StaffRole.ADMIN: frozenset(Permission),
}


def allows(role: StaffRole, permission: Permission) -> bool:
    """Whether ``role`` may do what ``permission`` covers."""
    return permission in ROLE_PERMISSIONS[role]
