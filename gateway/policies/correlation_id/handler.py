"""Kong's correlation-id (kong/plugins/correlation-id/handler.lua): a request without the header (or with it empty)
gets one, sent upstream; with echo_downstream the response carries it too (the client's own, or the new one).

Generators: uuid (a random UUID), uuid#counter (a UUID per worker process, "#", a counter), tracker (Kong's
server address-port-worker pid-connection-request on it-time: nginx's $connection, the worker's serial number of the
connection, and $connection_requests, the request's number on it, so no two requests share one).
"""

from __future__ import annotations

import itertools
import os
import time
import uuid

from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.policies.correlation_id.schema import CorrelationIdConfig
from gateway.policies.header_list import request_header, set_header

STATE_KEY = "correlation-id"  # ex.state key: the id of this request (header_filter; Kong's serialized correlation_id)


class _WorkerIds:
    """uuid#counter: one UUID per process (new after a fork), then a counter."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = str(uuid.uuid4())
        self.counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}#{next(self.counter)}"


_worker_ids = _WorkerIds()


def _tracker(ex: Exchange) -> str:
    conn = ex.conn
    try:
        addr, port = conn.sock.getsockname()[:2]
    except OSError:
        addr, port = "", 0
    return f"{addr}-{port}-{os.getpid()}-{conn.serial}-{conn.requests}-{time.time():.3f}"


class CorrelationId:
    name = "correlation-id"
    priority = 100001  # Kong's: before everything else

    def __init__(self, config: CorrelationIdConfig) -> None:
        self.asked = config.header_name.encode()  # as kong.request.get_header finds it ("_" and "-" alike)
        self.header = config.header_name.lower().encode()  # as kong.service.request.set_header writes it
        self.response_header = self.header.replace(b"_", b"-")  # as kong.response.set_header writes it
        self.generator = config.generator
        self.echo = config.echo_downstream

    def generate(self, ex: Exchange) -> bytes:
        if self.generator == "uuid":
            return str(uuid.uuid4()).encode()
        if self.generator == "uuid#counter":
            return _worker_ids().encode()
        return _tracker(ex).encode()

    async def access(self, ex: Exchange) -> bool:
        headers = ex.request.headers
        value = request_header(headers, self.asked)
        if not value:
            value = self.generate(ex)
            ex.request.headers = set_header(list(headers), self.header, value)
        if ex.state is None:  # kong.log.set_serialize_value("correlation_id", ...): kept for the log phase too
            ex.state = {}
        ex.state[STATE_KEY] = value
        return False

    def header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        if not self.echo:
            return headers
        value = ex.state.get(STATE_KEY) if ex.state is not None else None
        if not value:  # the request was answered before access ran (Kong generates one then)
            value = request_header(ex.request.headers, self.asked) or self.generate(ex)
        return set_header(headers, self.response_header, value)
