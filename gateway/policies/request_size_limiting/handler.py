"""Kong's request-size-limiting (kong/plugins/request-size-limiting/handler.lua), in access: 413 (417 when the client
asked `Expect: 100-continue`) for a Content-Length over the limit; without one, the body is read there, to its end
or until it passes the limit (Kong's get_raw_body, or its temporary file's size), so no later plugin runs for a body
it refuses, whatever the route's request_buffering. The body read is kept for the proxying
(gateway.pipeline.request_buffer.read_within). Like Kong's kong.request.get_headers(), only the first MAX_REQ_HEADERS
(100) header lines are read. Its answers are kong.response.error's: the body not read is read and dropped after
them (the connection loop's, as Kong's exit discards it: ngx_http_discard_request_body) and the connection kept."""

from __future__ import annotations

from gateway.http.kong_errors import SIZE_LIMITED
from gateway.http.server import Exchange
from gateway.pipeline.request_buffer import read_within
from gateway.policies.request_size_limiting.schema import RequestSizeLimitingConfig
from gateway.routing.router import MAX_REQ_HEADERS  # lua_max_req_headers, the lines get_headers() reads


class RequestSizeLimiting:
    name = "request-size-limiting"
    priority = 951  # Kong's

    def __init__(self, config: RequestSizeLimitingConfig) -> None:
        self.limit = config.limit_bytes
        self.require_content_length = config.require_content_length

    async def access(self, exchange: Exchange) -> bool:
        length = coding = None
        expect = False
        headers = exchange.request.headers
        if len(headers) > MAX_REQ_HEADERS:
            headers = headers[:MAX_REQ_HEADERS]
        for name, value in headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":  # as get_headers gives it: a second line would make it a table
                coding = value if coding is None else b""
            elif name == b"expect":
                expect = value.strip().lower() == b"100-continue"
        if length is not None:
            if length <= self.limit:
                return False
        else:
            # Kong exempts `headers["Transfer-Encoding"] == "chunked"`, compared as written (the codec trimmed the
            # value as nginx does): nginx reads "Chunked" as chunked too, but Kong answers it 411
            if self.require_content_length and coding != b"chunked":
                await exchange.respond_error(411, "A valid Content-Length header is required")
                return True
            if await read_within(exchange, self.limit):  # Kong sizes a request without a body at 0 (get_raw_body's "")
                return False
        await exchange.respond_error(417 if expect else 413, SIZE_LIMITED)  # Kong's, 417 with Expect
        return True
