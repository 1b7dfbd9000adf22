"""Kong's redirect plugin config (kong/plugins/redirect/schema.lua)."""

from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

import msgspec

from gateway.config.errors import CONTROL_FREE, show
from gateway.config.service_url import url_problem


class RedirectConfig(msgspec.Struct, forbid_unknown_fields=True):
    # null: nil, off for handler.lua:17 `if conf.keep_incoming_path` (gateway.config.decode)
    NULL_AS: ClassVar[dict[str, Any]] = {"keep_incoming_path": False}

    # the URL to redirect to (sent in a header: no control characters)
    location: Annotated[str, msgspec.Meta(pattern=CONTROL_FREE)]
    status_code: Annotated[int, msgspec.Meta(ge=100, le=599)] = 301
    keep_incoming_path: bool = False  # the request's path and query in place of the location's

    def __post_init__(self) -> None:
        if not self.location:  # Kong's len_min 1, implied for every string field
            raise ValueError("location: length must be at least 1")
        # Kong's typedefs.url: socket.url's parse finds a host and a scheme ("https://:80" or "https://user@" have
        # no host, " https://h" no scheme); nothing more, so "http://a b/" or "http://h?x" are taken, sent as written
        if problem := url_problem(self.location):
            raise ValueError(f"location: expected a URL with a scheme and a host, got {show(self.location)}: "
                             f"{problem}")
        if self.keep_incoming_path and not whatwg_readable(self.location):
            raise ValueError(f"location: with keep_incoming_path, Kong parses {show(self.location)} with ada (a WHATWG "
                             "URL parser), which finds no scheme and host it can read in it, so every request would "
                             "fail (handler.lua:19-22); write scheme://host with a host name or [IPv6 address], or "
                             "set keep_incoming_path false")


def whatwg_readable(location: str) -> bool:
    """Whether the handler's reading of the location for keep_incoming_path (urlsplit's scheme, host and port, as
    ada's href writes them) finds a host in it: no "[" or "]" out of place, a host, no space in it."""
    try:
        parts = urlsplit(location)
    except ValueError:
        return False
    return bool(parts.scheme and parts.hostname) and " " not in parts.netloc
