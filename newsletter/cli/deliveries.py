"""`newsletter deliveries` commands (being written)."""

from __future__ import annotations

import click


@click.group("deliveries")
def group() -> None:
    """Manage deliveries."""
