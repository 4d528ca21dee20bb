"""Names of evaluation splits: a ``<corruption>/<severity>`` cell or a named split (torch-free)."""

from __future__ import annotations


def is_cell(split: str) -> bool:
    """Whether ``split`` names a ``<corruption>/<severity>`` cell."""
    name, sep, severity = split.partition("/")
    return bool(sep and name and severity.isdigit())
