"""Kong's http-log plugin config (kong/plugins/http-log/schema.lua), with Kong's queue (typedefs.queue)."""

import base64
import logging
import math
from typing import Annotated, Literal

import msgspec

from gateway.config.errors import inline
from gateway.config.service_url import lua_tonumber, parse, url_problem, userinfo
from gateway.config.typedefs import header_name_problem
from gateway.telemetry.batch import QueueConfig, apply_legacy_queue
from gateway.telemetry.sender import Endpoint, check_port, resty_parse_uri

log = logging.getLogger("gateway.policies.http_log")

_FORBIDDEN_HEADERS = {"host": "Host", "content-length": "Content-Length", "content-type": "Content-Type"}
RETRY_COUNT_OLD_DEFAULT = 10  # Kong 2.x's default, in every 2.x export: its schema's deprecation.old_default


class HttpLogConfig(msgspec.Struct, forbid_unknown_fields=True):
    http_endpoint: str
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    content_type: Literal["application/json", "application/json; charset=utf-8"] = "application/json"
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 10000  # ms, each of connect, send and read
    keepalive: Annotated[float, msgspec.Meta(ge=0)] = 60000  # ms an idle connection to the collector is kept
    headers: dict[str, str] | None = None
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    # Kong 3.x's deprecated forms: queue_size and flush_timeout still map onto the queue (as Kong's
    # Queue.get_plugin_params does); retry_count "no longer works" in Kong: taken and ignored (warn_retry_count).
    queue_size: Annotated[int, msgspec.Meta(ge=1)] | None = None
    flush_timeout: Annotated[float, msgspec.Meta(ge=0)] | None = None
    retry_count: int | None = None
    custom_fields_by_lua: dict[str, str] | None = None

    def __post_init__(self) -> None:
        try:
            endpoint = http_log_endpoint(self.http_endpoint)
        except ValueError as e:
            raise ValueError(f"http_endpoint: {e}") from None
        warn_retry_count("http-log", self.retry_count)
        if self.custom_fields_by_lua:
            raise ValueError("custom_fields_by_lua: the gateway runs no Lua; remove it")
        for name, value in (self.headers or {}).items():
            check_header(name, value)
            if name.lower() == "authorization" and endpoint.authorization is not None:  # schema.lua:63-74
                raise ValueError("specifying both an 'Authorization' header and user info in 'http_endpoint' is not "
                                 "allowed")
        apply_legacy_queue(self.queue, self.queue_size, self.flush_timeout)


def http_log_endpoint(url: str) -> Endpoint:
    """The collector as Kong's http-log reaches it: typedefs.url's check, socket.url's parts with the scheme's port
    and "/" for none (handler.lua:60-80), written again as scheme://host:%d/path (:110, 127) for lua-resty-http's
    request_uri, which reads that (gateway.telemetry.sender.resty_parse_uri); the user info, as written, is Basic
    credentials (:119). ValueError where Kong refuses the url, or loads it but fails every send before connecting."""
    if problem := url_problem(url):
        raise ValueError(problem)
    parts = parse(url)
    assert parts is not None and parts.scheme is not None and parts.host is not None  # (url_problem saw to it)
    if parts.scheme not in ("http", "https"):
        raise ValueError("expected an http:// or https:// URL, in lower case: Kong's http-log gives no other scheme "
                         "a port (handler.lua:68-75) and lua-resty-http takes no other, so every send would fail")
    port = (80 if parts.scheme == "http" else 443) if parts.port is None else lua_tonumber(parts.port)
    if port is None or not math.isfinite(port) or abs(port) >= 2 ** 63:
        raise ValueError("invalid port: Kong's http-log writes tonumber of it with %d (handler.lua:110, 127), which "
                         "fails on every send when it is no number; give a port from 0 to 65535 after the host's "
                         "colon, or no colon")
    # %d: LuaJIT's (int64_t) cast, which truncates (lj_strfmt.c, lj_strfmt_putfnum_int)
    uri = resty_parse_uri(f"{parts.scheme}://{parts.host}:{int(port)}{parts.path or '/'}")
    if uri is None:
        raise ValueError("lua-resty-http refuses the url Kong's http-log writes from it (\"bad uri\"; it writes "
                         "scheme://host:port/path, an IPv6 address without brackets, handler.lua:127), so every send "
                         "would fail; use a host name")
    check_port(uri.port)
    credentials = userinfo(parts)
    authorization = None if credentials is None else b"Basic " + base64.b64encode(credentials.encode())
    return Endpoint.of(url, uri, authorization)


def check_header(name: str, value: str) -> None:
    """Kong's rules for one of `headers` (its messages): a header name of A-Z, a-z, 0-9, _ and - that is not Host,
    Content-Length or Content-Type, and a value of one character at least (a Kong string). A value may not hold a
    line break or NUL either: it would end the header early."""
    if not name:
        raise ValueError("headers: no header name provided")
    if problem := header_name_problem(name):
        raise ValueError(f"headers: {problem}")
    if name.lower() in _FORBIDDEN_HEADERS:
        raise ValueError(f"headers: cannot contain '{_FORBIDDEN_HEADERS[name.lower()]}' header")
    if not value:
        raise ValueError("headers: length must be at least 1")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"headers: the value of '{inline(name)}' holds a line break or NUL")


def warn_retry_count(plugin: str, retry_count: int | None) -> None:
    """Kong 3.x's retry_count of http-log, statsd and datadog: taken and ignored (kong/tools/queue.lua:465 does
    nothing with it), Kong's deprecation line logged for a value other than its old default, 10, which every Kong 2.x
    export carries (kong/db/schema/init.lua, validate_field: silent for null and for old_default)."""
    if retry_count is not None and retry_count != RETRY_COUNT_OLD_DEFAULT:
        log.warning("%s: config.retry_count no longer works, please use config.queue.max_retry_time instead "
                    "(deprecated after 4.0)", plugin)
