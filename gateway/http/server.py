"""The client-side connection loop: accept, parse requests, hand each to a handler, keep the connection alive.

The loop knows HTTP framing, timeouts and bad input; what to do with a request is the handler's business (it is a
parameter, so this module never imports the proxy). A handler gets an `Exchange` and must either send a complete
response, or raise; a broken request gets its 4xx here with a JSON body, and a crash gets a 500.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import re
import socket
from collections.abc import Awaitable, Callable
from itertools import islice
from typing import Any, Protocol

import trio

from gateway.http.codec import (
    CLOSED,
    END,
    HEAD_TOO_LARGE,
    MAX_LINE_BYTES,
    NEED_DATA,
    NGINX_TARGET,
    Headers,
    ProtocolError,
    Request,
    ServerCodec,
    answered_status,
)
from gateway.http.conditional import NOT_MODIFIED_DROPS, precondition
from gateway.http.errlog import ErrorContext
from gateway.http.ids import new_request_id, x_request_id
from gateway.http.kong_errors import (
    KEEPALIVE_OFF,
    KONG_ERROR_PAGES,
    KONG_TEMPLATES,
    TEXT_TYPE,
    Templates,
    error_body,
    error_message,
    header_type,
    nginx_page,
    page_type,
    response_type,
)
from gateway.http.kong_headers import KongHeaders
from gateway.http.limits import Shedder, SpareFd, shed
from gateway.http.net import Conn
from gateway.http.proxy_protocol import header_or_none
from gateway.http.realip import proxied_client
from gateway.http.timers import ConnTimer, Phase, Timers
from gateway.http.tls import PlainHttpOnTlsPort, TlsError, plain_http_answer, server_handshake
from gateway.http.tls_contexts import ServerTls
from gateway.metrics import SHED, TIMEOUTS
from gateway.routing.normalize import nginx_refusal
from gateway.routing.router import MAX_REQ_HEADERS

log = logging.getLogger("gateway.http")
# A client gone or too slow is logged at DEBUG: nginx writes it at info (ngx_http_request.c:1097, ngx_http_upstream.c:
# 1509-1518), below Kong's default log_level notice, which the gateway's default INFO plays. An upstream that failed is
# logged at ERROR, as nginx's [error], with the request's context (gateway.http.errlog).
CLIENT_GONE_LOG = "client %s closed the connection while its request waited on the upstream: 499"

# accept() errors that mean "out of a resource", where backing off beats crashing (trio's list)
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_BACKOFF_S = 0.1
ACCEPT_BATCH = 64  # connections taken per wake-up of the listener
_SERIALS = itertools.count(1)  # the connections this worker accepted (nginx's $connection)
REUSE_AT_ONCE = 32  # at max_connections, reusable connections closed at once at most (nginx's ngx_drain_connections)
REUSE_LOG_EVERY_S = 1.0  # ... saying so at most this often
DRAIN_IDLE_GRACE_S = 1.0  # on drain, how long an idle kept-alive connection may still bring one more request
LINGER_TIME_S = 30.0  # nginx's lingering_time: the longest a closing connection reads what its client still sends
LINGER_TIMEOUT_S = 5.0  # nginx's lingering_timeout: ... while the client sends something at least this often
# Refusals of a head too large that linger whatever is waiting: the rest of the head is likely still on its way. nginx
# sets r->lingering_close for a 494 (ngx_http_process_request_headers); a 414 comes right after a read that filled the
# buffer, which leaves c->read->ready set (ngx_unix_recv clears it only when n < size), and
# ngx_http_finalize_connection lingers on either
_LINGER_REFUSED = frozenset({414, HEAD_TOO_LARGE})

JSON = b"application/json"
REQUEST_URI = "request_uri"  # ex.state: the target as the client sent it, once a policy has rewritten it
URI_CAPTURES = "uri_captures"  # ex.state: the groups of the matched regex path (Kong's router_matches.uri_captures)
UPSTREAM_PATH = "upstream_path"  # ex.state: the upstream path a policy set (kong.service.request.set_path)
ROUTER_PATH = "router_path"  # ex.state: the router's upstream path of a request a plugin answered (the log's)
REQUEST_METHOD = "request_method"  # ex.state: the method as the client sent it, once a policy has changed it
HEADERS_SET = "headers_set"  # ex.state: response headers a policy set in access (kong.response.set_header)
REFUSED = "refused"  # ex.state: the connection loop refused the request before its head was read (nginx's page)
HELD_FILE = "held_file"  # ex.state: the rest of a body read whole in access, in a file (Exchange.hold_body)
BODY_SET = "body_set"  # ex.state: a plugin set the body (Exchange.replace_body: ngx.req.set_body_data, in memory)
BODY_READER = "mcp"  # ex.state: a reader keeping body bytes it read (the MCP step's McpRequest: BodyReader)
_TIMEOUT_KINDS = {Phase.NEW: "client_header", Phase.HEAD: "client_header", Phase.CLIENT_BODY: "client_body",
                  Phase.CLIENT_WRITE: "client_send", Phase.UPSTREAM_WRITE: "upstream_write",
                  Phase.UPSTREAM_READ: "upstream_read", Phase.UPSTREAM_BODY: "upstream_read",
                  Phase.IDLE: "client_keepalive"}

# The upstream phases a timeout answers 504 in while nothing was sent (UPSTREAM_BODY: a body read whole before the
# head, for the body filters), with what the log says the upstream did not do
_UPSTREAM_VERBS = {Phase.UPSTREAM_WRITE: "accept the request", Phase.UPSTREAM_READ: "send a response",
                   Phase.UPSTREAM_BODY: "send the rest of its response"}


def error_response(status: int, message: str | None, request_id: bytes, accept: bytes | None = None,
                   templates: Templates = KONG_TEMPLATES) -> tuple[bytes, bytes]:
    """(content type, body) of an error the gateway answers itself, as Kong's (gateway.http.kong_errors)."""
    content_type = response_type(accept)
    return content_type, error_body(message or error_message(status), request_id, content_type, templates)


def _accept(headers: Headers) -> bytes | None:
    """The Accept header as kong.response.error reads it (ngx.req.get_headers(), response.lua:1149): every line of
    it among the first lua_max_req_headers, joined with ","."""
    values = [value for name, value in islice(headers, MAX_REQ_HEADERS) if name == b"accept"]
    return values[0] if len(values) == 1 else b",".join(values) if values else None


class ServerSettings:
    """What the connection loop needs from the config, resolved once."""

    __slots__ = ("header_timeout", "keepalive_timeout", "max_header_bytes", "max_line_bytes", "codec_cls",
                 "max_connections",
                 "connections", "send_timeout", "body_timeout", "error_type", "kong_headers",
                 "request_id_upstream", "keepalive_requests", "keepalive_time", "log_refused", "error_templates",
                 "refused_phases")

    def __init__(self, codec_cls: type[ServerCodec], header_timeout: float = 60.0, keepalive_timeout: float = 75.0,
                 max_header_bytes: int = 32768, max_connections: int = 10000, send_timeout: float = 60.0,
                 body_timeout: float = 60.0, error_type: bytes = TEXT_TYPE,
                 kong_headers: KongHeaders | None = None, request_id_upstream: bool = True,
                 keepalive_requests: int = 10000, keepalive_time: float = 3600.0,
                 max_line_bytes: int = MAX_LINE_BYTES, error_templates: Templates = KONG_TEMPLATES) -> None:
        self.codec_cls = codec_cls
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_header_bytes = max_header_bytes
        self.max_line_bytes = max_line_bytes  # a request line or header line (nginx: one large header buffer)
        self.max_connections = max_connections
        self.send_timeout = send_timeout  # a write to a client that does not read is cut after this (nginx)
        self.body_timeout = body_timeout  # between two reads of a request body (nginx's client_body_timeout)
        self.error_type = error_type  # kong.conf's error_default_type: the format of nginx's own error pages
        self.error_templates = error_templates  # ... and kong.conf's error_template_*: their bodies
        self.kong_headers = kong_headers  # kong.conf's `headers` (None: none at all, for tests)
        self.request_id_upstream = request_id_upstream  # `headers_upstream`: X-Kong-Request-Id sent upstream
        self.keepalive_requests = keepalive_requests  # nginx's: the last request a connection serves ...
        self.keepalive_time = keepalive_time  # ... or the first one after this many seconds
        # The log phase of a request refused before its head was read whole (or in time), as nginx logs those:
        # the handler's (gateway.pipeline.handler.Pipeline.log_refused), set by whoever serves with it.
        self.log_refused: Callable[[Exchange], None] | None = None
        # ... and the response phases its answer goes through: the global plugins' (Kong's error page runs them)
        self.refused_phases: Any = None
        self.connections = ConnectionSet()


