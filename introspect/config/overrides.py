"""The command-line override grammar (Hydra's common subset): ``key=value``, ``+key=value``
(add a key that has no value yet), ``++key=value`` (add or override), ``~key`` / ``~key=value``
(delete), and the sweep values ``a,b,c`` and ``range(start,stop[,step])`` of ``-m``."""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE = re.compile(r"^range\((-?\d+),\s*(-?\d+)(?:,\s*(-?\d+))?\)$")


class OverrideError(ValueError):
    """An override that cannot be parsed; the message names the fix."""


@dataclass(frozen=True)
class Override:
    """One parsed command-line override: ``kind`` is ``set``, ``add``, ``force`` or ``delete``;
    ``value`` is None for a ``~key`` without a value."""

    kind: str
    key: str
    value: str | None

    def dotlist(self) -> str:
        """The ``key=value`` form OmegaConf parses."""
        return f"{self.key}={self.value}"


def parse_override(arg: str) -> Override:
    """Parse one argument; raises ``OverrideError`` naming the accepted forms."""
    if arg.startswith("~"):
        key, sep, value = arg[1:].partition("=")
        if not key:
            raise OverrideError(f"argument {arg!r}: write ~key or ~key=value to delete a key")
        return Override("delete", key, value if sep else None)
    kind = "set"
    body = arg
    if arg.startswith("++"):
        kind, body = "force", arg[2:]
    elif arg.startswith("+"):
        kind, body = "add", arg[1:]
    key, sep, value = body.partition("=")
    if not sep or not key:
        raise OverrideError(
            f"argument {arg!r} is not of the form key=value (e.g. data=digits, +key=value to "
            "add a key, ~key to delete one)"
        )
    return Override(kind, key, value)


def split_values(value: str) -> list[str]:
    """The values of one sweep override: ``a,b`` -> ``[a, b]``, ``range(0,3)`` -> 0, 1, 2;
    commas inside brackets, braces, parentheses or quotes belong to the value."""
    found = _RANGE.match(value.strip())
    if found:
        start, stop, step = (int(g) if g is not None else None for g in found.groups())
        if step == 0:
            raise OverrideError(f"range step must not be 0 in {value!r}")
        return [str(v) for v in range(start, stop, step or 1)]  # type: ignore[arg-type]
    parts: list[str] = []
    depth, quote, current = 0, "", []
    for char in value:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    if any(not p for p in parts):
        raise OverrideError(f"empty value in sweep {value!r}; write key=a,b,c")
    return parts


def several_values(arg: str) -> bool:
    """Whether ``key=value`` gives a sweep of values (``a,b`` or ``range(...)``)."""
    _, sep, value = arg.partition("=")
    if not sep:
        return False
    try:
        return len(split_values(value)) > 1
    except OverrideError:
        return "," in value
