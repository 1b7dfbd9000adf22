"""kong.conf's array values, as the `gateway:` keys that take one read it: a YAML list as it is, or kong.conf's
comma-separated string (kong/conf_loader: items trimmed, empty ones dropped). A leaf module: config, http and
telemetry code all use it."""

from __future__ import annotations

from collections.abc import Sequence


def kong_array(value: Sequence[str] | str) -> list[str]:
    """The items of a kong.conf array setting."""
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item.strip()]
