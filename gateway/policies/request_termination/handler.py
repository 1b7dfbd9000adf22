"""Kong's request-termination (kong/plugins/request-termination/handler.lua).

With `trigger`, only requests carrying that header (as kong.request.get_headers() finds it: in the first 100 lines,
by the name as written, else lower-cased with "_" as "-") or query argument (as named) are answered. The answer:
`body` as is (with `content_type`), or `{"message": message}` (Kong's default message for 401, 404, 405, 500, 502
and 503), or with `echo` a JSON copy of the request as Kong's PDK reads it (scheme, host, port, headers, query, body
by its Content-Type and raw body if nginx kept it in its 8 KiB buffer, method, normalized path; the matched route and
service as the log plugins write them). Without a body Kong calls ngx.exit(status) and nginx answers: Kong's error
page for a status of its error_page list, nginx's own HTML page for another status it has one for, else no body.
JSON is written as kong.response.exit's lua-cjson writes it (compact, "/" escaped, UTF-8 as is, numbers with 16
significant digits, no key for a nil; a document it cannot encode, a NaN from the body, is Kong's 500), and a 204
has no Content-Length, Content-Type or body (nginx's). A `body` whose `content_type` starts with application/grpc
also carries exit's `grpc-status` and `grpc-message` (kept on a 204).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from gateway.http.codec import NGINX_HOSTS
from gateway.http.kong_errors import KONG_ERROR_PAGES, nginx_special_page
from gateway.http.server import Exchange
from gateway.http.uri_args import add_arg, uri_args
from gateway.policies import cjson
from gateway.policies.consumers import JSON_UTF8
from gateway.policies.header_list import escape_value, lookup, request_header
from gateway.policies.llm_request import raw_body
from gateway.policies.request_body import get_body
from gateway.policies.request_termination.schema import RequestTerminationConfig
from gateway.routing.normalize import normalize_path

DEFAULT_RESPONSE = {401: "Unauthorized", 404: "Not found", 405: "Method not allowed",
                    500: "An unexpected error occurred", 502: "Bad Gateway", 503: "Service unavailable"}
MAX_ARGS = 100  # ngx.req.get_uri_args' and get_headers' default count, which Kong's get_query and get_headers keep
NGINX_CLOSES = frozenset({400, 413, 414, 495, 496, 497, 500, 501})  # nginx turns keep-alive off for these
# kong/pdk/response.lua:75, 87-120: GRPC_STATUS_UNKNOWN, HTTP_TO_GRPC_STATUS, GRPC_MESSAGES
HTTP_TO_GRPC_STATUS = {200: 0, 400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 429: 8, 499: 1, 500: 13, 501: 12, 503: 14,
                       504: 4}
GRPC_MESSAGES = ("OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
                 "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
                 "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated")
GRPC_STATUS_UNKNOWN = 2
CONTENT_TYPE_GRPC = "application/grpc"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def query(target: bytes) -> dict[str, Any]:
    """Kong's kong.request.get_query (ngx.req.get_uri_args, gateway.http.uri_args) with its names and values as
    text: the first 100 arguments, a bare name true, a repeated name a list."""
    return {_text(name): [_value(v) for v in value] if isinstance(value, list) else _value(value)
            for name, value in uri_args(target.partition(b"?")[2]).items()}


def _value(value: bytes | bool) -> str | bool:
    return _text(value) if isinstance(value, bytes) else value


def _captures(captures: dict[int | str, bytes | None]) -> dict[str, Any]:
    """kong.request.get_uri_captures(): the named groups, and the numbered ones from 1 as an array (cjson's
    array_mt leaves out [0], the whole match); a group that took no part is false, as ngx.re gives it."""
    def value(v: bytes | None) -> str | bool:
        return _text(v) if v is not None else False
    return {"named": {k: value(v) for k, v in captures.items() if isinstance(k, str)},
            "unnamed": [value(v) for k, v in sorted((k, v) for k, v in captures.items() if isinstance(k, int) and k)]}


def grpc_status(status: int) -> int:
    """The grpc-status kong.response.exit sends with a status (response.lua:696-710): its own code, else that of
    500, 400 or 200 for another 5xx, 4xx or 2xx, else Unknown."""
    if status in HTTP_TO_GRPC_STATUS:
        return HTTP_TO_GRPC_STATUS[status]
    for low in (500, 400, 200):
        if low <= status <= low + 99:
            return HTTP_TO_GRPC_STATUS[low]
    return GRPC_STATUS_UNKNOWN


def grpc_headers(status: int, content_type: str | None) -> list[tuple[bytes, bytes]]:
    """What kong.response.exit(status, body, {Content-Type = content_type}) adds to a string body: with a Content-Type
    starting with application/grpc, gRPC output (response.lua:684-711), grpc-status and grpc-message
    (:757-776)."""
    if content_type is None or not content_type.startswith(CONTENT_TYPE_GRPC):
        return []
    code = grpc_status(status)
    return [(b"grpc-status", b"%d" % code), (b"grpc-message", GRPC_MESSAGES[code].encode())]


def _host(host: bytes | None) -> str:
    """nginx's $host: the Host header lower-cased, without its port and one final dot."""
    return _text(NGINX_HOSTS[host]) if host else ""


