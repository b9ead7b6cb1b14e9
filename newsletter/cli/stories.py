"""`newsletter stories` commands (being written)."""

from __future__ import annotations

import click


@click.group("stories")
def group() -> None:
    """Manage stories."""
