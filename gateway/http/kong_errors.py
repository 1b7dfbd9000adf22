"""Kong's error responses: the texts for each status and the body templates, chosen by the request's Accept header.

Kong 3.x answers every error it makes itself with `{"message": "...", "request_id": "..."}` in JSON by default, or
the same two facts as HTML, plain text or XML when the client's Accept prefers one of those (kong.response.error:
kong/pdk/response.lua, kong/tools/http.lua). The errors nginx makes itself (an upstream that failed or timed out, a
request it could not read) go through Kong's error handler, which reads the Content-Type when there is no Accept,
and answers in kong.conf's error_default_type (text/plain) when there is neither (kong/error_handlers.lua). kong.conf's
error_template_html / _json / _xml / _plain replace a format's template (`templates_of`). Error paths only: nothing
here runs for a request that is proxied normally.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from html import escape
from typing import Any

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
HTML_TYPE = b"text/html; charset=utf-8"
XML_TYPE = b"application/xml; charset=utf-8"
# kong.conf's error_default_type: what nginx's own error pages are when the request says nothing
ERROR_DEFAULT_TYPES = {"text/plain": TEXT_TYPE, "text/html": HTML_TYPE, "application/json": JSON_TYPE,
                       "application/xml": XML_TYPE}
# kong.response.error's type for `Accept: application/grpc` (kong/tools/http.lua MIME_TYPES: ""): an empty body and
# no Content-Type
GRPC_TYPE = b""
# page_type's for a request whose Accept (or Content-Type) begins with application/grpc: Kong's error handler answers
# kong.response.exit(status, {message = ...}), cjson's JSON without a request id (header_type: JSON_TYPE)
GRPC_PAGE = b"application/grpc"
# kong/tools/http.lua MIME_TYPES, looked up as Kong does: case-sensitively, `type/*` by its type alone
_MIME_TYPES = {b"text/html": HTML_TYPE, b"application/json": JSON_TYPE, b"text/plain": TEXT_TYPE,
               b"application/xml": XML_TYPE, b"application/grpc": GRPC_TYPE}
_ANY_SUBTYPE = {b"application": JSON_TYPE, b"text": TEXT_TYPE, b"default": JSON_TYPE}
# kong/tools/http.lua ACCEPT_PATTERN (ngx.re "ajoxi": anchored at the start only, extended, caseless): the media type,
# then parameters, the last q= among them its quality; a type or subtype token has two characters at least
_ACCEPT = re.compile(rb"""
    ((?:[a-z0-9][a-z0-9-!#$&^_+.]+|\*) \/ (?:[a-z0-9][a-z0-9-!#$&^_+.]+|\*))
    (?:
      \s*;\s*
      q = ( 1(?:\.0{0,3}|) | 0(?:\.\d{0,3}|) )
      | \s*;\s* [a-z0-9][a-z0-9-!#$&^_+.]+ (?:=[^;]*|)
    )*
""", re.VERBOSE | re.IGNORECASE)


def error_message(status: int) -> str:
    """Kong's default message for a status: "Not found", or "The upstream server responded with 599"."""
    return HTTP_ERROR_MESSAGES.get(status) or f"The upstream server responded with {status}"


def response_type(accept: bytes | None) -> bytes:
    """Kong's get_response_type: the media type of the first Accept entry with the highest quality above 0 (JSON
    when none, or when it is not one of Kong's formats)."""
    content_type = JSON_TYPE
    if not accept:
        return content_type
    best = 0.0
    for entry in accept.split(b","):
        m = _ACCEPT.match(entry.strip())  # (Kong's strip: the same six ASCII whitespace bytes)
        if m is None:
            continue
        q = float(m.group(2)) if m.group(2) else 1.0
        if q > best:
            best = q
            media = m.group(1)
            kind, _, sub = media.partition(b"/")
            if sub == b"*":
                content_type = JSON_TYPE if kind == b"*" else _ANY_SUBTYPE.get(kind, JSON_TYPE)
            else:
                content_type = _MIME_TYPES.get(media, JSON_TYPE)
    return content_type


def page_type(headers: list[tuple[bytes, bytes]], default: bytes) -> bytes:
    """The format of an error nginx answers itself (Kong's error_page statuses: 400, 408, 413, 500, 502, 504...),
    as kong/error_handlers.lua picks it: from the (first) Accept header, else from the (first) Content-Type, else
    `default` (error_default_type). kong.response.error (the router's 404, a plugin's 401 or 429) reads Accept
    only."""
    content_type = None
    for name, value in headers:
        if name == b"accept":
            content_type = value
            break
        if name == b"content-type" and content_type is None:
            content_type = value
    if content_type is None:
        return default
    return GRPC_PAGE if content_type.startswith(GRPC_PAGE) else response_type(content_type)


def header_type(content_type: bytes) -> bytes | None:
    """The Content-Type header of an error body in `content_type` (None: no header)."""
    return JSON_TYPE if content_type == GRPC_PAGE else content_type or None


# kong/tools/http.lua ERROR_TEMPLATES: `%s` is the message, then the request id
DEFAULT_TEMPLATES = {
    JSON_TYPE: '{\n  "message":"%s",\n  "request_id":"%s"\n}',
    HTML_TYPE: '<!doctype html>\n<html>\n  <head>\n    <meta charset="utf-8">\n    <title>Error</title>\n  </head>\n'
               '  <body>\n    <h1>Error</h1>\n    <p>%s.</p>\n    <p>request_id: %s</p>\n  </body>\n</html>\n',
    XML_TYPE: '<?xml version="1.0" encoding="UTF-8"?>\n<error>\n  <message>%s</message>\n  <requestid>%s</requestid>\n'
              '</error>\n',
    TEXT_TYPE: "%s\nrequest_id: %s\n",
}
TEMPLATE_SETTINGS = {"html": HTML_TYPE, "json": JSON_TYPE, "xml": XML_TYPE, "plain": TEXT_TYPE}  # error_template_*
_DIRECTIVE = re.compile(r"%(.?)", re.DOTALL)


def _json_text(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _markup_text(text: str) -> str:
    return escape(text, quote=False)


# What goes into each format: Kong's own texts come out as Kong writes them; what would break the format (a quote in
# JSON, a `<` in HTML or XML: a client's X-Request-Id may hold one) is escaped, where Kong's ids never need it.
_ESCAPES: dict[bytes, Callable[[str], str]] = {JSON_TYPE: _json_text, HTML_TYPE: _markup_text, XML_TYPE: _markup_text,
                                               TEXT_TYPE: str}


def parse_template(text: str) -> tuple[str, ...]:
    """A template as Lua's string.format(template, message, request_id) reads it: its text around at most two `%s`
    (`%%` is a `%`). Anything else after a `%` is refused (ValueError), as string.format would fail on it."""
    parts = _DIRECTIVE.split(text)  # text, directive, text, ..., text
    pieces = [parts[0]]
    for directive, after in zip(parts[1::2], parts[2::2], strict=True):
        if directive == "%":
            pieces[-1] += "%" + after
        elif directive == "s" and len(pieces) < 3:
            pieces.append(after)
        elif directive == "s":
            raise ValueError("more than two %s (the message and the request id)")
        else:
            from gateway.config.errors import inline  # (here: gateway.config imports this module)

            raise ValueError(f"'%{inline(directive)}' is not a placeholder: only %s (twice at most) and %%")
    return tuple(pieces)


Templates = dict[bytes, tuple[str, ...]]  # content type -> a template's text around its %s
KONG_TEMPLATES: Templates = {content_type: parse_template(text) for content_type, text in DEFAULT_TEMPLATES.items()}


def read_template(path: str) -> tuple[str, ...]:
    """A custom error template file (kong.conf's error_template_*), parsed; ValueError saying what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path!r}: {e}") from None
    return parse_template(text)


def templates_of(settings: Any) -> Templates:
    """The error templates of the gateway settings: kong.conf's error_template_html / _json / _xml / _plain (a file
    path each), Kong's own for those not set."""
    templates = dict(KONG_TEMPLATES)
    for name, content_type in TEMPLATE_SETTINGS.items():
        if path := getattr(settings, f"error_template_{name}", None):
            templates[content_type] = read_template(path)
    return templates


# kong/templates/nginx_kong.lua's error_page: the statuses nginx hands to Kong's error handler. nginx answers any other
# error it makes itself (a 501 for a Transfer-Encoding it does not know) with its own HTML page
# (ngx_http_special_response.c; `server_tokens off`, so the tail names the server without a version).
KONG_ERROR_PAGES = frozenset({400, 404, 405, 408, 411, 412, 413, 414, 417, 494, 500, 502, 503, 504})
# The statuses nginx turns keep-alive off for as it answers them itself (ngx_http_special_response_handler): the
# connection ends with the answer
KEEPALIVE_OFF = frozenset({400, 413, 414, 495, 496, 497, 500, 501})
# nginx's own pages (ngx_http_special_response.c) for the statuses it has one for; 495-497 are sent as 400s
_NGINX_TITLES = {301: "Moved Permanently", 302: "Found", 303: "See Other", 307: "Temporary Redirect",
                 308: "Permanent Redirect", 401: "Authorization Required", 402: "Payment Required", 403: "Forbidden",
                 406: "Not Acceptable", 407: "Proxy Authentication Required", 409: "Conflict", 410: "Gone",
                 415: "Unsupported Media Type", 416: "Requested Range Not Satisfiable", 421: "Misdirected Request",
                 429: "Too Many Requests", 498: "Not Found", 501: "Not Implemented", 505: "HTTP Version Not Supported",
                 507: "Insufficient Storage"}
_NGINX_400S = {495: "The SSL certificate error", 496: "No required SSL certificate was sent",
               497: "The plain HTTP request was sent to HTTPS port"}


def nginx_special_page(status: int, server: str = "mcp-gateway") -> tuple[int, bytes] | None:
    """nginx's own answer to an error status outside KONG_ERROR_PAGES (its Content-Type: text/html): the status it
    sends and its page; None when nginx has no page for the status (it sends no body)."""
    if status in _NGINX_400S:
        text = _NGINX_400S[status]
        title, heading, extra, status = f"400 {text}", "400 Bad Request", f"<center>{text}</center>\r\n", 400
    elif status in _NGINX_TITLES:
        title = heading = f"{404 if status == 498 else status} {_NGINX_TITLES[status]}"  # 498: the 404 page
        extra = ""
    else:
        return None
    return status, (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{heading}</h1>"
                    f"</center>\r\n{extra}<hr><center>{server}</center>\r\n</body>\r\n</html>\r\n").encode()


def nginx_page(status: int, server: str = "mcp-gateway") -> bytes:
    """nginx's own page for a status it has one for (501, 505: the errors the gateway makes itself; an https
    redirect's 301, 302, 307, 308)."""
    page = nginx_special_page(status, server)
    assert page is not None, status
    return page[1]


def error_body(message: str, request_id: bytes, content_type: bytes = JSON_TYPE,
               templates: Templates = KONG_TEMPLATES) -> bytes:
    """The body of an error, in the template for `content_type` (from `response_type`; plain text for any other):
    Kong's, or the gateway's error_template_* (`templates_of`)."""
    if content_type == GRPC_PAGE:  # lua-cjson's: compact, "/" escaped
        return json.dumps({"message": message}, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/").encode()
    if content_type == GRPC_TYPE:
        return b""
    pieces = templates.get(content_type)
    if pieces is None:
        content_type = TEXT_TYPE
        pieces = templates[TEXT_TYPE]
    escaped = _ESCAPES[content_type]
    body = pieces[0]
    if len(pieces) > 1:
        body += escaped(message) + pieces[1]
        if len(pieces) > 2:
            body += escaped(request_id.decode("latin-1")) + pieces[2]
    return body.encode()