class RequestTermination:
    name = "request-termination"
    priority = 2  # Kong's

    def __init__(self, config: RequestTerminationConfig, node: str = "") -> None:
        self.status = self.sent_status = config.status_code
        self.trigger_header = config.trigger.encode() if config.trigger else None
        self.trigger_arg = config.trigger
        self.echo = config.echo
        self.node_id = node
        # Kong's `conf.message or DEFAULT_RESPONSE[status]`
        self.message = config.message if config.message is not None else DEFAULT_RESPONSE.get(self.status)
        self.error_page = self.close = False
        self.content_type: bytes | None = None
        self.body = b""
        self.grpc: list[tuple[bytes, bytes]] = []
        if config.body is not None:
            self.body = config.body.encode()
            self.content_type = escape_value(config.content_type.encode()) if config.content_type else None
            self.grpc = grpc_headers(self.status, config.content_type)
        elif self.message is not None:
            self.body = cjson.encode({"message": self.message})
            self.content_type = JSON_UTF8
        else:  # no body: kong.response.exit calls ngx.exit(status), and nginx makes the answer
            self.close = self.status in NGINX_CLOSES
            if self.status in KONG_ERROR_PAGES:
                self.error_page = True
            elif (page := nginx_special_page(self.status)) is not None:
                self.sent_status, self.body = page
                self.content_type = b"text/html"

    async def access(self, ex: Exchange) -> bool:
        req = ex.request
        if self.trigger_header is not None:
            if lookup(req.headers, self.trigger_header) is None and self.trigger_arg not in query(req.target):
                return False
        if self.echo:
            await self._send(ex, self.status, JSON_UTF8, cjson.encode(await self._echo(ex)))
            return True
        if self.close:
            ex.close_after = True
        if self.error_page:
            await ex.respond_error_page(self.status)
        else:
            await self._send(ex, self.sent_status, self.content_type, self.body, self.grpc)
        return True

    @staticmethod
    async def _send(ex: Exchange, status: int, content_type: bytes | None, body: bytes,
                    grpc: list[tuple[bytes, bytes]] | None = None) -> None:
        """kong.response.exit: the body with its Content-Length, then the `grpc` headers; nothing of the body for a
        204 (nginx drops it, its Content-Length and Content-Type, not the grpc ones)."""
        headers = []
        if status == 204:
            body = b""
        else:
            if content_type is not None:
                headers.append((b"content-type", content_type))
            headers.append((b"content-length", b"%d" % len(body)))
        if grpc:
            headers += grpc
        await ex.send_head(status, headers, body, end=True)

    async def _echo(self, ex: Exchange) -> dict[str, Any]:
        """The document of Kong's echo; a key whose value is nil in Kong is left out (cjson writes none)."""
        req = ex.request
        # Kong's get_raw_body(): the body when nginx kept it in memory (gateway.policies.llm_request.in_memory: a
        # Content-Length body up to 8k + 25% of a buffer past its preread, a chunked one's 8k raw), none from a file
        raw = await raw_body(ex, 0)
        headers: dict[str, Any] = {}
        for name, value in req.headers[:MAX_ARGS]:
            add_arg(headers, _text(name), _text(value))
        try:
            port = ex.conn.sock.getsockname()[1]
        except OSError:
            port = None
        request: dict[str, Any] = {
            "scheme": ex.conn.scheme.decode("latin-1"), "host": _host(req.host), "port": port, "headers": headers,
            "query": query(req.target), "method": _text(req.method),
            "path": _text(normalize_path(req.target.partition(b"?")[0])),
            "uri_captures": _captures(ex.uri_captures())}
        if raw is not None:
            request["raw_body"] = _text(raw)
            parsed = get_body(request_header(req.headers, b"content-type"), raw)
            if parsed is not None:
                request["body"] = parsed[1]
        doc: dict[str, Any] = {"kong": {"node_id": self.node_id, "worker_pid": os.getpid(),
                                        "hostname": socket.gethostname()}, "request": request}
        if self.message is not None:
            doc["message"] = self.message
        facts = ex.route.facts if ex.route is not None else None
        if facts is not None:
            doc["matched_route"] = json.loads(bytes(facts.route_json))
            if facts.service_json is not None:
                doc["matched_service"] = json.loads(bytes(facts.service_json))
        return doc
