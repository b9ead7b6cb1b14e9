"""`newsletter send` (being written)."""

from __future__ import annotations

import click


@click.command()
def send() -> None:
    """Send an edition."""
