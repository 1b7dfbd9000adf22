"""Kong's request-termination (kong/plugins/request-termination/handler.lua).

With `trigger`, only requests carrying that header or query argument are answered. The answer: `body` as is (with
`content_type`), or `{"message": message}` (Kong's default message for 401, 404, 405, 500, 502 and 503; no body for
other statuses without one), or with `echo` a JSON copy of the request (what Kong's echo shows that the gateway
has: the request's scheme, host, port, headers, query, body, method and path; not the matched route and service).
"""

from __future__ import annotations

import json
import os
import socket
from urllib.parse import parse_qsl

from gateway.http.server import Exchange
from gateway.policies.consumers import JSON_UTF8
from gateway.policies.request_termination.schema import RequestTerminationConfig

DEFAULT_RESPONSE = {401: "Unauthorized", 404: "Not found", 405: "Method not allowed",
                    500: "An unexpected error occurred", 502: "Bad Gateway", 503: "Service unavailable"}
ECHO_BODY_LIMIT = 1024 * 1024  # bytes of a request body an echo reads back


def _query(target: bytes) -> dict[str, str | list[str]]:
    """Kong's kong.request.get_query: one value, or a list when the argument repeats; a bare argument is true."""
    out: dict[str, str | list[str]] = {}
    for k, v in parse_qsl(target.partition(b"?")[2].decode("latin-1"), keep_blank_values=True):
        prev = out.get(k)
        out[k] = v if prev is None else ([*prev, v] if isinstance(prev, list) else [prev, v])
    return out


class RequestTermination:
    name = "request-termination"
    priority = 2  # Kong's

    def __init__(self, config: RequestTerminationConfig) -> None:
        self.status = config.status_code
        self.trigger = config.trigger.lower() if config.trigger else None
        self.echo = config.echo
        self.message = config.message or DEFAULT_RESPONSE.get(self.status)
        if config.body is not None:
            self.body = config.body.encode()
            self.content_type = config.content_type.encode() if config.content_type else None
        else:
            self.body = json.dumps({"message": self.message}).encode() if self.message else b""
            self.content_type = JSON_UTF8 if self.message else None

    async def access(self, ex: Exchange) -> bool:
        req = ex.request
        if self.trigger is not None:
            name = self.trigger.encode()
            if not any(h == name for h, _ in req.headers) and self.trigger not in _query(req.target):
                return False
        if self.echo:
            await self._echo(ex)
            return True
        headers = [(b"content-length", b"%d" % len(self.body))]
        if self.content_type is not None:
            headers.insert(0, (b"content-type", self.content_type))
        ex.close_after = ex.close_after or not ex.request_done
        await ex.send_head(self.status, headers, self.body, end=True)
        return True

    async def _echo(self, ex: Exchange) -> None:
        req = ex.request
        raw, whole = await ex.read_body(ECHO_BODY_LIMIT)
        headers: dict[str, str | list[str]] = {}
        for name, value in req.headers:
            k, v = name.decode("latin-1"), value.decode("latin-1")
            prev = headers.get(k)
            headers[k] = v if prev is None else ([*prev, v] if isinstance(prev, list) else [prev, v])
        host = headers.get("host", "")
        host = host[0] if isinstance(host, list) else host
        try:
            port = ex.conn.sock.getsockname()[1]
        except OSError:
            port = None
        raw_text = raw.decode("utf-8", "replace") if whole else None
        body = None
        if raw_text:
            try:
                body = json.loads(raw_text)
            except ValueError:
                body = None
        doc = {
            "message": self.message,
            "kong": {"node_id": None, "worker_pid": os.getpid(), "hostname": socket.gethostname()},
            "request": {"scheme": "http", "host": host.rpartition(":")[0] if host.count(":") == 1 else host,
                        "port": port, "headers": headers, "query": _query(req.target), "body": body,
                        "raw_body": raw_text, "method": req.method.decode("latin-1"),
                        "path": req.target.partition(b"?")[0].decode("latin-1"), "uri_captures": {}},
        }
        body_bytes = json.dumps(doc).encode()
        ex.close_after = ex.close_after or not ex.request_done
        await ex.send_head(self.status, [(b"content-type", JSON_UTF8), (b"content-length", b"%d" % len(body_bytes))],
                           body_bytes, end=True)
