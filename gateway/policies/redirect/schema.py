"""Kong's redirect plugin config (kong/plugins/redirect/schema.lua)."""

from typing import Annotated
from urllib.parse import urlsplit

import msgspec

from gateway.config.consumers import HeaderText
from gateway.config.errors import show


class RedirectConfig(msgspec.Struct, forbid_unknown_fields=True):
    location: HeaderText  # the URL to redirect to (sent in a header: no control characters)
    status_code: Annotated[int, msgspec.Meta(ge=100, le=599)] = 301
    keep_incoming_path: bool = False  # the request's path and query in place of the location's

    def __post_init__(self) -> None:
        try:
            parts = urlsplit(self.location)
        except ValueError:
            parts = None
        # Kong's typedefs.url: a scheme and a host ("https://:80" or "https://user@" have none)
        if parts is None or not parts.scheme or not parts.hostname or " " in self.location:
            raise ValueError(f"location: expected a URL with a scheme and a host, got {show(self.location)}")
