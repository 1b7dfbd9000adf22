"""Whether a route regex in the config compiles, said as a config message: every way the router can refuse one."""

from __future__ import annotations

from gateway.config.errors import inline
from gateway.routing.kong_regex import problem


def regex_problem(pattern: str | bytes, header: bool = False) -> str | None:
    """Why the route regex `pattern` (a `~` path's, or with `header` a `~*` header value's, in Kong's syntax: Rust's
    regex crate's) does not compile as the router compiles it (gateway.routing.kong_regex, on PCRE2), or None when
    it does: what Rust's regex refuses, as Kong refuses it, and what the gateway cannot run as Rust's regex would."""
    text = pattern.decode() if isinstance(pattern, bytes) else pattern
    reason = problem(text, header)
    return None if reason is None else inline(reason)  # (its text can quote a line break of the pattern)
