"""`newsletter editions` commands (being written)."""

from __future__ import annotations

import click


@click.group("edition")
def group() -> None:
    """Manage editions."""
