"""Forward one request to a target of its service and stream the response back, retrying where it is safe.

Retry rule (nginx's proxy_next_upstream, made safe for POST): a failure before any response byte moves on to the
next target when nothing was sent, or when the method is idempotent and the whole body is still in hand; a
write_timeout or read_timeout is such a failure (nginx's default `proxy_next_upstream error timeout`), and an
invalid response head is not (no invalid_header in that default): it is answered 502 at once. A pooled
connection that the upstream closed as the request crossed it (no response byte) is not the target's failure: the
same target is tried again on another connection, and that costs no try (nginx's cached-peer rule). A connect the
gateway has no socket for (out of descriptors), or whose TLS server name OpenSSL refuses (a preserved Host over 255
bytes), is not the target's failure (LocalError): 500 at once, no retry, nothing reported to the balancer's health
or the breaker (nginx's NGX_ERROR from ngx_event_connect_peer, or from ngx_http_upstream_ssl_name).
After the response head has been sent to the client, a failing upstream aborts the client connection (a reset),
so a cut-off body can never look complete.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from gateway.http.codec import (
    CHUNKED,
    CLOSED,
    END,
    LENGTH,
    NEED_DATA,
    NO_BODY,
    Headers,
    ProtocolError,
    Response,
    length_in_range,
)
from gateway.http.errlog import ErrorContext
from gateway.http.errors import (
    BadResponse,
    ConnectTimeout,
    LocalError,
    NameResolutionFailed,
    UpstreamClosed,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.http.kong_errors import NO_PEER
from gateway.http.kong_headers import ASSIGNED_BY_KONG, CHARSET_DECLINED, note_via
from gateway.http.pool import Answered, Pool, UpstreamConn, locate
from gateway.http.server import BODY_SET, Exchange
from gateway.http.timers import ConnTimer, Phase, run_clock
from gateway.http.tls_contexts import ClientTls
from gateway.mcp.affinity import SessionAffinity, caller_identity, target_down
from gateway.mcp.governance import ResponseEdit, error_response
from gateway.mcp.sse import EventSplitter, EventTooLarge, ends_event
from gateway.mcp.step import McpRequest, session_not_found
from gateway.memo import Derived
from gateway.metrics import MCP_SESSIONS, RECORDER, TIMEOUTS
from gateway.pipeline.hashing import balancer_key, drop_new_cookie
from gateway.pipeline.headers import (
    CONNECTION_OPTIONS,
    HOP_BY_HOP_RESPONSE,
    UPGRADE,
    asks_trailers,
    framed_by_length,
    upstream_request_headers,
)
from gateway.pipeline.keepalive import StreamKeepAlives
from gateway.pipeline.phases import read_whole_body
from gateway.pipeline.request_buffer import MEMORY_LIMIT, BodyInHand, SpooledBody, held_whole, read_whole, with_length
from gateway.pipeline.streamwatch import StreamWatch
from gateway.pipeline.tunnel import relay
from gateway.routing import Match
from gateway.runtime import RouteRuntime, ServiceRuntime, TargetRuntime, UpstreamGroup
from gateway.state.shared import SharedState

log = logging.getLogger("gateway.forward")

TCP_FAILURE, TIMEOUT = -1, -2  # non-HTTP outcomes, as the keeper's passive checks read them
# nginx's proxy_next_upstream: a request already sent goes to the next server unless it is one of these
NOT_RESENT = frozenset({b"POST", b"LOCK", b"PATCH"})
# a body in hand up to this goes in the request head's write; a larger one after it, never copied onto it
JOIN_LIMIT = MEMORY_LIMIT
_TRY_PHASES = (Phase.UPSTREAM_WRITE, Phase.UPSTREAM_READ)
_NO_TARGETS: frozenset[int] = frozenset()
# a response's Content-Type -> whether its body is an event stream, worked out once per value
_EVENT_STREAM: Derived[bytes, bool] = Derived(lambda value: value[:17].lower() == b"text/event-stream", 256)
_WAITING_ON_UPSTREAM = (Phase.UPSTREAM_READ, Phase.UPSTREAM_BODY)  # _relay's reads of a body, read_timeout apart
# nginx's proxy_hide_header defaults but Date and Server, which Kong passes (nginx_kong.lua): never to the client
# (X-Accel-Limit-Rate, hidden, is acted on: _limit_rate)
_HIDDEN_OUT = frozenset({b"x-pad", b"x-accel-expires", b"x-accel-redirect", b"x-accel-limit-rate",
                         b"x-accel-buffering", b"x-accel-charset"})
_SPECIAL_OUT = HOP_BY_HOP_RESPONSE | _HIDDEN_OUT | ASSIGNED_BY_KONG | {b"x-request-id", b"mcp-session-id",
                                                                       b"content-length", b"content-type", b"via"}


class Attempt:
    """One try of one target, with what its end must be reported to (captured at the start, so a target list
    replaced by discovery meanwhile cannot misdirect the report), and what the log phase reads of it: when it
    started, when its response head came (0.0: none), when it ended and how (`code`, as `_finished` says).
    `peer`, set only when the try looked its target's name up (or had an address of its own): the pool key of the
    address it went to, (address, port, ...), Kong's balancer_data ip and port; without it, the target's own."""

    __slots__ = ("group", "balancer", "index", "key", "target", "probe", "started", "head_at", "ended", "code",
                 "uri", "last", "peer")
    peer: tuple[Any, ...]  # (unset on the usual try, to an address: no work per request)

    def __init__(self, group: UpstreamGroup, index: int, uri: bytes = b"") -> None:
        self.group = group
        self.balancer = group.balancer
        self.index = index
        self.key = group.keys[index]
        self.target = group.targets[index]
        self.probe = False
        self.started = 0.0
        self.head_at = 0.0
        self.ended = 0.0
        self.code = 0
        self.uri = uri  # the request target sent upstream
        self.last = False  # no try follows this one if it fails


class Forwarder:
    """The upstream half of the pipeline for one worker: a pool and the settings that shape forwarding."""

    def __init__(self, pool: Pool, sse_keepalive: float = 15.0,
                 shared: SharedState | None = None) -> None:
        self.pool = pool
        self.shared = shared
        self.sse_keepalive = sse_keepalive
        self.active: dict[str, int] = {}  # requests in progress per target key ("upstream|target"), for metrics
        self.keepalives = StreamKeepAlives(sse_keepalive)  # its run_forever is one of the worker's tasks
        self.streams = StreamWatch()  # and so is this one's
        self.clock = run_clock()

    async def forward(self, ex: Exchange, route: RouteRuntime, match: Match[RouteRuntime],
                      mcp: McpRequest | None = None) -> None:
        req = ex.request
        svc: ServiceRuntime = route.service  # type: ignore[assignment]  # a route without one ends at its 503 step
        group = svc.group
        affinity = route.affinity
        headers, client_host, request_id, session_id, framing = upstream_request_headers(ex, affinity is not None,
                                                                                         match.prefix)
        upgrade = framing == UPGRADE  # a WebSocket handshake, say: no body; a 101 makes a tunnel (_tunnel)
        if upgrade:
            framing = None  # type: ignore[assignment]  # the codec reads the headers, and so expects the 101
            session_id = None  # a tunnel is not an MCP transport: its session id is neither passed on nor pinned
        pinned = address = pinned_target = None
        if session_id is not None:  # only with affinity: a session the gateway sealed goes to its target
            opened = affinity.open(session_id, caller_identity(ex))  # type: ignore[union-attr]
            if opened is None:
                await session_not_found(ex)
                return
            pinned, address, upstream_sid = opened
            pinned_target = group.targets[pinned]  # (its position may change while the body is read: discovery)
            headers.append((b"mcp-session-id", upstream_sid))
        target_path = svc.upstream_target(match.path, match.query)
        if mcp is None:
            body, body_done = ex.take_buffered_body()
        else:  # MCP: body bytes the step may have read, its Origin policy
            body, body_done = mcp.take_body(ex)
            headers = mcp.upstream_headers(headers)
        # Kong keeps the "?" of the client's empty query (`/x?` goes as `/x?`)
        if ex.state is None:
            if not match.query and req.target[-1:] == b"?":
                target_path += b"?"
        else:
            if not match.query and ex.request_uri()[-1:] == b"?":
                target_path += b"?"
            if BODY_SET in ex.state:  # a plugin set the body: framed by what is sent, whatever the headers say
                headers, body_done = framed_by_length(headers, len(body)), True  # (a body set is whole)
                if framing is not None:  # (an upgrade's: the codec reads the headers)
                    framing = LENGTH
        spooled: SpooledBody | None = None
        if not body_done and (spooled := held_whole(ex, body)) is not None:  # a policy read it whole in access
            if framing == CHUNKED:
                headers, framing = with_length(headers, spooled.size), LENGTH
            body, body_done = spooled, True  # type: ignore[assignment]  # (as below)
        elif not body_done and route.request_buffering:  # Kong's default: the whole body before any upstream
            whole = await read_whole(ex, body)
            size = len(whole) if type(whole) is bytes else whole.size  # type: ignore[union-attr]
            if framing == CHUNKED:
                headers, framing = with_length(headers, size), LENGTH
            if type(whole) is not bytes:
                spooled = whole  # type: ignore[assignment]
            body, body_done = whole, True  # type: ignore[assignment]  # _exchange sends a SpooledBody from its file
        elif framing == CHUNKED and body_done:  # a chunked body that came whole with its head: it goes with its
            headers, framing = with_length(headers, len(body)), LENGTH  # length too, as nginx sends it (buffered)
        # nginx's proxy_ssl_name $upstream_host: with preserve_host, an https upstream gets the client's Host as SNI
        sni = _sni(client_host) if svc.tls is not None and route.preserve_host and client_host else None
        try:
            # nginx resends a request already sent unless POST, LOCK or PATCH, or its body was not buffered (a
            # route's request_buffering: false) and did not come whole with its head: that body may not be read
            # twice (one read whole with the head, or by a policy in access, is buffered for nginx too:
            # ngx_http_read_client_request_body)
            replayable = body_done and req.method not in NOT_RESENT
            hash_key = balancer_key(group, ex, match) if pinned is None and group.hashing else None
            # Each try picks from the targets as they are then, as Kong asks its balancer again for every try:
            # group.unusable (drained, circuit open or unhealthy, kept current by gateway.state), with the names
            # this request found without an address, and, for a balancer that skips them, the targets that failed
            # it (sets made only once there is one: the first try, the usual last, makes none)
            nameless = failed = _NO_TARGETS
            tried_in: list[TargetRuntime] = group.targets  # the list the positions in those two sets are of
            error: UpstreamError | None = None
            if pinned_target is not None and (pinned := _position(group, pinned, pinned_target)) is None:
                log.info("MCP session target %s left the upstream while its request was read: session not found",
                         pinned_target.name)
                await session_not_found(ex)
                return
            if pinned is not None and target_down(group, pinned, self.shared):
                await session_not_found(ex)  # the client had better start a new session elsewhere
                return
            host_at = len(headers)  # the target's Host (and Origin) go last, replaced on a retry
            tries = svc.retries + 1 if pinned is None else 1  # a pinned session never moves
            stale: TargetRuntime | None = None  # its pooled connection was found closed: tried again, on another one
            while tries or stale is not None:
                if stale is None:
                    if pinned is None:
                        skip = group.unusable
                        if nameless or failed:
                            if group.targets is not tried_in:  # discovery replaced the list: positions mean others
                                nameless = failed = _NO_TARGETS
                            skip = skip | nameless | failed
                        index = group.balancer.pick(hash_key, skip)
                        if index is None:
                            if failed:  # every target failed this request: Kong's least-connections starts over,
                                index = group.balancer.start_over(hash_key, group.unusable | nameless)  # its
                                failed = _NO_TARGETS  # latency ends (but for a sole target)
                            if index is None:
                                break  # Kong's balancer.execute: "failure to get a peer", 503
                    else:
                        index = pinned
                    tries -= 1
                else:  # nginx's u->peer.cached: that failure cost no try
                    found, stale = _position(group, index, stale), None
                    if found is None:  # (the target left the upstream meanwhile)
                        if pinned is None:
                            continue
                        break
                    index = found
                targets = group.targets
                target = targets[index]
                if ex.state is not None:  # for the MCP audit log: where the call went
                    ex.state["upstream"] = target.name
                host = client_host if route.preserve_host and client_host else \
                    target.host_header if svc.tls is None else target.host_header_tls
                del headers[host_at:]
                headers.append((b"host", host))
                if mcp is not None and mcp.rewrite_origin:
                    headers.append((b"origin", b"http://" + target.host_header))
                attempt = Attempt(group, index, target_path)
                attempt.last = not tries
                if ex.tries is None:
                    ex.tries = [attempt]
                else:
                    ex.tries.append(attempt)
                try:
                    uc, response = await self._exchange(ex, svc, target, attempt, req.method, target_path,
                                                        headers, framing, body, body_done, replayable, address, sni)
                except UpstreamError as e:
                    if type(e) is LocalError:  # no socket, or no SNI: nginx's 500 at once, no next upstream
                        error = e
                        break
                    if tried_in is not targets:  # discovery replaced the list since the last failure
                        nameless = failed = _NO_TARGETS
                        tried_in = targets
                    if group.balancer.retry_skips_tried:  # Kong's least-connections and latency; its round-robin
                        failed = failed | {index}  # and consistent-hashing pick as for a first try (the wheel's
                        # next, the key's own point again)
                    if type(e) is NameResolutionFailed:  # a name without an address: no retry of it
                        if pinned is None and not group.direct:  # an upstream's target: Kong's balancer gives it no
                            ex.tries.pop()  # type: ignore[union-attr]  # weight and never picks it: not a try,
                            tries += 1  # and skipped from now on (none left: Kong's 503 "failure to get a peer")
                            nameless = nameless | {index}
                            continue
                        if len(ex.tries) == 1:  # type: ignore[arg-type]  # the first look-up, in Kong's access
                            ex.tries = None  # phase, before any try: Kong's own answer (below)
                        error = e
                        break
                    error = e
                    if (e.sent and not replayable) or type(e) is BadResponse:
                        break  # (nginx's default proxy_next_upstream has no invalid_header)
                    if isinstance(e, UpstreamClosed) and e.reused:
                        stale = target  # it closed while idle, as the request crossed it: the target said nothing
                    continue
                if upgrade and response.status == 101:
                    await self._tunnel(ex, svc, uc, response, attempt, request_id)
                    return
                await self._relay(ex, svc, uc, response, attempt, request_id, affinity,
                                  route.name if session_id is None else None, mcp.edit if mcp is not None else None,
                                  upgrade)
                return
            if pinned_target is not None and error is not None and type(error) is not LocalError and (
                    not error.sent or await self._gone(error, svc, pinned_target, address)):
                log.error("MCP session target %s unreachable (%s): session not found%s", pinned_target.name, error,
                          ErrorContext(ex))
                await session_not_found(ex)
            elif error is None:
                log.info("no available target in upstream %r: 503", group.name)
                if hash_key is not None:  # Kong's balancer failed before proxying: no cookie of hash_on cookie
                    drop_new_cookie(group, ex)
                await ex.respond_error(503, NO_PEER)
            elif index is None:  # none left for a retry: Kong.balancer's ngx.exit(503), through Kong's error handler
                log.error("%s; no target left to retry in upstream %r: 503%s", error, group.name, ErrorContext(ex))
                last = ex.tries[-1]  # type: ignore[index]
                if self.shared is not None and last.group.passive:  # Kong's log phase: the last try's target, by
                    # ngx.status ($upstream_status ends on the failed pick)
                    self.shared.passive(last.key, 503, 503 in last.group.passive_failures)
                await ex.respond_error_page(503)
            else:
                log.error("%s: %d%s", error, error.status, ErrorContext(ex))
                if isinstance(error, NameResolutionFailed) and not ex.tries:
                    # The first look-up is Kong's access phase (handler.lua balancer_execute): kong.response.error,
                    # the gateway's own answer, nothing proxied (no try, no cookie of hash_on cookie)
                    ex.tries = None
                    if hash_key is not None:
                        drop_new_cookie(group, ex)
                    await ex.respond_error(error.status, error.kong_message)
                else:  # nginx's own 502 / 504 (a retry's look-up: Kong's ngx.exit), through Kong's error handler
                    await ex.respond_error_page(error.status)
        finally:
            if spooled is not None:
                spooled.close()

    async def _exchange(self, ex: Exchange, svc: ServiceRuntime, target: TargetRuntime, attempt: Attempt,
                        method: bytes, path: bytes, headers: Headers, framing: int | None, body: bytes | SpooledBody,
                        body_done: bool, replayable: bool, address: str | None = None,
                        sni: str | None = None) -> tuple[UpstreamConn, Response]:
        """Send the request and read the response head; on failure the connection is closed, never pooled. `body`:
        what is in hand (all of it when `body_done`; the rest then comes from the client: one over JOIN_LIMIT is
        written after the head, not copied onto it), or a whole spooled one, sent in pieces.
        `replayable`: a timeout may end this try and the request go to the next target. `sni`: the TLS name, when
        not the target's (preserve_host's Host); its connections are pooled apart.
        `address`: the one of a named target to connect to (an MCP session's), not the name's next. Otherwise a
        name is looked up for every try, as Kong's balancer does (toip: from the DNS cache, its records in turn),
        and a connection to the address found is taken from the pool, where Kong keys it by ip and port."""
        # A body in its file, or one too large to copy onto the head, is sent after it, in pieces, from its start (a
        # try after a failed one starts over): rewound before anything is counted or connected, should that fail
        spooled: SpooledBody | BodyInHand | None = None
        if type(body) is not bytes or len(body) > JOIN_LIMIT:
            spooled = BodyInHand(body) if type(body) is bytes else body  # type: ignore[assignment]
            spooled.rewind()  # type: ignore[union-attr]
        pool = self.pool
        now = attempt.started = self.clock()
        active = self.active
        active[attempt.key] = active.get(attempt.key, 0) + 1  # until _finished
        if attempt.balancer.follows_load:  # counted as picked, as Kong's getPeer counts it: _finished gives it back
            attempt.balancer.started(attempt.index)
        # Spend a half-open probe permit before the first await: otherwise another request of this worker could
        # pick the target meanwhile (it is not skipped while we hold the permit) and reach it as a non-probe.
        if attempt.group.breakers:
            attempt.probe = self.shared is not None and self.shared.begin(attempt.group, attempt.index)
        tls = svc.tls
        key = target.key if tls is None and address is None and not target.named else \
            await self._located_key(attempt, target, tls, address, sni)
        uc = pool.take(key, now)
        if uc is None:
            ex.timer.clear(Phase.UPSTREAM_CONNECT)  # the sweeper watches the client meanwhile (check_clients)
            try:
                uc = await pool.connect(key, svc.connect_timeout, tls, sni or target.server_name)
            except UpstreamError as e:
                ex.timer.clear()
                self._finished(attempt, False, TIMEOUT if isinstance(e, ConnectTimeout) else
                               0 if isinstance(e, (NameResolutionFailed, LocalError)) else TCP_FAILURE)
                raise
            except BaseException:  # cancelled: the client left (its 499), or the worker stops
                self._finished(attempt, False, 0)
                raise
            now = self.clock()
        uc.carrying = attempt  # (a circuit's sweep cuts the connections carrying its upstream's requests only)
        codec = uc.codec
        data = codec.request_head(method, path, headers, framing)
        if spooled is None:  # the common small request: one write
            if body:
                data += codec.body(body)  # type: ignore[arg-type]  # (bytes, when not spooled)
            if body_done:
                data += codec.end()
        try:
            # Timeouts fire through the connection's coarse timer (gateway.http.timers): the connection loop
            # answers 504, and the cleanup below runs as the cancellation passes through.
            timer = ex.timer
            detail = (target.name, svc.write_timeout)
            timer.set_until(now + svc.write_timeout, Phase.UPSTREAM_WRITE, detail)
            if replayable:  # a timeout ends this try, not the client's connection (closed as the pool's: uc)
                timer.upstream = uc
            uc.conn.heard = uc.heard  # a write that has to wait hears an answer that comes first (nginx reads as it
            # writes: ngx_http_upstream_process_header is the read handler from the connect on)
            reading = (detail[0], svc.read_timeout)
            try:
                await uc.conn.sendall(data)
                if spooled is not None:
                    while piece := spooled.read():
                        timer.set(svc.write_timeout, Phase.UPSTREAM_WRITE, detail)
                        await uc.conn.sendall(codec.body(piece))
                    if body_done:
                        await uc.conn.sendall(codec.end())
                if not body_done:  # (the rest, after what was in hand)
                    while (chunk := await ex.receive_body(uc)) is not None:  # (uc heard meanwhile)
                        timer.set(svc.write_timeout, Phase.UPSTREAM_WRITE, detail)
                        await uc.conn.sendall(codec.body(chunk))
                    await uc.conn.sendall(codec.end())
                # read_timeout bounds the whole head (interim 1xx ones too) from the request's end: nginx arms it
                # once the request is sent (ngx_http_upstream_send_request), never again while the head comes in
                # pieces (ngx_http_upstream_process_header's re-arm is `#if 0`). No event is queued yet: what the
                # upstream said while the request went out ended its writes once it was one (Answered)
                timer.set_until(self.clock() + svc.read_timeout, Phase.UPSTREAM_READ, reading)
                codec.receive_data(await uc.conn.recv_after_wait())
                ev = codec.next_event()
            except Answered as answered:
                ev = answered.event
                _answered_early(ex, target)
            uc.conn.heard = None  # (a TLS record's answer written while the response is read must not hear it)
            while ev is NEED_DATA:  # a head in pieces: the deadline set above stands
                codec.receive_data(await uc.conn.recv())
                ev = codec.next_event()
            if ev is CLOSED:
                raise UpstreamClosed(f"upstream {target.name} closed the connection without a response", sent=True,
                                     reused=uc.reused)
            timer.upstream = None
            timer.clear()
            assert isinstance(ev, Response)
            attempt.head_at = self.clock()
            return uc, ev
        except (ProtocolError, BrokenPipeError, UpstreamClosed) as e:
            timer = ex.timer
            if timer.upstream is None and uc.conn.closed and timer.phase in _TRY_PHASES and timer.at <= self.clock():
                raise self._try_timed_out(timer, uc, attempt) from None  # the timer closed it (see ConnTimer)
            timer.upstream = None
            timer.clear()
            uc.close()
            attempt.last |= not replayable  # (sent: not tried again, so reported by its 502 as Kong's log phase)
            if isinstance(e, UpstreamClosed):  # no head: nginx's "prematurely closed", a failed try
                self._finished(attempt, False, _closed(uc, replayable))
                raise
            if isinstance(e, BrokenPipeError):
                self._finished(attempt, False, _closed(uc, replayable))
                raise UpstreamClosed(f"upstream {target.name} closed the connection while the request was sent",
                                     sent=True, reused=uc.reused) from None
            if e.cut and e.status >= 500 and not ex.response_started:  # nginx's "prematurely closed": an error,
                self._finished(attempt, False, _closed(uc, replayable))  # also after part of a head
                raise UpstreamClosed(f"upstream {target.name}: {e}", sent=True, reused=uc.reused) from None
            self._finished(attempt, False, _blame(uc, 502 if e.status >= 500 else 0))
            if ex.response_started or e.status < 500:
                raise  # the client's own request broke (e.g. its body): not the upstream's fault
            raise BadResponse(f"upstream {target.name}: {e}", sent=True) from None
        except BaseException:
            uc.close()
            timer = ex.timer
            timer.upstream = None
            timed_out = timer.phase in _TRY_PHASES and timer.at <= trio.current_time() and not timer.gone
            self._finished(attempt, False, TIMEOUT if timed_out else 0)
            raise

    def _try_timed_out(self, timer: ConnTimer, uc: UpstreamConn, attempt: Attempt) -> UpstreamTimeout:
        """The timer closed a retryable try's connection (write_timeout or read_timeout): a timeout for passive
        checks, and an error the retry loop moves on from, as nginx's proxy_next_upstream timeout."""
        write = timer.phase == Phase.UPSTREAM_WRITE
        target, seconds = timer.detail or ("?", 0.0)
        timer.clear()
        uc.close()
        self._finished(attempt, False, TIMEOUT)
        TIMEOUTS.labels("upstream_write" if write else "upstream_read").inc()
        what, setting = ("accept the request", "write_timeout") if write else ("send a response", "read_timeout")
        return UpstreamTimeout(f"upstream {target} did not {what} within {seconds:g}s ({setting})", sent=True)

    async def _tunnel(self, ex: Exchange, svc: ServiceRuntime, uc: UpstreamConn, response: Response,
                      attempt: Attempt, request_id: bytes) -> None:
        """The upstream switched protocols: its 101 to the client (response headers handled as any answer's to an
        upgrade, its Upgrade kept when that is `websocket`, and nginx's own `Connection: upgrade` line, in its text:
        ngx_http_header_filter_module writes it so on every 101), then bytes relayed
        both ways (gateway.pipeline.tunnel) until either side closes or a timeout of the service ends it. Both
        connections are closed after it, neither reused; the target's request lasts as long as the tunnel (the
        balancer counts it as active meanwhile)."""
        timers = ex.timer.timers
        switched = False
        try:
            headers = [hv for hv in _client_headers(response.headers, request_id, None, attempt.target, uc,
                                                    ex, upgrade=True)[0] if hv[0] != b"content-length"]
            if type(ex.conn) is _PacedConn:  # (a 101 with X-Accel-Limit-Rate: nginx relays a tunnel unpaced)
                ex.conn = ex.conn.conn
            headers.append((b"Connection", b"upgrade"))  # nginx's own line, in its text
            to_upstream = await ex.switch_protocols(headers, response.reason)
            switched = True
            if to_upstream is None:
                return  # a header filter answered in the 101's place
            if timers is not None:
                timers.park(ex.timer)  # as an SSE stream: busy for as long as it lasts, no drain shortens it
            why, down, up = await relay(ex.conn, uc.conn, to_upstream, uc.codec.take_upgraded(), svc.read_timeout,
                                        svc.write_timeout, ex)
            log.debug("tunnel %s <-> %s ended, %s (%d bytes to the client, %d to the upstream)", ex.conn.peer,
                      uc.conn.peer, why, down, up)
        finally:
            if timers is not None:
                timers.unpark(ex.timer)
            self._finished(attempt, switched, 101 if switched else 0)
            uc.close()

    async def _relay(self, ex: Exchange, svc: ServiceRuntime, uc: UpstreamConn, response: Response, attempt: Attempt,
                     request_id: bytes, affinity: SessionAffinity | None, new_session: str | None = None,
                     edit: ResponseEdit | None = None, upgrade: bool = False) -> None:
        """Stream the response to the client; pool the connection only after a clean, complete exchange.
        `new_session`: the route's name when the request had no session id (an id in the response opens one).
        `upgrade`: the request asked for a WebSocket upgrade, and this is the answer declining it (a 426, say).

        With `edit` (ai-mcp-proxy: tools/list results to filter, a batch's errors to add) a JSON answer is read
        whole (bounded) and edited, an event stream is edited event by event (gateway.mcp.governance)."""
        codec = uc.codec
        ok = False
        failed = 0  # TCP_FAILURE when the upstream broke mid-response
        unread = False  # the rest of the body was not read: a header filter answered in its place (phases.Exit)
        try:
            headers, framing, sse = _client_headers(response.headers, request_id, affinity, attempt.target, uc,
                                                    ex, new_session, upgrade)
            if response.status == 204:  # no body, nothing to filter; its head goes out as it came (nginx's header
                sse = False  # filter empties only a 204 without an upstream's status line), unless a batch's
                if edit is not None and not edit.errors:  # refused calls are owed their errors (_edited_body)
                    edit = None
            try:
                first, done = codec.take_body()  # what came with the head: one write when the answer is small
            except ProtocolError as e:  # (a bad chunk in that read) nothing went out: the upstream's 502
                log.error("upstream %s failed mid-response: %s%s", attempt.target.name, e, ErrorContext(ex))
                failed = TCP_FAILURE
                await ex.respond_error_page(502)
                return
            if edit is not None and (not sse or edit.list_ids is not None and _coded(headers)):  # (a compressed
                # event stream cannot be edited event by event: read whole, it is refused as a JSON answer would be)
                try:
                    status, headers, first = await _edited_body(ex, uc, response.status, headers, first, done,
                                                                 edit, (attempt.target.name, svc.read_timeout))
                except (ProtocolError, UpstreamError) as e:
                    log.error("upstream %s failed mid-response: %s%s", attempt.target.name, e, ErrorContext(ex))
                    failed = TCP_FAILURE
                    await ex.respond_error(502, f"upstream {attempt.target.name} broke off its answer")
                    return
                except AnswerTooLarge as e:
                    failed = TCP_FAILURE  # the rest of its body is unread: the connection is closed, not pooled
                    await ex.respond(502, e.body)
                    return
                await ex.send_head(status, headers, first, end=True,
                                   reason=response.reason if status == response.status else b"")
                ok = True
                return
            if not done and edit is None and (phases := ex.phases) is not None:  # a body filter's, whole?
                status, filtered, exited = phases.filter_head(ex, response.status, headers)  # (as Kong, once the
                if not exited and phases.buffers(ex, status, filtered):  # header filters ran: send_head's filter
                    try:  # skips them)
                        first, done = await read_whole_body(ex, codec, uc.conn, first, svc.read_timeout)
                    except (ProtocolError, UpstreamError) as e:  # nothing went out: the gateway's 502
                        log.error("upstream %s failed mid-response: %s%s", attempt.target.name, e, ErrorContext(ex))
                        failed = TCP_FAILURE
                        await ex.respond_error_page(502)
                        return
                    if not done and phases.refuses_unfiltered(ex, status, filtered):  # (too large to change)
                        unread = ok = True  # the upstream answered: its connection is closed, the rest unread
                        await ex.respond_error_page(502)
                        return
            splitter = None
            if edit is not None:  # an event stream: the gateway's errors first, then whole events, edited
                headers = [hv for hv in headers if hv[0] != b"content-length"]
                splitter = EventSplitter()
                try:
                    events = splitter.feed(first)
                except EventTooLarge:
                    events = []  # only with a 16 MiB event read at once; the stream fails at the next read
                first = edit.first_events() + b"".join(edit.event(e) for e in events)
                if done and (rest := splitter.pending):  # an event the stream ended without its blank line:
                    first += edit.event(rest)  # edited as any other, never passed on as it came
            await ex.send_head(response.status, headers, first, end=done, reason=response.reason,
                               framing=framing if splitter is None else None)
            unread = not done and ex.response_done
            if not done and not unread:
                try:
                    if sse:
                        await self._relay_events(ex, uc, first, (attempt.target.name, svc.read_timeout),
                                                 _coded(headers), edit, splitter)
                    else:
                        await _stream_body(ex, uc, attempt.target.name, svc.read_timeout)
                except (ProtocolError, UpstreamError) as e:
                    # The head is out: all we can do is cut the client off so it sees an incomplete response.
                    log.error("upstream %s failed mid-response: %s%s", attempt.target.name, e, ErrorContext(ex))
                    failed = TCP_FAILURE
                    return
            ok = True
        finally:
            self._finished(attempt, ok and response.status < 500,
                           response.status if ok else self._cut(ex, uc, failed, attempt), response.status)
            if ok and codec.keep_alive and not unread:
                self.pool.put(uc, attempt.ended)
            else:
                uc.close()

    def _cut(self, ex: Exchange, uc: UpstreamConn, failed: int, attempt: Attempt) -> int:
        """The outcome of a relay that did not complete, `_blame`'s of `failed`. One read_timeout ended (the upstream
        fell silent mid-response: nginx's "upstream timed out") is a failure of the target for its breaker, told
        here, as a mid-response break is; passive health checks keep their accounting (0, as for any relay
        cancelled), and so does the log."""
        timer = ex.timer
        if not failed and attempt.group.breakers and self.shared is not None and not uc.swept and \
                timer.phase in _WAITING_ON_UPSTREAM and timer.at <= self.clock() and not timer.gone:
            self.shared.outcome(attempt.key, False, attempt.probe)
            attempt.probe = False  # (its outcome is sent: _finished must not give its permit back as well)
        return _blame(uc, failed)

    async def _located_key(self, attempt: Attempt, target: TargetRuntime, tls: ClientTls | None,
                           address: str | None, sni: str | None) -> tuple[Any, ...]:
        """The pool key of this try: for a named target without an `address` of its own, that of the name's address
        this try goes to (`locate`); a name without one ends the try (its NameResolutionFailed)."""
        port = 0
        if target.named and address is None:
            try:
                address, port = await locate(target.host, target.port)
            except BaseException:  # no address (NameResolutionFailed), or cancelled: the try ends here
                self._finished(attempt, False, 0)
                raise
        key = attempt.peer = _pool_key(target, tls, address, sni, port)
        return key

    async def _gone(self, error: UpstreamError, svc: ServiceRuntime, target: TargetRuntime,
                    address: str | None = None) -> bool:
        """After a pooled connection closed on us: is the target itself gone (a fresh connect fails)?

        A server that died takes its idle connections with it; the session's client should hear "session not found"
        and start a new one elsewhere, not a 502. The request is never sent again (it may have been processed)."""
        if not (isinstance(error, UpstreamClosed) and error.reused):
            return False
        tls = svc.tls
        try:
            uc = await self.pool.connect(_pool_key(target, tls, address), svc.connect_timeout, tls, target.server_name)
        except LocalError:
            return False  # (the gateway's own failure: nothing known of the target)
        except UpstreamError:
            return True
        uc.close()
        return False

    def sweep(self, group: UpstreamGroup, index: int) -> None:
        """The circuit of a target whose breaker has sweep_force_shutdown opened: close its idle connections, and
        the busy ones carrying requests the breaker covers (a request in flight ends as if the target had closed
        it: 502, or a cut response). Another upstream's requests to the same address run on, as do those of the
        routes the plugin does not run for (their Attempt's group is an _Unbroken: no breakers)."""
        target = group.targets[index]
        key = group.keys[index]

        def covered(attempt: object) -> bool:
            return isinstance(attempt, Attempt) and attempt.key == key and attempt.group.breakers

        closed = self.pool.close_target(target.host, target.port, covered)
        log.warning("circuit open for %s: closed its %d connection(s) (sweep_force_shutdown)", key, closed)

    def _finished(self, attempt: Attempt, ok: bool, code: int, status: int = 0) -> None:
        """A request to a target ended: tell the balancer, the breaker and passive health checks that cover it.

        `code` is the HTTP status, TCP_FAILURE or TIMEOUT, or 0 when the request ended for another reason
        (the client went away) and says nothing about the target; `status`, that of a response head that came.
        Passive checks hear a TCP failure as Kong reports it: a try that is retried as one (Kong.balancer's
        report_tcp_failure), the request's last try by its $upstream_status in the log phase (the head's status,
        else nginx's 502: an HTTP status, counted only if listed in http_statuses)."""
        now = attempt.ended = self.clock()
        attempt.code = code
        active = self.active
        left = active[attempt.key] - 1
        if left:
            active[attempt.key] = left
        else:
            del active[attempt.key]
        balancer = attempt.balancer
        if balancer.follows_load:
            balancer.finished(attempt.index, now - attempt.started, ok)
        shared = self.shared
        if shared is not None and code:
            group = attempt.group
            if group.breakers:
                shared.outcome(attempt.key, ok, attempt.probe)
            if group.passive:
                reported = (status or 502) if code == TCP_FAILURE and (attempt.last or status) else code
                shared.passive(attempt.key, reported, reported in group.passive_failures)
        elif attempt.probe:
            shared.probe_given_up(attempt.key)  # type: ignore[union-attr]  # (a probe implies shared state)

    async def _relay_events(self, ex: Exchange, uc: UpstreamConn, first: bytes, reading: tuple[str, float],
                            coded: bool, edit: ResponseEdit | None = None,
                            splitter: EventSplitter | None = None) -> None:
        """Relay an SSE stream event by event; idle gaps get a comment so idle timeouts elsewhere keep it open; a
        client that hangs up ends the stream upstream at once (MCP: closing the stream cancels the request).

        The service's read_timeout (`reading`: the target's name and the seconds) bounds every wait for the
        upstream, as nginx's proxy_read_timeout does (ngx_http_upstream_process_non_buffered_request): a silence
        that long cuts the response, through the connection's coarse timer, as in `_stream_body`. Keep-alive
        comments to the client do not hold that deadline off. The one wait of an idle stream is parked in the
        worker's stream watch (gateway.pipeline.streamwatch), resumed when its upstream speaks, when its client
        left, or when the keep-alive wheel (gateway.pipeline.keepalive) owes it the rest of a comment. The comment
        goes only between events, so it can never split one, and never into a `coded` body (Content-Encoding),
        which goes on byte for byte. With `edit` (and its `splitter`), whole events only are passed on, each
        edited, so a piece of one is held until the rest arrives.

        Raises BrokenPipeError when the client went away, so the upstream connection is closed, never pooled."""
        codec = uc.codec
        conn = uc.conn
        wheel = self.keepalives
        stream = wheel.open(ex, not coded)
        tail = first[-4:]  # the last bytes relayed: the stream is between events when they end with a blank line
        stream.at_boundary = not first or splitter is not None or ends_event(tail)
        watch = self.streams
        watch.watch(ex.conn, stream)
        timer = ex.timer
        read_timeout = reading[1]
        timers = timer.timers
        if timers is not None:
            timers.park(timer)
        try:
            timer.set(read_timeout, Phase.UPSTREAM_BODY, reading)
            while True:
                if stream.gone:
                    raise BrokenPipeError("the client closed the event stream")
                data = conn.recv_ready()
                if data is None:
                    await watch.wait_upstream(stream, conn, timer, read_timeout)
                    if stream.owed and not stream.gone:  # a comment the wheel could not write at once
                        owed, stream.owed = stream.owed, b""
                        await ex.send_framed(owed)
                    continue
                timer.set(read_timeout, Phase.UPSTREAM_BODY, reading)
                stream.last = wheel.now
                codec.receive_data(data)
                while (ev := codec.next_event()) is not NEED_DATA:
                    if ev is END:  # (an event the stream ended without its blank line: edited as any other)
                        timer.clear()
                        rest = splitter.pending if splitter is not None else b""
                        await ex.end(edit.event(rest) if rest else b"")  # type: ignore[union-attr]
                        return
                    await conn.pace()  # (a read of tiny chunks is many events: the worker's other clients get a turn)
                    if splitter is not None:
                        try:
                            events = splitter.feed(ev)  # type: ignore[arg-type]
                        except EventTooLarge as e:
                            raise BadResponse(f"upstream {reading[0]}: {e}") from None
                        if events:
                            await ex.send_body(b"".join(edit.event(e) for e in events))  # type: ignore[union-attr]
                        continue
                    chunk: bytes = ev  # type: ignore[assignment]  # (body bytes: the other events are handled)
                    await ex.send_body(chunk)
                    tail = chunk[-4:] if len(chunk) >= 4 else (tail + chunk)[-4:]
                    stream.at_boundary = ends_event(tail)
        finally:
            if timer.phase == Phase.UPSTREAM_BODY and timer.at <= self.clock() and not timer.gone:
                log.error("upstream %s sent nothing of its event stream within %gs (read_timeout): the response is "
                          "cut, as nginx's upstream timed out%s", *reading, ErrorContext(ex))
            if timers is not None:
                timers.unpark(timer)
            watch.unwatch(stream)
            wheel.close(stream)


def _limit_rate(ex: Exchange, headers: Headers) -> None:
    """An upstream's X-Accel-Limit-Rate as nginx takes it (ngx_http_upstream_process_limit_rate: the first line's
    value by ngx_atoi, r->limit_rate; one that is not a number is ignored, as is a later line; Kong's template sets
    no proxy_ignore_headers): the answer's writes to the client paced at that many bytes a second (_PacedConn),
    unless the relay is nginx's non-buffered one, which sets r->limit_rate to 0 (ngx_http_upstream_send_response):
    the answer's last X-Accel-Buffering says `no` (ngx_http_upstream_process_buffering), or the route has
    `response_buffering: false` (Kong's @unbuffered_response and @unbuffered locations: proxy_buffering off). A 101
    is not paced (_tunnel relays bytes as they are)."""
    if type(ex.conn) is _PacedConn or not ex.route.response_buffering:  # (paced already: a second line)
        return
    rate = None
    buffering = True
    for name, value in headers:
        if name == b"x-accel-limit-rate":
            if rate is None:
                rate = int(value) if value.isdigit() and length_in_range(value) else 0  # (ngx_atoi's NGX_ERROR: 0)
        elif name == b"x-accel-buffering":
            lowered = value.lower()
            buffering = False if lowered == b"no" else True if lowered == b"yes" else buffering
    if rate and buffering:
        ex.conn = _PacedConn(ex.conn, ex, rate)  # type: ignore[assignment]  # (a Conn but for its sendall)


def _override_charset(ex: Exchange, headers: Headers, out: Headers, line: tuple[bytes, bytes]) -> None:
    """An upstream's X-Accel-Charset as nginx's charset filter takes it with Kong's configuration (the answer's last
    line, `line` once the walk reaches it: ngx_http_upstream_process_charset sets r->headers_out.override_charset
    for each, and Kong sets no proxy_ignore_headers; an empty one overrides nothing). A charset nginx knows, UTF-8
    or kong.conf's nginx_http_charset in any case (KongHeaders.charsets), is the answer's, as it is spelled, whatever
    the charset setting and charset_types say (_overridden_type: the Content-Type rewritten in `headers` and `out`,
    where the walk put it already); one it does not know is "unknown charset ... to override": the charset filter
    declines, and the Content-Type goes as it is, without the configured charset (CHARSET_DECLINED, which
    KongHeaders reads); ngx_http_charset_filter_module.c:329-343, 235-288."""
    kong = ex.settings.kong_headers
    override = line[1]
    if kong is None or not override or [hv for hv in headers if hv[0] == b"x-accel-charset"][-1] is not line:
        return
    new = None
    if override.lower() in kong.charsets:
        ctype = next((value for name, value in headers if name == b"content-type"), None)
        new = None if ctype is None else _overridden_type(ctype, override)
    if new is None:
        if ex.state is None:
            ex.state = {}
        ex.state[CHARSET_DECLINED] = True
        return
    for lines in (headers, out):
        for i, (name, _) in enumerate(lines):
            if name == b"content-type":
                lines[i] = (name, new)
                break


def _overridden_type(ctype: bytes, override: bytes) -> bytes | None:
    """The Content-Type nginx's charset and header filters make of an upstream's `ctype` for a known X-Accel-Charset
    `override`, or None when they leave it. Its charset is read as ngx_http_upstream_copy_content_type reads it
    (ngx_http_upstream.c:5362-5410: the first `charset=` parameter, to the value's end, a quote around it dropped).
    None (or empty): the source charset is off (Kong sets no source_charset), and `; charset=<override>` goes after
    a value without `charset=` (ngx_http_header_filter_module.c:487-493), whatever its type and other parameters.
    One naming the same charset in any case: the value cut before that parameter, then `; charset=<override>`.
    Another: left ("no charset_map"). (A 301's or 302's gets the same here; nginx's none: ngx_http_set_charset.)"""
    pos = ctype.find(b";")
    while pos >= 0:
        start = pos + 1
        while ctype[start:start + 1] == b" ":
            start += 1
        if ctype[start:start + 8].lower() == b"charset=":
            charset = ctype[start + 8:]
            if charset[:1] == b'"':
                charset = charset[1:]
            if charset[-1:] == b'"':
                charset = charset[:-1]
            if charset.lower() != override.lower():
                return None
            return ctype[:pos] + b"; charset=" + override
        pos = ctype.find(b";", start + 1)  # (nginx's loop steps past the byte it stopped at)
    return ctype + b"; charset=" + override


class _PacedConn:
    """The client connection of an answer an upstream limited (X-Accel-Limit-Rate, _limit_rate): its body goes out
    as nginx's write filter lets it (ngx_http_write_filter_module.c, r->limit_rate): at most `rate` bytes a second
    from the request's start, a second's worth to begin with (`rate * (now - start + 1) - sent`), each write followed
    by the pause its size takes at that rate. The response head goes at once and is not counted (nginx counts it: a
    difference of its size over the rate). The pauses hold no phase's deadline: a read_timeout pending is pushed back
    by them, as by a slow client's write. A write that fails leaves in `unsent` what of it did not go, the pieces
    not yet tried included (as Conn.unsent). Any other attribute is the connection's."""

    __slots__ = ("conn", "_ex", "_rate", "_sent", "_ready", "_head", "unsent")

    def __init__(self, conn: Any, ex: Exchange, rate: int) -> None:
        self.conn = conn  # the connection itself
        self._ex = ex
        self._rate = rate
        self._sent = 0  # body bytes written
        self._ready = 0.0  # when the pause after the last write ends
        self._head = True  # the next write is the response head's (with the first body bytes)
        self.unsent = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    async def sendall(self, data: bytes) -> None:
        head = b""
        if self._head:  # (the server codec's head: it ends at its first blank line)
            self._head = False
            end = data.find(b"\r\n\r\n") + 4
            head, data = (data[:end], data[end:]) if end >= 4 else (data, b"")
        view = memoryview(data)
        rate = self._rate
        left = len(head) + len(view)  # not yet written
        writing = b""  # the write under way
        try:
            while view or head:
                now = trio.current_time()
                room = int(rate * (now - self._ex.started + 1)) - self._sent if now >= self._ready else 0
                if room <= 0 and view:
                    await self._pause(max(self._ready - now, -room / rate))
                    continue
                piece = bytes(view[:room])
                writing = head + piece if head else piece
                await self.conn.sendall(writing)
                left -= len(writing)
                writing = head = b""
                self._sent += len(piece)
                self._ready = trio.current_time() + len(piece) / rate
                view = view[len(piece):]
        except BaseException:
            self.unsent = left - len(writing) + min(self.conn.unsent, len(writing)) if writing else left
            raise

    async def _pause(self, seconds: float) -> None:
        timer = self._ex.timer
        saved = timer.save()
        timer.clear()
        began = trio.current_time()
        await trio.sleep(seconds)
        timer.restore(saved, trio.current_time() - began)


async def _stream_body(ex: Exchange, uc: UpstreamConn, target: str, read_timeout: float) -> None:
    """Relay a response body chunk by chunk; read_timeout applies between two reads, as nginx's does (its end cuts
    the answer, logged as nginx's "upstream timed out"), re-armed as a read returns, before what it read is relayed:
    nginx's read handler arms it from the time of the epoll that reported the bytes, so bytes that came in time are
    never cut while they are relayed. Each chunk counts against the upstream connection's checkpoint budget
    (Conn.pace), as each read does."""
    codec = uc.codec
    conn = uc.conn
    timer = ex.timer
    try:
        timer.set(read_timeout, Phase.UPSTREAM_BODY)
        while True:
            data = await conn.recv()
            timer.set(read_timeout, Phase.UPSTREAM_BODY)
            codec.receive_data(data)
            while (ev := codec.next_event()) is not NEED_DATA:
                if ev is END:
                    timer.clear()
                    await ex.end()
                    return
                await conn.pace()
                await ex.send_body(ev)  # type: ignore[arg-type]
    finally:
        if timer.phase == Phase.UPSTREAM_BODY and timer.at <= trio.current_time() and not timer.gone:
            log.error("upstream %s sent nothing of its response body within %gs (read_timeout): the response is cut, "
                      "as nginx's upstream timed out%s", target, read_timeout, ErrorContext(ex))


MAX_EDITED_BODY = 16 << 20  # a JSON answer the gateway must edit is read whole, up to this size


class AnswerTooLarge(Exception):
    """A JSON answer to edit is larger than MAX_EDITED_BODY: it is refused rather than passed on unfiltered."""

    def __init__(self, rpc_error: bytes) -> None:
        super().__init__("answer too large to edit")
        self.body = rpc_error


async def _edited_body(ex: Exchange, uc: UpstreamConn, status: int, headers: Headers, first: bytes, done: bool,
                       edit: ResponseEdit, detail: tuple[str, float]) -> tuple[int, Headers, bytes]:
    """Read a (non-event-stream) answer whole and edit it: (status, headers with the new length, body). The client
    has seen nothing yet, so an upstream too slow between two reads gets the client a 504 (read_timeout). The body
    is held in one buffer (an answer of tiny chunks weighs its bytes), its chunks paced as _stream_body's."""
    whole = bytearray(first)
    codec = uc.codec
    conn = uc.conn
    timer = ex.timer
    while not done:
        timer.set(detail[1], Phase.UPSTREAM_READ, detail)
        data = await conn.recv()
        timer.clear()
        codec.receive_data(data)
        while (ev := codec.next_event()) is not NEED_DATA:
            if ev is END:
                done = True
                break
            await conn.pace()
            whole += ev  # type: ignore[arg-type]
            if len(whole) > MAX_EDITED_BODY:
                raise AnswerTooLarge(error_response(None, -32603, "the upstream's answer is too large for the "
                                                    f"gateway to filter ({MAX_EDITED_BODY} bytes at most)"))
    body = bytes(whole)
    if edit.errors and (status == 202 or not body and 200 <= status < 300):  # the server accepted the forwarded
        status, body = 200, edit.accepted_body()  # part without an answer (202, 204): the gateway's errors are it
        headers = [hv for hv in headers if hv[0] != b"content-type"] + [(b"content-type", b"application/json")]
    elif edit.list_ids is not None and _coded(headers):  # a compressed tools list (the gateway asked for none):
        body = edit.not_filtered()  # it cannot be read, so it is not passed on
        headers = [hv for hv in headers if hv[0] not in (b"content-type", b"content-encoding")] + [
            (b"content-type", b"application/json")]
    elif edit.list_ids is not None or _is_json(headers):  # a tools list is filtered whatever its Content-Type says
        body = edit.json_body(body)
    headers = [hv for hv in headers if hv[0] != b"content-length"] + [(b"content-length", b"%d" % len(body))]
    return status, headers, body


def _answered_early(ex: Exchange, target: TargetRuntime) -> None:
    """The upstream answered before it took the whole request: that answer is relayed as any other (nginx stops
    writing the request once the head is in: ngx_http_upstream_send_request_handler), never tried again elsewhere,
    and its connection is not reused (Pool.retire). A client body still unread then ends the client's
    connection after the answer, which lingers (ngx_http_finalize_connection: reading_body, keepalive off)."""
    log.info("upstream %s answered before it read the whole request: the rest of it is not sent", target.name)
    if not ex.request_done:
        ex.close_after = True


def _blame(uc: UpstreamConn, code: int) -> int:
    """The outcome to report for a failed exchange: none when the gateway itself closed the connection (a circuit's
    sweep), which says nothing new about the target."""
    return 0 if uc.swept else code


def _closed(uc: UpstreamConn, replayable: bool) -> int:
    """The outcome of a try whose connection the upstream closed or reset before a whole response head: none for a
    pooled one under a request that goes again at no cost (nginx's u->peer.cached, ngx_http_upstream.c:4366-4368),
    else a TCP failure (a request not resent ends with it: its 502, ngx_http_upstream_next's u->state->status)."""
    return 0 if uc.swept or (uc.reused and replayable) else TCP_FAILURE


def _coded(headers: Headers) -> bool:
    """Does the answer carry a content coding (gzip, br, ...) other than identity?"""
    return any(name == b"content-encoding" and value.strip().lower() not in (b"", b"identity")
               for name, value in headers)


def _is_json(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value[:16].lower() == b"application/json"
    return False


def _pool_key(target: TargetRuntime, tls: ClientTls | None, address: str | None = None,
              sni: str | None = None, port: int = 0) -> tuple[Any, ...]:
    """The pool's key for connections to a target, over `tls` or not. Those to an `address` of a named target (at
    `port`, an SRV record's, or else the target's) carry the target as well: the circuit's sweep of the name closes
    them (Pool.close_target). Those over TLS carry the server name they were opened (and verified) with: `sni`, the
    request's, else the target's (its name for an address of a name, discovery's targets): Kong keys an https pool
    by ip, port and that name (kong/init.lua:1393-1403), so two names at one address never share a TLS session."""
    if address is not None:
        key: tuple[Any, ...] = (address, port or target.port, tls, target.key)
        if tls is None:
            return key
    elif tls is None:
        return target.key
    else:
        key = (target.host, target.port, tls, None)
    return key + (sni or target.server_name,)


def _sni(host: bytes) -> str:
    """nginx's proxy_ssl_name of a Host header: the name without its port, in the case sent (ngx_http_upstream_ssl_name
    lowercases nothing). An address stays one: Python's ssl, as nginx, sends no SNI for it (RFC 6066) and checks the
    certificate against it, not against the service's host."""
    name = host.decode("latin-1")
    return name[1:name.find("]")] if name.startswith("[") else name.partition(":")[0]


def _position(group: UpstreamGroup, index: int | None, target: TargetRuntime) -> int | None:
    """Where `target` (at `index` of the list it was picked from) is in the group's target list now: discovery may
    have replaced the list while the request waited; None once it left the upstream."""
    targets = group.targets
    name = target.name
    if index is not None and index < len(targets) and targets[index].name == name:
        return index
    for i, t in enumerate(targets):
        if t.name == name:
            return i
    return None


def _client_headers(headers: Headers, request_id: bytes, affinity: SessionAffinity | None, target: TargetRuntime,
                    uc: UpstreamConn, ex: Exchange, new_session: str | None = None,
                    upgrade: bool = False) -> tuple[Headers, int, bool]:
    """The response headers for the client: hop-by-hop ones dropped (but Trailer when the request's TE asked for
    trailers, as Kong keeps it; the trailers themselves are dropped, as nginx's proxy does; a repeated single-valued
    field's later lines are gone already: codec.first_of_single), those the gateway's `headers` setting replaces
    dropped (Kong assigns its own), the Via noted when plugins filter the headers (Kong's own Via extends the
    upstream's as it came: kong_headers.UPSTREAM_VIA), the request id set, a session id sealed (with the address `uc`
    reached, bound to the caller of `ex`; counted as opened on route `new_session` when the request had none); with
    their framing (LENGTH, or NO_BODY for none: the codec frames the body) and whether the body is an event stream.
    The answer to a WebSocket `upgrade` (a 101, a 426, any status) keeps its Upgrade, last, when that is `websocket`
    in any case: nginx copies it, and Kong's header filter drops it only when it differs from the upstream_upgrade
    Kong asked for (kong/runloop/handler.lua header_filter.before)."""
    out: Headers = []
    named = None
    framing = NO_BODY
    content_type = None
    for hv in headers:
        name = hv[0]
        if name in _SPECIAL_OUT:
            if name == b"content-length":
                framing = LENGTH
            elif name == b"content-type":  # (one: the client codecs keep the first of a field nginx takes once)
                content_type = hv[1]
            elif name == b"mcp-session-id":
                if affinity is not None:
                    hv = (name, affinity.seal(target, hv[1], uc.conn.peer[0] if uc.conn.peer else "",
                                              caller_identity(ex)))
                    if new_session is not None:
                        RECORDER.count(MCP_SESSIONS, (new_session,))
            else:
                if name == b"connection":
                    if options := CONNECTION_OPTIONS[hv[1]]:
                        named = options if named is None else named | options
                elif name == b"trailer":
                    if asks_trailers(ex.request.headers):
                        out.append(hv)
                elif name in ASSIGNED_BY_KONG:  # Kong's header filter sets it when `headers` has it on
                    if (kong := ex.settings.kong_headers) is None or name not in kong.assigned:
                        out.append(hv)
                elif name == b"x-accel-limit-rate":  # (rare: only an answer with it pays for it)
                    _limit_rate(ex, headers)
                elif name == b"x-accel-charset":  # (rare too)
                    _override_charset(ex, headers, out, hv)
                elif name == b"via":  # kept; noted when plugins may change it before Kong's is built from it
                    if ex.phases is not None:
                        note_via(ex, hv[1])
                    out.append(hv)
                continue  # hop-by-hop, x-request-id, what nginx hides
        out.append(hv)
    if named:  # rare: end-to-end headers the upstream named in Connection
        out = [hv for hv in out if hv[0] not in named]
    out.append((b"x-request-id", request_id))
    if upgrade:  # (nginx's $upstream_http_upgrade, Kong's test: the lines joined)
        value = b", ".join([v for n, v in headers if n == b"upgrade"])
        if value.lower() == b"websocket":
            out.append((b"upgrade", value))
    return out, framing, content_type is not None and _EVENT_STREAM[content_type]
