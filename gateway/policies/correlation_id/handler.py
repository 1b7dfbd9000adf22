"""Kong's correlation-id (kong/plugins/correlation-id/handler.lua): a request without the header (or with it empty)
gets one, sent upstream; with echo_downstream the response carries it too (the client's own, or the new one).

Generators: uuid (a random UUID), uuid#counter (a UUID per worker process, "#", a counter), tracker (Kong's
server address-port-worker pid-connection-request on it-time: nginx's $connection, the worker's serial number of the
connection, and $connection_requests, the request's number on it, so no two requests share one).

Settled at config load: the generator (a function; uuid#counter's "<uuid>#" as bytes), and every spelling of the
header name that kong.request.get_header reads, so that a request with none of them (the usual case) is seen to lack
the header in one set test, in C. The id echoed to a response without that header is appended to it, as set_header
would, without a filtered copy of the list.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from operator import itemgetter

from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.policies.correlation_id.schema import CorrelationIdConfig
from gateway.policies.header_list import (
    KNOWN_VARIABLES,
    TRANSFER_ENCODING_NAMES,
    escape_value,
    request_header,
    set_header,
)

STATE_KEY = "correlation-id"  # ex.state key: the id of this request (header_filter; Kong's serialized correlation_id)
_NAME = itemgetter(0)  # a header's name
_SPELLINGS_MAX_DASHES = 8  # 2**8 spellings at most; a name with more "-" is looked up as get_header does, each time


def _uuid4() -> bytes:
    """str(uuid.uuid4()) as bytes: 16 random bytes with the version (4) and variant (RFC 4122) bits set, written
    8-4-4-4-12 in lower-case hex, without the uuid module's UUID object."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40
    b[8] = b[8] & 0x3F | 0x80
    h = b.hex().encode()
    return b"%b-%b-%b-%b-%b" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


class _WorkerIds:
    """uuid#counter: one UUID per process (new after a fork), then a counter; "<uuid>#" is kept as bytes, so an id
    is one formatting of the next count."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = _uuid4() + b"#"
        self.counter = itertools.count(1)

    def __call__(self, ex: Exchange | None = None) -> bytes:
        return b"%b%d" % (self.prefix, next(self.counter))


_worker_ids = _WorkerIds()


def _uuid(ex: Exchange | None = None) -> bytes:
    return _uuid4()


def _tracker(ex: Exchange) -> bytes:
    conn = ex.conn
    try:
        addr, port = conn.sock.getsockname()[:2]
    except OSError:
        addr, port = "", 0
    return f"{addr}-{port}-{os.getpid()}-{conn.serial}-{conn.requests}-{time.time():.3f}".encode()


GENERATORS: dict[str, Callable[[Exchange], bytes]] = {"uuid": _uuid, "uuid#counter": _worker_ids, "tracker": _tracker}


def spellings(name: bytes) -> frozenset[bytes] | None:
    """Every header name (as the codec gives them, lower case) that kong.request.get_header(name) reads
    (header_list.request_header): the name lower-cased with "_" as "-", and, but for nginx's own variables, with any
    of its "-" as "_"; None for a name with too many "-" to list them."""
    key = name.lower().replace(b"_", b"-")
    if key in KNOWN_VARIABLES:  # nginx's own variables: that spelling only
        return frozenset([key])
    parts = key.split(b"-")
    if len(parts) - 1 > _SPELLINGS_MAX_DASHES:
        return None
    out = [parts[0]]
    for part in parts[1:]:
        out = [s + dash + part for s in out for dash in (b"-", b"_")]
    return frozenset(out)


class CorrelationId:
    name = "correlation-id"
    priority = 100001  # Kong's: before everything else

    def __init__(self, config: CorrelationIdConfig) -> None:
        self.asked = config.header_name.encode()  # as kong.request.get_header finds it ("_" and "-" alike)
        self.header = config.header_name.lower().encode()  # as kong.service.request.set_header writes it
        self.response_header = self.header.replace(b"_", b"-")  # as kong.response.set_header writes it
        self.generate = GENERATORS[config.generator]
        # a request with none of these has no such header: the id is added (set_header, nothing to clear); None:
        # the header is looked up each time (a name set_header ignores, or one with too many "-")
        self.spellings = None if self.header in TRANSFER_ENCODING_NAMES else spellings(self.asked)
        self.appends = self.response_header not in TRANSFER_ENCODING_NAMES  # (which set_header leaves alone)

    async def access(self, ex: Exchange) -> bool:
        request = ex.request
        headers = request.headers
        value: bytes | None
        if self.spellings is not None and self.spellings.isdisjoint(map(_NAME, headers)):
            value = self.generate(ex)
            request.headers = headers + [(self.header, escape_value(value))]
        else:
            value = request_header(headers, self.asked)
            if not value:
                value = self.generate(ex)
                request.headers = set_header(list(headers), self.header, value)
        state = ex.state
        if state is None:  # kong.log.set_serialize_value("correlation_id", ...): kept for the log phase too
            state = ex.state = {}
        state[STATE_KEY] = value
        return False



class EchoingCorrelationId(CorrelationId):
    """With echo_downstream: the response carries the id too. (Without it Kong's header_filter returns at once, so
    the plugin has none: a route with only it has no response phase to run.)"""

    def header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        state = ex.state
        value = state.get(STATE_KEY) if state is not None else None
        if not value:  # the request was answered before access ran (Kong generates one then)
            value = request_header(ex.request.headers, self.asked) or self.generate(ex)
        name = self.response_header
        if self.appends and name not in map(_NAME, headers):  # set_header with nothing to clear
            headers.append((name, escape_value(value)))
            return headers
        return set_header(headers, name, value)
