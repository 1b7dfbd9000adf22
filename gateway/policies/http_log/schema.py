"""Kong's http-log plugin config (kong/plugins/http-log/schema.lua), with Kong's queue (typedefs.queue)."""

from typing import Annotated, Literal

import msgspec

from gateway.telemetry.batch import QueueConfig, apply_legacy_queue
from gateway.telemetry.sender import Endpoint

_FORBIDDEN_HEADERS = {"host": "Host", "content-length": "Content-Length", "content-type": "Content-Type"}


class HttpLogConfig(msgspec.Struct, forbid_unknown_fields=True):
    http_endpoint: str
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    content_type: Literal["application/json", "application/json; charset=utf-8"] = "application/json"
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 10000  # ms, each of connect, send and read
    keepalive: Annotated[float, msgspec.Meta(ge=0)] = 60000  # ms an idle connection to the collector is kept
    headers: dict[str, str] | None = None
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    # Kong 3.x's deprecated forms: queue_size and flush_timeout still map onto the queue (as Kong's
    # Queue.get_plugin_params does); retry_count "no longer works" in Kong, so it is refused here.
    queue_size: Annotated[int, msgspec.Meta(ge=1)] | None = None
    flush_timeout: Annotated[float, msgspec.Meta(ge=0)] | None = None
    retry_count: int | None = None
    custom_fields_by_lua: dict[str, str] | None = None

    def __post_init__(self) -> None:
        try:
            endpoint = Endpoint(self.http_endpoint)
        except ValueError as e:
            raise ValueError(f"http_endpoint: {e}") from None
        if self.retry_count is not None:
            raise ValueError("retry_count: it no longer works in Kong 3.x; use queue.max_retry_time")
        if self.custom_fields_by_lua:
            raise ValueError("custom_fields_by_lua: the gateway runs no Lua; remove it")
        for name, value in (self.headers or {}).items():
            lower = name.lower()
            if lower in _FORBIDDEN_HEADERS:
                raise ValueError(f"headers: cannot contain '{_FORBIDDEN_HEADERS[lower]}' header")
            if lower == "authorization" and endpoint.authorization is not None:
                raise ValueError("specifying both an 'Authorization' header and user info in 'http_endpoint' is not "
                                 "allowed")
            if not name or any(c in name for c in " :\r\n\t") or any(c in value for c in "\r\n\0"):
                raise ValueError(f"headers: invalid header {name!r}")
        apply_legacy_queue(self.queue, self.queue_size, self.flush_timeout)