class ConnectionSet:
    """The live client connections of one worker: their timers, the reusable ones (what a new client at
    max_connections may take the place of), and what a drain needs to close and wait for."""

    def __init__(self) -> None:
        self.active = 0
        self.accepted = 0  # ever (metrics: kong_nginx_connections_total{state="accepted"})
        # requests begun, ever: counted at their first bytes, as nginx's ngx_stat_requests (kong_nginx_requests_total)
        self.requests = 0
        self.draining = False
        # nginx's reusable connections (ngx_reusable_connection): accepted and silent so far, kept alive between
        # requests, or lingering after their answer; oldest first (insertion order). A connection is in it only while
        # it waits for a read in one of those states.
        self.reusable: dict[Conn, None] = {}
        self.closing = 0  # of `active`: closed by `reuse`, their tasks not yet over ...
        self._reused: set[Conn] = set()  # ... which are these
        self.shedder = Shedder()
        self._reuse_logged = -math.inf
        self._spare: SpareFd | None = None
        self.timers = Timers()
        self._empty = trio.Event()
        self._empty.set()

    def reuse(self, max_connections: int) -> bool:
        """At max_connections: close the oldest reusable connections for a new client, an eighth of them, at least
        one and at most REUSE_AT_ONCE, as nginx's ngx_drain_connections; False when none could be. One whose client
        has just sent something (its task has yet to read it) is left alone."""
        wanted = max(min(REUSE_AT_ONCE, len(self.reusable) // 8), 1)
        reused = self._reused
        closed = 0
        for conn in self.reusable:  # (each leaves it once its task sees the end of its connection)
            if conn.closed or conn.readable():
                continue
            conn.close()
            reused.add(conn)
            closed += 1
            if closed == wanted:
                break
        if not closed:
            return False
        self.closing += closed
        now = trio.current_time()
        if now - self._reuse_logged >= REUSE_LOG_EVERY_S:
            self._reuse_logged = now
            log.warning("gateway.max_connections (%d) is not enough: closing the oldest idle connections for new "
                        "ones", max_connections)
        return True

    def spare_fd(self) -> SpareFd:
        """The worker's spare descriptor (gateway.http.limits), opened on first use."""
        if self._spare is None:
            self._spare = SpareFd()
        return self._spare

    def close_spare(self) -> None:
        """Give the spare descriptor back: the worker has stopped accepting."""
        if self._spare is not None:
            self._spare.close()
            self._spare = None

    def opened(self) -> None:
        self.accepted += 1
        self.active += 1
        self._empty = trio.Event() if self._empty.is_set() else self._empty

    def closed(self, conn: Conn) -> None:
        if self.closing and conn in self._reused:
            self._reused.discard(conn)
            self.closing -= 1
        self.active -= 1
        if self.active == 0:
            self._empty.set()

    def start_drain(self) -> None:
        """Wind down kept-alive connections: busy ones close after their response (which says Connection: close);
        idle ones get DRAIN_IDLE_GRACE_S for a request already on its way, which is then answered the same way.
        Closing idle ones at once would race with a client sending its next request on them."""
        self.draining = True
        deadline = trio.current_time() + DRAIN_IDLE_GRACE_S
        for timer in self.timers.live:
            if timer.phase == Phase.IDLE:
                timer.shorten(deadline)

    async def wait_empty(self) -> None:
        await self._empty.wait()


class BodyFile(Protocol):
    """A request body kept in a file (gateway.pipeline.request_buffer.SpooledBody), read back from its start."""

    def read(self) -> bytes:
        """The next piece; b"" at the end."""
        ...

    def close(self) -> None: ...


class RequestFailed(Exception):
    """The gateway could not go on with a request for a reason of its own, not the client's nor a bug (its body could
    not be written to a temporary file: a full disk), said in the log where it happened: the connection loop answers
    `status` as nginx does, through Kong's error page, with no traceback, and lingers over what the client still
    sends."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class BodyReader(Protocol):
    """A reader that keeps the body bytes it read itself (gateway.mcp.step.McpRequest, under state[BODY_READER]): the
    Exchange's own readers take them back first, so every reader sees the client's body from its start."""

    def give_back(self, replaced: bool = False) -> bytes | None:
        """The bytes it holds (None: none), the Exchange's from now on; `replaced`: a plugin set another body."""
        ...


class Answering(Protocol):
    """An upstream connection a request body streams to (gateway.http.pool.UpstreamConn): `heard` reads what it
    said, raising once that is an answer."""

    conn: Conn

    def heard(self) -> None: ...


class Exchange:
    """One request/response on a client connection, as the handler sees it."""

    __slots__ = ("request", "conn", "_codec", "_request_done", "response_started", "response_done",
                 "_expect_continue", "close_after", "state", "body_received", "timer",
                 "request_id", "response_lines", "status", "settings", "client_ip", "peer_trusted", "consumer",
                 "phases", "_held", "route", "tries", "sent", "response_headers", "mcp", "started", "answered_at")

    def __init__(self, request: Request, conn: Conn, codec: ServerCodec, timer: ConnTimer,
                 settings: ServerSettings, started: float = 0.0) -> None:
        self.request = request
        self.settings = settings
        self.timer = timer  # the handler may set a deadline for its phase (e.g. waiting for an upstream)
        self.request_id = b""  # echoed on errors when the handler has set one
        self.response_lines = b""  # header lines policies add to the response (e.g. rate-limit headers)
        self.status = 0  # of the response, once its head is sent
        # The client's address: the socket peer's, or from gateway.real_ip_header when the peer is in
        # gateway.trusted_ips (then peer_trusted); what ip-restriction, rate limiting and X-Real-IP use.
        self.client_ip = conn.peer[0] if conn.peer else ""
        self.peer_trusted = False
        self.consumer: Any = None  # set by authentication policies: who the request is (gateway.policies.consumers)
        # The response phases of the request's plugins (gateway.pipeline.phases.ResponsePhases), run on whatever
        # response this request gets; None (the common case) costs nothing.
        self.phases: Any = None
        self._held: bytes | None = None  # body bytes a policy read ahead (read_body) or replaced (replace_body)
        # What the log phase reads after the response (gateway.telemetry): the matched route, the upstream tries
        # (the forwarder's attempts, in order), bytes written to the client (those the kernel took: nginx's c->sent),
        # the response headers, the MCP request.
        self.route: Any = None
        self.tries: list[Any] | None = None
        self.sent = 0
        # An answer of the gateway's own (no try): when its head was about to go (Trio clock), where Kong's kong
        # latency ends (its header filter's start: kong/init.lua header_filter), however long the client reads
        self.answered_at = 0.0
        self.response_headers: Headers | None = None
        self.mcp: Any = None
        # When its head's first bytes came (Trio clock), as nginx's r->start_sec/msec: latencies and started_at
        self.started = started
        self.conn = conn
        self._codec = codec
        self._request_done = False
        self.response_started = False
        self.response_done = False
        self.close_after = False
        self.state: dict[str, Any] | None = None  # per-request notes for policies (lazily created)
        self._expect_continue = request.expect_continue
        self.body_received = 0  # request body bytes read so far (decoded, without chunked framing)

    def add_response_lines(self, lines: bytes) -> None:
        """Header lines, formatted (b"Name: value\r\n" each), for whatever response this request gets (an answer
        from upstream or the gateway's own): what a policy adds to every response costs no per-header work."""
        self.response_lines += lines

    def rewrite_target(self, target: bytes) -> None:
        """Send the request upstream with `target`; the one the client sent stays the request_uri()."""
        if self.state is None:
            self.state = {REQUEST_URI: self.request.request_uri}
        elif REQUEST_URI not in self.state:
            self.state[REQUEST_URI] = self.request.request_uri
        self.request.target = target

    def set_response_header(self, name: bytes, value: bytes) -> None:
        """kong.response.set_header in access: whichever response comes has this header (in place of one of that
        name), set before the plugins' header filters run, so they see it (gateway.pipeline.phases)."""
        if self.state is None:
            self.state = {}
        headers_set = self.state.setdefault(HEADERS_SET, [])
        headers_set[:] = [hv for hv in headers_set if hv[0] != name]
        headers_set.append((name, value))

    def set_response_headers(self, headers: Headers) -> None:
        """set_response_header of each (name in lower case, value), in order: several headers a policy sets at once."""
        if self.state is None:
            self.state = {}
        headers_set = self.state.setdefault(HEADERS_SET, [])
        names = {name for name, _ in headers}
        headers_set[:] = [hv for hv in headers_set if hv[0] not in names] + headers

    def set_method(self, method: bytes) -> None:
        """Send the request upstream as `method` (kong.service.request.set_method); the client's stays the request
        line's (request_line_method). The answer is framed by the client's method, which the client reads it by,
        but one sent upstream as HEAD has no body to send: its head goes alone and the connection closes after it,
        so the client sees the body the head announces cut. (nginx frames by the method as changed: a head alone on
        a connection kept, whose next response the client reads as that body; a body to a client's HEAD, read as
        the next response.)"""
        if self.state is None:
            self.state = {}
        self.state.setdefault(REQUEST_METHOD, self.request.method)
        self.request.method = method

    def request_line_method(self) -> bytes:
        """The method as the client sent it (the first word of nginx's $request), whatever policies changed since."""
        state = self.state
        return state.get(REQUEST_METHOD, self.request.method) if state else self.request.method

    def set_upstream_path(self, path: bytes) -> None:
        """Send the request upstream with `path` (and the query as it stands), in place of the route's
        (kong.service.request.set_path: the caller escapes it)."""
        if self.state is None:
            self.state = {}
        self.state[UPSTREAM_PATH] = path

    def uri_captures(self) -> dict[int | str, bytes | None]:
        """The groups of the matched regex route path, by number and name (Kong's uri_captures; none: empty)."""
        state = self.state
        return state.get(URI_CAPTURES) or {} if state else {}

    def request_uri(self) -> bytes:
        """The target as the client sent it (nginx's $request_uri), whatever policies rewrote since."""
        state = self.state
        if state and REQUEST_URI in state:
            return state[REQUEST_URI]
        return self.request.request_uri

    @property
    def peer_ip(self) -> str:
        """The socket peer's address (nginx's $realip_remote_addr), whatever client_ip says."""
        return self.conn.peer[0] if self.conn.peer else ""

    def take_buffered_body(self) -> tuple[bytes, bool]:
        """Body bytes that arrived with the head (or that a reader read ahead), and whether that was all of it: lets
        the proxy send in one write."""
        if self.state is not None and BODY_READER in self.state:
            self._take_back(self.state[BODY_READER])
        held, self._held = self._held or b"", None
        if self._request_done:
            state = self.state
            return held, state is None or HELD_FILE not in state  # (a held file: receive_body reads it back)
        body, self._request_done = self._codec.take_body()
        if body:
            self.body_received += len(body)
        return (held + body if held else body), self._request_done

    def take_held_file(self) -> BodyFile | None:
        """The file of a body a policy read whole in access (hold_body), taken out for the proxying to send from,
        or None: then receive_body does not read it back."""
        state = self.state
        return state.pop(HELD_FILE) if state is not None and HELD_FILE in state else None

    async def read_body(self, limit: int) -> tuple[bytes, bool]:
        """Read the request body to its end, or until more than `limit` bytes: (the bytes, whether that is all of
        it). They are kept: the forwarder sends them (or what replace_body put instead) before the rest."""
        if self.state is not None and BODY_READER in self.state:
            self._take_back(self.state[BODY_READER])
        body, self._held = self._held or b"", None
        if len(body) <= limit and (chunk := await self.receive_body()) is not None:
            whole = bytearray(body)  # (one buffer, not an object per chunk: a body of tiny chunks weighs its bytes)
            whole += chunk
            while len(whole) <= limit and (chunk := await self.receive_body()) is not None:
                whole += chunk
            body = bytes(whole)
        self._held = body
        state = self.state
        return self._held, self._request_done and (state is None or HELD_FILE not in state)

    def replace_body(self, body: bytes) -> None:
        """Send `body` upstream instead of what read_body returned (a whole body; the caller fixes the headers, and
        the forwarder frames it by its length whatever they say). As ngx.req.set_body_data, the body is in memory from
        now on (BODY_SET), whatever its size."""
        self._held = body
        state = self.state
        if state is None:
            state = self.state = {}
        else:
            if HELD_FILE in state:
                state.pop(HELD_FILE).close()
            if BODY_READER in state:
                state[BODY_READER].give_back(True)  # (what it still held is replaced too)
        state[BODY_SET] = True

    def _take_back(self, reader: BodyReader) -> None:
        """The bytes `reader` read ahead (the MCP peek's, say), held again here for whoever reads next: Kong's plugins
        all read the one body nginx read (kong.request.get_raw_body), and the forwarder sends what they leave."""
        lent = reader.give_back()
        if lent:
            held = self._held
            self._held = lent + held if held else lent

    def release_body(self) -> None:
        """The request is over, whoever answered it: close the body it still holds (a file: hold_body) and drop the
        bytes, as nginx's request pool cleanup closes its temporary body file (ngx_file.c:187-209)."""
        self._held = None
        state = self.state
        if state is not None and HELD_FILE in state:
            state.pop(HELD_FILE).close()

    def hold_body(self, body: bytes, rest: BodyFile | None = None) -> None:
        """Keep a body a policy read to its end in access (request-size-limiting, as Kong's ngx.req.read_body): `body`,
        then what `rest` holds (a body too large for memory), is what receive_body and take_buffered_body give
        next, as if the client were sending it."""
        self._held = body
        if rest is not None:
            if self.state is None:
                self.state = {}
            self.state[HELD_FILE] = rest

    async def receive_body(self, upstream: Answering | None = None) -> bytes | None:
        """The next chunk of the request body, or None at its end. `upstream`: the connection the body streams to,
        heard while the client is waited for (its answer may end the body: Answered)."""
        if self._held is not None:
            held, self._held = self._held, None
            if held:
                return held
        codec = self._codec
        while not self._request_done:
            ev = codec.next_event()
            if ev is END:
                self._request_done = True
                return None
            if ev is NEED_DATA:
                if self._expect_continue:
                    self._expect_continue = False
                    if not self.response_started:  # never a 1xx after the final response; counted in what the
                        # response sent, as nginx's c->send of it adds to c->sent, its $bytes_sent
                        # (ngx_http_request_body.c:964-966, os/unix/ngx_send.c:44)
                        await self.send_framed(codec.informational(100))
                timer = self.timer  # a client stalling mid-body times out as the client (408), not the upstream (504)
                saved = timer.save()
                began = trio.current_time()
                timer.set(self.settings.body_timeout, Phase.CLIENT_BODY)
                if upstream is None:
                    data = await self.conn.recv()
                else:
                    try:
                        data = await self.conn.recv_or_hear(upstream.conn, upstream.heard)
                    except Exception:  # the upstream answered (or broke) first: the forwarder's deadline again
                        timer.restore(saved, trio.current_time() - began)
                        raise
                timer.restore(saved, trio.current_time() - began)
                codec.receive_data(data)
                continue
            self.body_received += len(ev)  # type: ignore[arg-type]
            await self.conn.pace()  # (a read of tiny chunks is many events: the worker's other clients get a turn)
            return ev  # type: ignore[return-value]
        state = self.state
        if state is not None and HELD_FILE in state:  # the client's body was read before (hold_body): its file
            chunk = state[HELD_FILE].read()
            if chunk:
                return chunk
            state.pop(HELD_FILE).close()
        return None

    async def discard_body(self) -> bool:
        """Read and drop the next part of the rest of the request body, after its answer: True while more may come.
        Nothing of it is counted (body_received, the request's size): nginx's discarding reads leave $request_length
        as it was (ngx_http_read_discarded_request_body, ngx_http_request_body.c:782-840; a body read counts, 120 and
        397), so the log's request.size is the request's as it stood when the answer went."""
        self.release_body()  # (what a policy held: dropped)
        codec = self._codec
        request = self.request
        size = request.size  # (the codec counts a chunked body's framing into it as it parses it)
        try:
            ev = codec.next_event()
        finally:
            request.size = size
        if ev is END:
            self._request_done = True
            return False
        if ev is not NEED_DATA:
            await self.conn.pace()
            return True
        timer = self.timer  # (as receive_body: a client stalling mid-body times out as the client)
        saved = timer.save()
        began = trio.current_time()
        timer.set(self.settings.body_timeout, Phase.CLIENT_BODY)
        data = await self.conn.recv()
        timer.restore(saved, trio.current_time() - began)
        try:
            codec.receive_data(data)
        finally:
            request.size = size
        return True

    @property
    def request_done(self) -> bool:
        return self._request_done

    async def send_head(self, status: int, headers: Headers, body: bytes = b"", end: bool = False,
                        reason: bytes = b"", framing: int | None = None) -> None:
        """Send the response head, optionally with the first body bytes and the end, in a single write. `framing`:
        see ServerCodec.response_head (ignored when the request's plugins filter the headers)."""
        if self.tries is None:
            self.answered_at = trio.current_time()
            if status == 200 and (verdict := precondition(self.request.headers, headers)):
                # the gateway's own 200 (Kong's kong.response.exit): nginx's conditional checks, before any filter
                if verdict == 412:
                    self._clean_header()
                    await self.respond_error_page(412)
                    return
                status, headers, body = 304, [hv for hv in headers if hv[0] not in NOT_MODIFIED_DROPS], b""
        codec = self._codec
        self.response_started = True
        upstream_status = status
        if self.phases is not None:  # a header filter may answer in the response's place (phases.Exit)
            status, headers, body, end = self.phases.filter(self, status, headers, body, end)
            framing = None
        self.status = status
        lines = self.response_lines
        kong = self.settings.kong_headers
        if kong is not None:  # Kong's, after the plugins' header filters (and in the log's response headers)
            lines = self.response_lines = lines + kong.add(self, headers, upstream_status)
        self.response_headers = headers
        # (draining read now, not as the request came: one answered after a reload began closes its connection too)
        close = self.close_after or self.settings.connections.draining
        if self._expect_continue:  # (no 100 went yet: the answer came before the body was waited for)
            data = self._continue_before_answer(close)
            data += codec.response_head(status, headers, reason, close or self.close_after, lines, framing)
        else:
            data = codec.response_head(status, headers, reason, close, lines, framing)
        if body:
            data += codec.body(body)
        if end:
            data += codec.end()
            self.response_done = True
        self.sent += len(data)
        try:
            await self.conn.sendall(data)
        except BaseException:
            self._unsent(len(data))
            raise

    def _continue_before_answer(self, close: bool) -> bytes:
        """The `100 Continue` to send before an answer to an Expect: 100-continue request whose client has had none,
        as Kong's exit discards the body (ngx_http_discard_request_body -> ngx_http_test_expect,
        ngx_http_request_body.c:653, 938-976): the connection loop then reads and drops the body (_drain_request) and
        keeps the connection. b"" when the connection closes with the answer, or when no more body is to come (none,
        or all of it came with the head: RFC 9110 10.1.1 lets a server that has it omit the 100; what came is held
        for the next read, not counted as read: it is discarded, as nginx's ngx_http_discard_request_body discards
        the body that came with the head)."""
        self._expect_continue = False
        if close or self._request_done:
            return b""
        try:
            body, self._request_done = self._codec.take_body()
        except ProtocolError:  # a body broken already: its answer ends the connection, nothing invited more of it
            self.close_after = True
            return b""
        if body:
            held = self._held
            self._held = held + body if held else body
        return b"" if self._request_done else self._codec.informational(100)

    def _clean_header(self) -> None:
        """Forget the response headers policies set in access (HEADERS_SET, response_lines), for the 412 of a failed
        precondition: nginx's not_modified filter answers it through ngx_http_filter_finalize_request, whose
        ngx_http_clean_header empties headers_out before Kong's error page (only the header filters, run again on
        that page, set headers on it); a 304 keeps them."""
        self.response_lines = b""
        state = self.state
        if state is not None:
            state.pop(HEADERS_SET, None)

    async def switch_protocols(self, headers: Headers, reason: bytes = b"") -> bytes | None:
        """Send a 101 head (an upstream's switch, proxied; `headers` with its Upgrade and Connection): from then on
        the connection carries the new protocol and ends with it (the connection loop closes it once the handler
        returns). Returns the bytes the client sent after its request head (the new protocol's first), or None when
        a header filter answered in the 101's place (phases.Exit: that answer was sent, the request is over)."""
        codec = self._codec
        self.response_started = True
        status = 101
        if self.phases is not None:
            status, headers, _, _ = self.phases.filter(self, 101, headers, b"", False)
        self.status = status
        lines = self.response_lines
        kong = self.settings.kong_headers
        if kong is not None:
            lines = self.response_lines = lines + kong.add(self, headers, 101)
        self.response_headers = headers
        self.response_done = True  # the HTTP response is complete (what follows a 101 is not HTTP)
        if status != 101:  # a header filter's Exit (Content-Length: 0): its answer, and the connection ends with it
            self.close_after = True
            await self.send_framed(codec.response_head(status, headers, b"", True, lines) + codec.end())
            return None
        await self.send_framed(codec.switch_protocols(headers, reason, lines))
        return codec.take_upgraded()

    async def send_body(self, data: bytes) -> None:
        if data:
            data = self._codec.body(data)
            self.sent += len(data)
            try:
                await self.conn.sendall(data)
            except BaseException:
                self._unsent(len(data))
                raise

    async def send_framed(self, data: bytes) -> None:
        """Send bytes the codec framed already (what `send_now` left, say), counted as they go."""
        self.sent += len(data)
        try:
            await self.conn.sendall(data)
        except BaseException:
            self._unsent(len(data))
            raise

    def _unsent(self, size: int) -> None:
        """A write of `size` bytes (counted in `sent` before it began) failed: take back what the kernel did not take
        (a TLS connection's count is of its records: at most the write's own size)."""
        self.sent -= min(self.conn.unsent, size)

    def extra_body(self, data: bytes) -> bytes | None:
        """`data` framed as body bytes of the gateway's own in the response being sent (an SSE comment), for
        `send_now`; None when the response cannot take any: its length is fixed (Content-Length), or it has no
        body."""
        codec = self._codec
        return codec.body(data) if codec.open_ended else None

    def send_now(self, framed: bytes) -> bytes:
        """Send framed body bytes (`extra_body`) only as far as the kernel takes them at once (no await: for a
        worker-wide task writing to a connection whose own task is parked between writes). Returns the bytes still
        to send, in order and before anything else: b"" when all went, all of them when the connection cannot write
        this way (then `send_framed` the rest)."""
        sent = self.conn.send_now(framed)
        self.sent += sent
        return framed[sent:]

    async def end(self, last: bytes = b"") -> None:
        codec = self._codec
        self.response_done = True
        data = (codec.body(last) if last else b"") + codec.end()
        self.sent += len(data)
        try:
            await self.conn.sendall(data)
        except BaseException:
            self._unsent(len(data))
            raise

    async def respond(self, status: int, body: bytes, content_type: bytes = JSON,
                      extra: Headers | None = None) -> None:
        """A whole small response in one write (`content_type` b"": none)."""
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))] if content_type else \
            [(b"content-length", b"%d" % len(body))]
        if extra:
            headers += extra
        await self.send_head(status, headers, body, end=True)

    async def respond_error(self, status: int, message: str | None = None, extra: Headers | None = None) -> None:
        """Kong's kong.response.error: `message` (Kong's text for the status when None) and the request id, in the
        format the client's Accept prefers (JSON by default)."""
        if not self.request_id:
            self.request_id = new_request_id()
        content_type, body = error_response(status, message, self.request_id, _accept(self.request.headers),
                                            self.settings.error_templates)
        rid = [(b"x-request-id", x_request_id(self.request.headers, self.request_id))]
        await self.respond(status, body, content_type, rid + extra if extra else rid)

    async def respond_error_page(self, status: int) -> None:
        """An error nginx itself answers (an upstream that failed or timed out), as Kong's error handler answers it:
        Kong's text for the status in the format of the Accept header, else of the Content-Type, else of
        error_default_type (text/plain unless configured). A 400, 413, 414 or 500 ends the connection, as nginx turns
        keep-alive off for them."""
        if not self.request_id:
            self.request_id = new_request_id()
        if status in KEEPALIVE_OFF:
            self.close_after = True
        content_type = page_type(self.request.headers, self.settings.error_type)
        body = error_body(error_message(status), self.request_id, content_type, self.settings.error_templates)
        await self.respond(status, body, header_type(content_type) or b"",
                           [(b"x-request-id", x_request_id(self.request.headers, self.request_id))])


