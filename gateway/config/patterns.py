"""Whether a route regex in the config compiles, said as a config message: every way re.compile can refuse one."""

from __future__ import annotations

import re

from gateway.config.errors import inline
from gateway.routing.router import python_regex


def regex_problem(pattern: str | bytes, flags: int = 0) -> str | None:
    """Why the route regex `pattern` (a `~` path's or a `~*` header value's, in Kong's syntax) does not compile as
    the router reads it (python_regex, then re.compile with `flags`), or None when it does. python_regex refuses
    what Kong's router (Rust's regex crate) refuses; re.compile also raises OverflowError for a repeat count of 2**32
    or more and RecursionError for groups nested too deep."""
    text = pattern.decode() if isinstance(pattern, bytes) else pattern
    try:
        re.compile(python_regex(text).encode(), flags)
    except re.error as e:
        return inline(str(e))  # (its text can quote a line break of the pattern)
    except OverflowError:
        return "a repeat count is too large"
    except RecursionError:
        return "groups nested too deeply"
    return None
