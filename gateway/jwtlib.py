"""PyJWT, loaded on first use: a process whose config has no jwt or ai-mcp-oauth2 plugin never imports it, nor the
`cryptography` it brings (about 10 MiB of every process, issue 19). The zygote preloads it when the config at start
needs it (gateway.node.zygote), so workers share those pages as they share the rest of the code.

The exception classes are imported where they are caught, inside the functions that catch them."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jwt.algorithms import Algorithm
    from jwt.api_jwt import PyJWT


@functools.cache
def algorithms() -> dict[str, Algorithm]:
    """PyJWT's algorithm objects by name (HS256, RS256, ES256, EdDSA, ...)."""
    from jwt.algorithms import get_default_algorithms

    return get_default_algorithms()


@functools.cache
def parser() -> PyJWT:
    """One PyJWT parser for the process (it keeps no per-token state)."""
    from jwt.api_jwt import PyJWT

    return PyJWT()