Handler = Callable[[Exchange], Awaitable[None]]


async def serve_listener(listener: socket.socket, handler: Handler, settings: ServerSettings,
                         tls: ServerTls | None = None, proxy_protocol: bool = False,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Accept connections until cancelled; each runs `handle_connection` in this nursery (after its PROXY protocol
    header on a listener with `proxy_protocol`, then a TLS handshake on one with `tls`). At max_connections (all
    listeners of the worker together) a new connection takes the place of the oldest reusable ones
    (ConnectionSet.reuse); with none, or out of descriptors, it is answered a fast 503 and closed
    (gateway.http.limits), never left waiting in the queue."""
    connections = settings.connections
    max_connections = settings.max_connections
    spare = connections.spare_fd()
    shed_lingering = connections.shedder.shed
    listen_port = b"%d" % listener.getsockname()[1]
    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            if listener.fileno() < 0:
                return  # the drain closed it while we were not waiting on it
            try:
                await trio.lowlevel.wait_readable(listener)
            except trio.ClosedResourceError:
                return  # draining: the nursery still waits for the open connections
            for _ in range(ACCEPT_BATCH):
                try:
                    sock, peer = listener.accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.EBADF:
                        return
                    if e.errno in ACCEPT_CAPACITY_ERRNOS:
                        refused = _shed_with_spare(listener, spare)
                        if refused:
                            continue
                        if refused is None:
                            break  # the queue is empty (accept(2) takes a descriptor before it looks)
                        log.error("accept failed (%s) and no spare descriptor; backing off %.1fs",
                                  errno.errorcode.get(e.errno), ACCEPT_BACKOFF_S)
                        await trio.sleep(ACCEPT_BACKOFF_S)
                        break
                    if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                        continue
                    raise
                if connections.active - connections.closing >= max_connections and \
                        not connections.reuse(max_connections):
                    shed_lingering(sock, nursery)
                    SHED.labels("max_connections").inc()
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = Conn(sock, peer)
                conn.listen_port = listen_port
                conn.serial = next(_SERIALS)
                connections.opened()
                nursery.start_soon(_connection_task, conn, handler, settings, tls, proxy_protocol)


def _shed_with_spare(listener: socket.socket, spare: SpareFd) -> bool | None:
    """Out of descriptors: free the spare, refuse one connection with 503, take the spare again. True when one was
    refused, None when the queue turned out empty, False when there is no spare (or it did not help)."""
    if not spare.release():
        return False
    try:
        sock, _ = listener.accept()
    except BlockingIOError:
        spare.take()
        return None
    except OSError:
        spare.take()
        return False
    shed(sock)  # first: its descriptor is the one the spare takes back
    spare.take()
    SHED.labels("nofile").inc()
    return True


async def _connection_task(conn: Conn, handler: Handler, settings: ServerSettings, tls: ServerTls | None,
                           proxy_protocol: bool) -> None:
    timers = settings.connections.timers
    # nginx arms client_header_timeout once, at the accept (ngx_http_init_connection), and leaves it running through
    # the PROXY header, the TLS handshake and the first request head (ngx_http_request.c:355, 429, 1581): one
    # header_timeout for all of them. Meanwhile the connection is waiting (Phase.NEW), as nginx counts it.
    born = timers.clock()
    timer = ConnTimer(born + settings.header_timeout, Phase.NEW)
    timers.add(timer)
    try:
        if proxy_protocol or tls is not None:
            with timer.scope:
                opened = await _open(conn, handler, settings, tls, proxy_protocol)
            if timer.scope.cancel_called:
                TIMEOUTS.labels("client_header").inc()
                log.debug("client %s did not %s within header_timeout_s (%gs) of its accept: connection closed",
                          conn.peer, "send a whole PROXY protocol header" if proxy_protocol and conn.proxied is None
                          else "finish its TLS handshake", settings.header_timeout)
                return
            if opened is None:
                return
            conn, handler = opened
            timer.scope = trio.CancelScope()
        if await handle_connection(conn, handler, settings, timer, born):
            await _linger(conn, settings.connections)
    except OSError as e:  # the peer went away in a place that did not expect it: this connection ends, not the worker
        log.debug("connection from %s ended: %s", conn.peer, e)
    except Exception:
        log.exception("connection from %s failed; closing it (the worker goes on)", conn.peer)
        conn.abort()
    finally:
        timers.discard(timer)  # (also when it ended before its first request)
        conn.close()
        settings.connections.closed(conn)


async def _open(conn: Conn, handler: Handler, settings: ServerSettings, tls: ServerTls | None,
                proxy_protocol: bool) -> tuple[Conn, Handler] | None:
    """What comes before a connection's requests on a `proxy_protocol` or `tls` listener: its PROXY header, then the
    TLS handshake; the connection and handler its requests go to, or None when it is to close unanswered. Bounded
    by the caller's timer (header_timeout from the accept), a handshake by ssl_handshake_timeout_s too."""
    if proxy_protocol and not await _proxy_header(conn, settings, tls is not None):
        return None
    if tls is None:
        return conn, handler
    tls_conn = None
    with trio.move_on_after(tls.handshake_timeout):
        try:
            tls_conn = await server_handshake(tls.context, conn)
        except PlainHttpOnTlsPort:  # read as any plain connection: what the parser refuses gets its 400, a request
            return conn, _plain_http_on_tls(tls.context.plain_http_head)  # nginx's 497
        except (TlsError, OSError) as e:  # bad input, or the client left (a reset mid-handshake)
            log.debug("TLS handshake with %s failed: %s", conn.peer, e)
    if tls_conn is None:
        return None
    tls_conn.proxied = conn.proxied
    return tls_conn, handler


async def _proxy_header(conn: Conn, settings: ServerSettings, tls: bool) -> bool:
    """Read the PROXY protocol header a connection on a `proxy_protocol` listener starts with (within the caller's
    header_timeout, from the accept: nginx's client_header_timeout; within nginx's first read of a plain or a `tls`
    listener) and keep the client it names (conn.proxied);
    False when the connection is to close unanswered, as nginx closes it: the header is broken or missing.
    Meanwhile the connection is reusable, as nginx's waiting for it is (ngx_http_wait_request_handler,
    ngx_http_ssl_handshake)."""
    reusable = settings.connections.reusable
    reusable[conn] = None
    try:
        header = await header_or_none(conn, "a proxy_protocol listener", tls)
        if header is None:
            return False
        conn.proxied = proxied_client(header.source, header.source_port)
        return True
    finally:
        reusable.pop(conn, None)
    return False


def _plain_http_on_tls(head: bytes) -> Handler:
    """The handler of a plain HTTP connection to a TLS listener: a request parsed whole gets nginx's page for its
    497 (ngx_http_process_request: "client sent plain HTTP request to HTTPS port", `head`: plain_http_head_for),
    and the connection closes after it."""

    async def answer(ex: Exchange) -> None:
        data = plain_http_answer(head, ex.request.method == b"HEAD")
        ex.status = 400
        ex.response_started = ex.response_done = ex.close_after = True
        await ex.send_framed(data)

    return answer


async def handle_connection(conn: Conn, handler: Handler, settings: ServerSettings, timer: ConnTimer | None = None,
                            born: float = 0.0) -> bool:
    """Serve requests on one client connection until it closes, breaks, or idles out; True when it ends on an
    answer that left input unread (the client may still be sending its body): the connection lingers (_linger).

    One coarse timer per connection serves every timeout (see gateway.http.timers): a new connection's
    header_timeout, keepalive_timeout between requests, header_timeout once a head starts, and whatever the handler
    sets while it waits for an upstream. A kept-alive connection waiting for its next request is closed soon after
    the worker starts draining; a new connection is always given its first request, since the client has already
    committed it to us. (One coroutine for the loop and its timer: every open connection holds its frame.)
    `timer`, `born`: the timer running since the connection's accept at `born` (a PROXY header or TLS handshake came
    first: the first head's header_timeout and keepalive_time count from then); none: from now.
    """
    codec = settings.codec_cls(settings.max_header_bytes, settings.max_line_bytes)
    connections = settings.connections
    timers = connections.timers
    if timer is None:
        born = timers.clock()
        timer = ConnTimer(born + settings.header_timeout, Phase.NEW)
        timers.add(timer)
    old_at = born + settings.keepalive_time  # from then on, the next request is the last (nginx's keepalive_time)
    last_request = settings.keepalive_requests
    conn.send_timer = timer
    conn.send_timeout = settings.send_timeout
    timer.client = conn
    clock = timers.clock
    head_at = 0.0  # when the first bytes of a head that came in pieces (or of the connection's first) arrived
    reusable = connections.reusable  # (in it while waiting for a first byte, or for a next request: see reuse)
    reusable[conn] = None
    keepalive_timeout, idle = settings.keepalive_timeout, Phase.IDLE  # (read per request)
    served = 0
    try:
        while True:
            with timer.scope:
                while True:
                    try:
                        ev = codec.next_event()
                        if ev is NEED_DATA and served:
                            # Idle until the next request, unless its head began in the last read: nginx starts
                            # that request at once, under header_timeout (ngx_http_set_keepalive)
                            if not codec.head_begun:
                                if connections.draining:
                                    timer.shorten(trio.current_time() + DRAIN_IDLE_GRACE_S)
                                reusable[conn] = None
                                codec.receive_data(await conn.recv())
                                del reusable[conn]
                                ev = codec.next_event()
                            if ev is NEED_DATA:
                                head_at = clock()
                                timer.set_until(head_at + settings.header_timeout, Phase.HEAD)
                                connections.requests += 1  # (a head in pieces counts from its first bytes)
                        while ev is NEED_DATA:
                            data = await conn.recv()
                            if timer.phase == Phase.NEW:  # (a connection that never sends a byte is closed unanswered)
                                timer.phase = Phase.HEAD
                                del reusable[conn]
                                head_at = clock()
                                if data:  # nginx's request begins, counted, with its first bytes
                                    connections.requests += 1  # (ngx_http_wait_request_handler)
                            codec.receive_data(data)
                            ev = codec.next_event()
                    except ProtocolError as e:
                        if not head_at:  # (it came whole: not counted yet)
                            connections.requests += 1
                        target, size = _as_counted(e)
                        if e.cut:  # nginx's "client prematurely closed connection": its 400 is the log's alone
                            log.debug("client %s closed its connection mid-head: no answer (logged 400)", conn.peer)
                            _log_unanswered(conn, codec, timer, settings, e.status, e.method, target, head_at, size)
                            return False
                        log.debug("bad request from %s: %s", conn.peer, e)
                        await _refuse(conn, codec, timer, settings, e.status, e.method, target, head_at, e.headers,
                                      size)
                        return e.status in _LINGER_REFUSED or conn.readable()
                    except (BrokenPipeError, ConnectionError):
                        return False
                    if ev is CLOSED:
                        return False
                    idle_until = timer.at  # the previous request's end + keepalive_timeout: later than now
                    timer.clear()
                    served += 1
                    conn.requests = served
                    if head_at:  # nginx's request starts with its first bytes (ngx_http_alloc_request)
                        started, head_at = head_at, 0.0
                    else:  # (the head came whole, or was already read: now is when it came)
                        started = clock()
                        connections.requests += 1
                    exchange = Exchange(ev, conn, codec, timer, settings, started)  # type: ignore[arg-type]
                    # nginx's keepalive_requests / keepalive_time (counted from the accept, the first request's too:
                    # ngx_http_update_location_config): this one is the last. (A deadline before old_at: now is too.)
                    if served >= last_request or (idle_until >= old_at and clock() > old_at):
                        exchange.close_after = True
                    timer.exchange = exchange
                    try:
                        await handler(exchange)
                    except ProtocolError as e:
                        if not exchange.response_started:
                            if e.cut and e.status < 500:  # the client closed mid-body: nginx's 400 is the log's
                                # alone, which the handler wrote
                                log.debug("client %s closed its connection mid-body: no answer", conn.peer)
                                return False
                            log.debug("bad request from %s: %s", conn.peer, e)
                            content_type = page_type(exchange.request.headers, settings.error_type)
                            await _answer_error(exchange, e.status, content_type, None)
                            return not exchange.request_done
                        if not exchange.response_done:
                            conn.abort()  # (a cut body must not look complete)
                        return False
                    except (BrokenPipeError, ConnectionError):
                        if exchange.response_started and not exchange.response_done:
                            conn.abort()
                        return False
                    except RequestFailed as e:  # (logged where it failed)
                        if exchange.response_started:
                            conn.abort()
                            return False
                        content_type = page_type(exchange.request.headers, settings.error_type)
                        await _answer_error(exchange, e.status, content_type)
                        # then nginx lingers over a body still coming (ngx_http_finalize_connection's read->ready)
                        return not exchange.request_done or conn.readable()
                    except Exception:
                        request = exchange.request
                        log.exception("request handler failed: %s %s", request.method, request.target)
                        if not exchange.response_started:
                            await _answer_error(exchange, 500, page_type(request.headers, settings.error_type))
                        else:
                            conn.abort()
                        return False
                    if not exchange.response_done:
                        conn.abort()  # the handler gave up mid-response: never let a cut body look complete
                        return False
                    if not exchange.request_done and (codec.closing or not await _drain_request(exchange)):
                        return True  # (an answer before the body: the body is read only to keep the connection)
                    if not codec.keep_alive or exchange.close_after:  # nginx lingers when input is waiting (a
                        return conn.readable()  # pipelined request): a close would reset the answer's end with it
                    if exchange.state is not None:  # (a body file a plugin's read left: the answer was its own)
                        exchange.release_body()
                    timer.exchange = None  # nothing of the request is kept while the connection waits for the next
                    del exchange
                    codec.start_next_cycle()
                    timer.set_until(clock() + keepalive_timeout, idle)

            # The timer fired (the scope is the timer's alone): answer what can be answered, go on when it allows
            if not await _timed_out(conn, codec, timer, settings, head_at):
                return False
            _request_over(timer)
            timer.scope = trio.CancelScope()
            codec.start_next_cycle()
            timer.set(keepalive_timeout, idle)
    except BaseException:  # cancelled from outside (the worker stops: a drain timed out) mid-answer: a reset, never
        cut: Exchange | None = timer.exchange  # type: ignore[assignment]  # a FIN, which would make a body that
        if cut is not None and cut.response_started and not cut.response_done:  # ends with the connection look whole
            conn.abort()
        raise
    finally:
        _request_over(timer)
        timer.client = None  # (a stale heap entry may keep the timer a while: not the connection)
        timers.discard(timer)
        reusable.pop(conn, None)  # (one whose timer fired while it waited)


def _request_over(timer: ConnTimer) -> None:
    """The connection's request is over, whoever answered it (or none did): what it holds of its body is released
    (nginx's request pool cleanup closes a temporary body file: ngx_file.c:187-209) and the timer lets it go."""
    exchange: Exchange | None = timer.exchange  # type: ignore[assignment]
    if exchange is not None:
        timer.exchange = None
        exchange.release_body()


async def _timed_out(conn: Conn, codec: ServerCodec, timer: ConnTimer, settings: ServerSettings,
                     head_at: float = 0.0) -> bool:
    """A connection's timer fired: answer what nginx answers there (an upstream's 504; nothing to a client too slow
    with its head or body, whose request is logged 408), never leave a cut body looking whole. True when
    the connection may serve another request: after an upstream's 504 to a request read whole, as nginx keeps it
    (ngx_http_special_response_handler drops keep-alive only for 400, 413, 414, 495-497, 500 and 501)."""
    phase = timer.phase
    exchange: Exchange | None = timer.exchange  # type: ignore[assignment]
    if timer.gone:  # not a timeout: the sweeper saw the client leave (gateway.http.timers)
        log.debug(CLIENT_GONE_LOG, conn.peer)
        conn.abort()
        return False
    TIMEOUTS.labels(_TIMEOUT_KINDS.get(phase, "other")).inc()
    if phase == Phase.HEAD:
        log.debug("client %s did not send a whole request head within header_timeout_s (%gs): connection closed "
                  "unanswered (logged 408)", conn.peer, settings.header_timeout)
        line_method, line_target = codec.request_line_so_far()
        # nginx's $request_length: the request line once it was whole (a target), as `method target HTTP/1.1`; the
        # header lines that came after it are not known here
        _log_unanswered(conn, codec, timer, settings, 408, line_method, line_target, head_at,
                        len(line_method) + len(line_target) + 12 if line_target else 0)
    elif phase == Phase.CLIENT_WRITE:
        log.debug("client %s did not read its response within send_timeout_s (%gs): connection closed",
                  conn.peer, conn.send_timeout)
        conn.abort()
    elif phase == Phase.CLIENT_BODY and exchange is not None and not exchange.response_started:
        # nginx answers nothing: ngx_http_finalize_request (and the upstream module's, for a body read while it is
        # proxied) terminates a 408; the handler's log phase said 408 (gateway.telemetry.phase._closing_status)
        log.debug("client %s did not send the rest of its request body within client_body_timeout_s (%gs): "
                  "connection closed unanswered (logged 408)", conn.peer, settings.body_timeout)
    elif phase in _UPSTREAM_VERBS and exchange and not exchange.response_started:
        target, seconds = timer.detail or ("?", 0.0)
        verb = _UPSTREAM_VERBS[phase]
        setting = "write_timeout" if phase == Phase.UPSTREAM_WRITE else "read_timeout"
        if not exchange.request_done:  # the rest of the body would be read as the next request
            exchange.close_after = True
        log.error("upstream %s did not %s within %gs (%s): 504%s", target, verb, seconds, setting,
                  ErrorContext(exchange))
        try:
            with trio.move_on_after(1.0):
                await exchange.respond_error_page(504)
        except (BrokenPipeError, ConnectionError, OSError):
            return False
        if not exchange.request_done:  # the client may still be sending its body: closing now would reset the 504
            # away (nginx's lingering close of a request whose body is being read)
            await _linger(conn, settings.connections)
            return False
        return exchange.response_done and not exchange.close_after and codec.keep_alive
    elif exchange is not None and exchange.response_started and not exchange.response_done:
        conn.abort()
    return False


async def _linger(conn: Conn, connections: ConnectionSet) -> None:
    """nginx's lingering close. Closing a socket with input unread sends a reset, which ends the client's upload with
    an error (urllib3 and curl then report that instead of the answer) and can destroy the answer before the client
    reads it. So the answer is ended with a FIN, and what the client still sends is read and dropped while it keeps
    coming (LINGER_TIMEOUT_S) for at most LINGER_TIME_S; then the connection closes. Meanwhile the connection is
    reusable, as nginx's ngx_http_set_lingering_close makes it: a new client at max_connections may close it."""
    if conn.closed:
        return
    reusable = connections.reusable
    reusable[conn] = None
    try:
        conn.sock.shutdown(socket.SHUT_WR)
        with trio.move_on_after(LINGER_TIME_S):
            while True:
                with trio.move_on_after(LINGER_TIMEOUT_S) as quiet:
                    data = await conn.recv()
                if quiet.cancelled_caught or not data:
                    return
    except (OSError, TlsError):
        pass
    finally:
        reusable.pop(conn, None)


async def _drain_request(exchange: Exchange) -> bool:
    """Read and drop the unread rest of a request body so the connection can be reused, as nginx discards a body
    it answered without reading: any size, while the client keeps sending (a read at least every LINGER_TIMEOUT_S)
    for at most LINGER_TIME_S. False if the connection must close instead (also when the body turns out broken: its
    answer is out already, so there is no one left to tell)."""
    with trio.move_on_after(LINGER_TIME_S):
        try:
            while True:
                with trio.move_on_after(LINGER_TIMEOUT_S) as quiet:
                    more = await exchange.discard_body()
                if quiet.cancelled_caught:
                    return False
                if not more:
                    return True
        except ProtocolError as e:
            log.debug("unread request body from %s broken after its answer: %s", exchange.conn.peer, e)
            return False
    return False


def _refused(conn: Conn, codec: ServerCodec, timer: ConnTimer, settings: ServerSettings, status: int,
             method: bytes, target: bytes, head_at: float, size: int = 0) -> Exchange:
    """The request of a head that could not be read (or not in time), as nginx logs it: what its request line said
    (`method`, `target`: b"" when unknown; no target past a line too long, as nginx has none), with no headers,
    started when its first bytes came (`head_at`; 0: now), `size` the bytes nginx counted of it (0: estimated from
    its request line, gateway.telemetry.entry.request_size)."""
    request = Request(method, b"" if status == 414 else target, [], b"1.1", False, size=size)
    exchange = Exchange(request, conn, codec, timer, settings, head_at or trio.current_time())
    exchange.state = {REFUSED: True}
    return exchange


async def _refuse(conn: Conn, codec: ServerCodec, timer: ConnTimer, settings: ServerSettings, status: int,
                  method: bytes = b"", target: bytes = b"", head_at: float = 0.0, read: Headers | None = None,
                  size: int = 0) -> None:
    """Answer a request whose head could not be read and log it, as nginx does with its 400, 414 and 494 (see
    `_refused`). The answer's format is Kong's error handler's choice from the header lines nginx had read (`read`:
    the error's)."""
    exchange = _refused(conn, codec, timer, settings, status, method, target, head_at, size)
    exchange.phases = settings.refused_phases
    await _answer_error(exchange, status, page_type(read, settings.error_type) if read else settings.error_type)
    if settings.log_refused is not None:
        settings.log_refused(exchange)


def _log_unanswered(conn: Conn, codec: ServerCodec, timer: ConnTimer, settings: ServerSettings, status: int,
                    method: bytes = b"", target: bytes = b"", head_at: float = 0.0, size: int = 0) -> None:
    """Log a request whose head did not come in time (408) or was cut by the client's close (400) with `status` and
    send nothing, as nginx: its ngx_http_process_request_line/_headers close a timed-out head with
    ngx_http_close_request(r, 408), and a cut one sets c->error and finalizes 400, which then terminates it
    (ngx_http_request.c:1594-1603, 2531-2541); the status is the log's alone (ngx_http_free_request), Kong's
    error_page never reached. The connection then closes."""
    exchange = _refused(conn, codec, timer, settings, status, method, target, head_at, size)
    exchange.request_id = new_request_id()
    exchange.status = status
    exchange.response_started = exchange.response_done = True  # (over, with that status: what the log reads)
    if settings.log_refused is not None:
        settings.log_refused(exchange)


# A request line as nginx's ngx_http_parse_request_line takes it: a method, a target, HTTP/1.x, runs of spaces between
# (and after); group 1 the target
_NGINX_LINE = re.compile(rb"[A-Z_-]+ +(" + NGINX_TARGET.pattern + rb") +HTTP/1\.[0-9]+ *\r?")
# A header line nginx cannot parse (ngx_http_parse_header_line's NGX_HTTP_PARSE_INVALID_HEADER, not counted): a byte
# up to 0x20 or 0x7F in its name, a `:` first, a NUL or a lone CR
_INVALID_FIELD = re.compile(rb"[^:]*[\x00-\x20\x7f]|:|.*[\x00\r]", re.S)
_IGNORED_NAME = re.compile(rb"[^a-z0-9_-]").search  # a name nginx ignores the line of (check_request_head drops it)
# The headers nginx refuses a second line of as it reads it (ngx_http_headers_in: ngx_http_process_host, _unique_)
_ONCE = frozenset({b"host", b"content-length", b"transfer-encoding", b"authorization", b"expect", b"if-match",
                   b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"content-range", b"if-range"})
_SCHEME_AUTHORITY = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


def refused_length(error: ProtocolError) -> tuple[int, bytes | None] | None:
    """nginx's $request_length of a request head it refused with `error`, and the target of its $request_uri then
    (None: none), from the head's bytes the codec noted (codec_llhttp.note_head; None: it noted none). nginx counts
    the request line once it parsed it (ngx_http_request.c:1124: nothing of a line it refused, 414 or 505 too), and
    sets $request_uri once it parsed the URI as well (1276-1290: `/a%` is counted, without one); each header line as
    it parsed it (1454: one a header handler refuses then, a second Host, is counted, 1487; one it cannot parse is
    not); the blank line as the head ends (1519: what it checks once the head is whole, a Content-Length, counts it
    all)."""
    noted = error.refused_head
    if noted is None:
        return None
    head, whole = noted
    lines = head.split(b"\n")
    line = _NGINX_LINE.fullmatch(lines[0]) if len(lines) > 1 and error.status not in (414, 505) else None
    if line is None:
        return 0, None
    size = len(lines[0]) + 1
    target = line[1]
    if nginx_refusal(target if target[:1] == b"/" else _SCHEME_AUTHORITY.sub(b"", target, 1) or b"/") is not None:
        return size, None
    read = error.headers  # (refused at a header line: those read up to it, but the lines nginx ignores)
    last = len(read) if read is not None and not whole else -1
    return size + _header_lines_counted(lines[1:-1], last, error.status != HEAD_TOO_LARGE), target


def _header_lines_counted(lines: list[bytes], last: int, dropped: bool) -> int:
    """The bytes of the header lines (each as split at its LF) nginx counted: up to the `last`-th it read (-1: not
    known), those it ignores (a name it calls invalid) not in that count when `dropped`, or up to its own first
    refusal: a line it cannot parse (not counted), a second line of a header it takes once (counted); the blank
    line too once it came."""
    size = n = 0
    seen: set[bytes] = set()
    for raw in lines:
        field = raw[:-1] if raw[-1:] == b"\r" else raw
        if n == last or _INVALID_FIELD.match(field) is not None:
            break
        size += len(raw) + 1
        if not field:  # the blank line: the head is whole
            break
        name = field.partition(b":")[0].lower()
        if not (dropped and _IGNORED_NAME(name)):
            n += 1
        if last < 0 and name in _ONCE:
            if name in seen:
                break
            seen.add(name)
    return size


def _as_counted(error: ProtocolError) -> tuple[bytes, int]:
    """The target and the size the log gives a head refused with `error`: nginx's $request_uri and $request_length
    (refused_length), or as the error says them (size 0: estimated) when the codec noted no bytes of it."""
    counted = refused_length(error)
    if counted is None:
        return error.target, 0
    size, target = counted
    return (error.target or target) if target is not None else b"", size


async def _answer_error(ex: Exchange, status: int, content_type: bytes, message: str | None = None) -> None:
    """Answer with an error the connection loop makes, as Kong's error handler does (its text for the status unless
    `message` is given, in `content_type`, through the request's response phases, with Kong's response headers),
    and close; to a HEAD, the head a GET would
    get (RFC 9110 9.3.2). Formatted here, not by the codec, which may have given up on the connection."""
    text = message or error_message(status)  # (494's own: "Request header or cookie too large")
    status = answered_status(status)
    if not ex.request_id:
        ex.request_id = new_request_id()
    if status in KONG_ERROR_PAGES:
        body = error_body(text, ex.request_id, content_type, ex.settings.error_templates)
        header = header_type(content_type)
    else:  # not one of Kong's error_page statuses (nginx's 501 for an unknown Transfer-Encoding): nginx's own page
        body, header = nginx_page(status), b"text/html"
    headers = [(b"content-length", b"%d" % len(body))]
    if header is not None:
        headers.insert(0, (b"content-type", header))
    if ex.phases is not None:  # the plugins' header and body filters, as Kong's error page runs them
        try:
            status, headers, body, _ = ex.phases.filter(ex, status, headers, body, True)
        except Exception:
            log.exception("a plugin's filter failed on the error %d", status)
    kong = ex.settings.kong_headers
    lines = ex.response_lines = kong.add(ex, headers, status) if kong is not None else b""
    ex.status = status
    ex.response_started = ex.response_done = True
    ex.response_headers = headers
    head = b"".join([b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Error")),
                     *[b"%b: %b\r\n" % hv for hv in headers], b"connection: close\r\n", lines, b"\r\n"])
    data = head if ex.request.method == b"HEAD" else head + body
    try:
        with trio.move_on_after(1.0):
            await ex.send_framed(data)
    except (BrokenPipeError, ConnectionError, OSError):
        pass


_REASONS = {400: b"Bad Request", 405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Content Too Large",
            414: b"URI Too Long", 500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
            505: b"HTTP Version Not Supported"}
