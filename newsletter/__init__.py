"""newsletter: compose the day's stories into an email edition and deliver it to subscribers."""

from __future__ import annotations

__version__ = "0.1.0"
