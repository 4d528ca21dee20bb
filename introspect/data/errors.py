"""The error raised for data that cannot be loaded as configured."""

from __future__ import annotations


class DataError(ValueError):
    """Data that cannot be loaded or used as configured; the message names the fix."""
