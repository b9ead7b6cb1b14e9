"""`newsletter subscribers` commands (being written)."""

from __future__ import annotations

import click


@click.group("subscribers")
def group() -> None:
    """Manage subscribers."""
