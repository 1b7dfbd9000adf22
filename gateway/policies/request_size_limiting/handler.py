"""Reject request bodies over a size: 413 up front from Content-Length, or as soon as a streamed body passes it."""

from __future__ import annotations

from gateway.http.kong_errors import SIZE_LIMITED
from gateway.http.server import Exchange
from gateway.policies.request_size_limiting.schema import RequestSizeLimitingConfig


class RequestSizeLimiting:
    name = "request-size-limiting"
    priority = 951  # Kong's

    def __init__(self, config: RequestSizeLimitingConfig) -> None:
        self.limit = config.limit_bytes
        self.require_content_length = config.require_content_length

    async def access(self, exchange: Exchange) -> bool:
        length = coding = None
        expect = False
        for name, value in exchange.request.headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":  # as get_headers gives it: a second line would make it a table
                coding = value if coding is None else b""
            elif name == b"expect":
                expect = value.strip().lower() == b"100-continue"
        # Kong exempts `headers["Transfer-Encoding"] == "chunked"`, compared as written (the codec trimmed the
        # value as nginx does): nginx reads "Chunked" as chunked too, but Kong answers it 411
        if length is None and self.require_content_length and coding != b"chunked":
            exchange.close_after = not exchange.request_done
            await exchange.respond_error(411, "A valid Content-Length header is required")
            return True
        if (length or 0) > self.limit:  # Kong sizes a request without a body at 0 (get_raw_body's "")
            exchange.close_after = not exchange.request_done
            await exchange.respond_error(417 if expect else 413, SIZE_LIMITED)  # Kong's, 417 with Expect
            return True
        exchange.body_limit = self.limit  # enforced on the bytes as they stream
        return False
