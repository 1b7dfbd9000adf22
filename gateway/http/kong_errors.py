"""Kong's error responses: the texts for each status and the body templates, chosen by the request's Accept header.

Kong 3.x answers every error it makes itself with `{"message": "...", "request_id": "..."}` in JSON by default, or
the same two facts as HTML, plain text or XML when the client's Accept prefers one of those (kong.response.error:
kong/pdk/response.lua, kong/tools/http.lua). The errors nginx makes itself (an upstream that failed or timed out, a
request it could not read) go through Kong's error handler, which reads the Content-Type when there is no Accept,
and answers in kong.conf's error_default_type (text/plain) when there is neither (kong/error_handlers.lua). Error
paths only: nothing here runs for a request that is proxied normally.
"""

from __future__ import annotations

import json
import re
from html import escape

# kong/pdk/response.lua HTTP_ERROR_MESSAGES: the message when the caller gives none.
HTTP_ERROR_MESSAGES = {
    400: "Bad request", 401: "Unauthorized", 402: "Payment required", 403: "Forbidden", 404: "Not found",
    405: "Method not allowed", 406: "Not acceptable", 407: "Proxy authentication required", 408: "Request timeout",
    409: "Conflict", 410: "Gone", 411: "Length required", 412: "Precondition failed", 413: "Payload too large",
    414: "URI too long", 415: "Unsupported media type", 416: "Range not satisfiable", 417: "Expectation failed",
    418: "I'm a teapot", 421: "Misdirected request", 422: "Unprocessable entity", 423: "Locked",
    424: "Failed dependency", 425: "Too early", 426: "Upgrade required", 428: "Precondition required",
    429: "Too many requests", 431: "Request header fields too large", 451: "Unavailable for legal reasons",
    494: "Request header or cookie too large", 500: "An unexpected error occurred", 501: "Not implemented",
    502: "An invalid response was received from the upstream server",
    503: "The upstream server is currently unavailable", 504: "The upstream server is timing out",
    505: "HTTP version not supported", 506: "Variant also negotiates", 507: "Insufficient storage",
    508: "Loop detected", 510: "Not extended", 511: "Network authentication required",
}

# Kong's own texts for what the gateway answers itself (the router, the balancer, bundled plugins).
NO_ROUTE = "no Route matched with those values"
NO_SERVICE = "no Service found with those values"
NO_PEER = "failure to get a peer from the ring-balancer"
RATE_LIMITED = "API rate limit exceeded"
SIZE_LIMITED = "Request size limit exceeded"

JSON_TYPE = b"application/json; charset=utf-8"
TEXT_TYPE = b"text/plain; charset=utf-8"
# kong.conf's error_default_type: what nginx's own error pages are when the request says nothing
ERROR_DEFAULT_TYPES = {"text/plain": TEXT_TYPE, "text/html": b"text/html; charset=utf-8",
                       "application/json": JSON_TYPE, "application/xml": b"application/xml; charset=utf-8"}
_MIME_TYPES = {**ERROR_DEFAULT_TYPES, "application": JSON_TYPE, "text": TEXT_TYPE}
_ACCEPT = re.compile(r"^\s*([a-z0-9][a-z0-9!#$&^_+.-]*|\*)/([a-z0-9][a-z0-9!#$&^_+.-]*|\*)(.*)$", re.IGNORECASE)
_QUALITY = re.compile(r";\s*q\s*=\s*(1(?:\.0{0,3})?|0(?:\.\d{0,3})?)\s*(?:;|$)", re.IGNORECASE)


def error_message(status: int) -> str:
    """Kong's default message for a status: "Not found", or "The upstream server responded with 599"."""
    return HTTP_ERROR_MESSAGES.get(status) or f"The upstream server responded with {status}"


def response_type(accept: bytes | None) -> bytes:
    """Kong's get_response_type: the media type of the Accept entry with the highest quality (JSON by default)."""
    content_type = JSON_TYPE
    if not accept:
        return content_type
    best = 0.0
    for entry in accept.decode("latin-1").split(","):
        m = _ACCEPT.match(entry)
        if m is None:
            continue
        q_match = _QUALITY.search(m.group(3))
        q = float(q_match.group(1)) if q_match else 1.0
        if q > best:
            best = q
            kind, sub = m.group(1).lower(), m.group(2).lower()
            if sub == "*":
                content_type = JSON_TYPE if kind == "*" else _MIME_TYPES.get(kind, JSON_TYPE)
            else:
                content_type = _MIME_TYPES.get(f"{kind}/{sub}", JSON_TYPE)
    return content_type


def page_type(headers: list[tuple[bytes, bytes]], default: bytes) -> bytes:
    """The format of an error nginx answers itself (Kong's error_page statuses: 400, 408, 413, 500, 502, 504...),
    as kong/error_handlers.lua picks it: from the Accept header, else from the Content-Type, else `default`
    (error_default_type). kong.response.error (the router's 404, a plugin's 401 or 429) reads Accept only."""
    content_type = None
    for name, value in headers:
        if name == b"accept":
            return response_type(value)
        if name == b"content-type" and content_type is None:
            content_type = value
    return default if content_type is None else response_type(content_type)


def error_body(message: str, request_id: bytes, content_type: bytes = JSON_TYPE) -> bytes:
    """The body of an error, in Kong's template for `content_type` (from `response_type`)."""
    rid = request_id.decode("latin-1")
    if content_type == JSON_TYPE:
        return b'{\n  "message":%s,\n  "request_id":%s\n}' % (json.dumps(message).encode(), json.dumps(rid).encode())
    if content_type.startswith(b"text/html"):
        return (f'<!doctype html>\n<html>\n  <head>\n    <meta charset="utf-8">\n    <title>Error</title>\n  </head>\n'
                f'  <body>\n    <h1>Error</h1>\n    <p>{escape(message)}.</p>\n    <p>request_id: {escape(rid)}</p>\n'
                f'  </body>\n</html>\n').encode()
    if content_type.startswith(b"application/xml"):
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<error>\n  <message>{escape(message)}</message>\n'
                f'  <requestid>{escape(rid)}</requestid>\n</error>\n').encode()
    return f"{message}\nrequest_id: {rid}\n".encode()
