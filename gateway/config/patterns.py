"""Whether a regex in the config compiles, said as a config message: every way re.compile can refuse one."""

from __future__ import annotations

import re

from gateway.config.errors import inline


def regex_problem(pattern: str | bytes, flags: int = 0) -> str | None:
    """Why `pattern` does not compile with `flags`, or None when it does. Besides re.error, re.compile raises
    OverflowError for a repeat count of 2**32 or more and RecursionError for groups nested too deep."""
    try:
        re.compile(pattern, flags)
    except re.error as e:
        return inline(str(e))  # (its text can quote a line break of the pattern)
    except OverflowError:
        return "a repeat count is too large"
    except RecursionError:
        return "groups nested too deeply"
    return None
