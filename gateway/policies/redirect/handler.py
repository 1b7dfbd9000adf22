"""Kong's redirect (kong/plugins/redirect/handler.lua): every request is answered `status_code` with
`Location: <location>` and the body "redirecting". With `keep_incoming_path` the location keeps its scheme, host,
port and fragment and takes the request's path (normalized and escaped, as Kong's kong.request.get_path() and the
URL parser it hands it to make it) and query."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.http.server import Exchange
from gateway.policies.redirect.schema import RedirectConfig
from gateway.routing.normalize import escape_path, normalize_path

BODY = b"redirecting"


class Redirect:
    name = "redirect"
    priority = 779  # Kong's: after the limits and transformations, before what calls the upstream

    def __init__(self, config: RedirectConfig) -> None:
        self.status = config.status_code
        self.location = config.location.encode()
        self.keep = config.keep_incoming_path
        parts = urlsplit(config.location)
        self.origin = f"{parts.scheme}://{parts.netloc}".encode()
        self.fragment = f"#{parts.fragment}".encode() if parts.fragment else b""

    async def access(self, ex: Exchange) -> bool:
        location = self.location
        if self.keep:
            path, _, query = ex.request.target.partition(b"?")
            location = self.origin + escape_path(normalize_path(path)) + (b"?" + query if query else b"") + \
                self.fragment
        ex.close_after = ex.close_after or not ex.request_done
        await ex.send_head(self.status, [(b"location", location), (b"content-length", b"%d" % len(BODY))], BODY,
                           end=True)
        return True
