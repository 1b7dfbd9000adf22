"""Reject request bodies over a size: 413 up front from Content-Length, or as soon as a streamed body passes it."""

from __future__ import annotations

from gateway.http.server import Exchange
from gateway.policies.request_size_limiting.schema import RequestSizeLimitingConfig


class RequestSizeLimiting:
    name = "request-size-limiting"
    priority = 951  # Kong's

    def __init__(self, config: RequestSizeLimitingConfig) -> None:
        self.limit = config.limit_bytes
        self.require_content_length = config.require_content_length
        self._message = f"Request size limit exceeded: the body may be at most {self.limit} bytes"

    async def access(self, exchange: Exchange) -> bool:
        length = None
        chunked = False
        for name, value in exchange.request.headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if length is not None and length > self.limit:
            exchange.close_after = not exchange.request_done
            await exchange.respond_error(413, self._message)
            return True
        if length is None and self.require_content_length and (chunked or exchange.request.method in
                                                                  (b"POST", b"PUT", b"PATCH")):
            exchange.close_after = not exchange.request_done
            await exchange.respond_error(411, "A Content-Length header is required")
            return True
        exchange.body_limit = self.limit  # enforced on the bytes as they stream
        return False
