"""kong.conf's array values, as the `gateway:` keys that take one read it: a YAML list as it is, or kong.conf's
comma-separated string, split as Kong's conf loader splits it (parse.lua's parse_value: Penlight's stringx.split at
",", each item stripped). An empty item is kept, as Kong keeps it, for the setting's check to refuse. A leaf module:
config, http and telemetry code all use it."""

from __future__ import annotations

from collections.abc import Sequence


def kong_array(value: Sequence[str] | str) -> list[str]:
    """The items of a kong.conf array setting, stripped, empty ones kept ("" alone: none)."""
    items = penlight_split(value) if isinstance(value, str) else value
    return [item.strip() for item in items]


def penlight_split(text: str) -> list[str]:
    """Penlight 1.14's stringx.split(text, ","): utils.split drops a last empty piece and makes a lone empty piece
    none, then stringx.split adds one "" after a trailing comma ("" is [], "," is [""], "a,,b" is ["a", "", "b"])."""
    *head, last = text.split(",")
    pieces = [*head, last] if last else head
    if pieces == [""]:
        pieces = []
    return [*pieces, ""] if text.endswith(",") else pieces
