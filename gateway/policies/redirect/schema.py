"""Kong's redirect plugin config (kong/plugins/redirect/schema.lua)."""

from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

import msgspec

from gateway.config.errors import CONTROL_FREE, show


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
        try:
            parts = urlsplit(self.location)
        except ValueError:
            parts = None
        # Kong's typedefs.url: a scheme and a host ("https://:80" or "https://user@" have none); a space is taken
        # in the path, query or fragment, as LuaSocket's parse takes it (sent as written), not in the host
        if parts is None or not parts.scheme or not parts.hostname or " " in parts.netloc:
            raise ValueError(f"location: expected a URL with a scheme and a host, got {show(self.location)}")
