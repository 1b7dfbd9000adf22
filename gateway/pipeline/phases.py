"""The response phases of a request's plugins, as Kong runs them after access: header_filter and body_filter.

- header_filter runs on every response the request gets, proxied or answered by the gateway itself (a 401 from an
  authentication plugin, a 429, a 404 with no route: then the global plugins' filters run, as in Kong), before the
  head is written, so the head stays one write. The headers a policy set in access go in first, then on a proxied
  response what Kong's runloop sets before the plugins' filters (header_filter.before): X-Kong-Upstream-Status and
  the balancer's new hash_on cookie, so a filter can rename or remove them; Kong's other headers come after the
  filters (gateway.http.kong_headers). Like Kong, it runs for every plugin of the request's chain, also
  those after the one that answered. A header filter may answer in the response's place by raising Exit (Kong's
  kong.response.exit(status) in header_filter: response-ratelimiting's 429); the filters after it still run, on
  that answer. When the gateway answers in place of a response whose head the filters saw (`filter_head`, then its
  body broke off or stalled while read whole: a 502 or 504 page), they run again on that answer, with the headers
  set in access: a filter that keeps per-response state from header_filter to body_filter must not apply what it
  decided on the first to the second (proxy-cache).
- body_filter sees a whole, non-streaming body: the gateway's own answers, and upstream bodies that a filter asks
  for (`wants_body`), read whole up to RESPONSE_BODY_LIMIT. text/event-stream is never buffered. Kong reads such a
  body whole whatever its size (kong/pdk/response.lua get_raw_body), so a body over the limit that a filter must
  change (`changes_body`: response-transformer's JSON operations) is never passed on unfiltered: the answer is a 502
  (`refuses_unfiltered`, logged naming the limit and the plugin); one that the filters only read (proxy-cache
  storing it) streams on unchanged, and unstored (logged).
- event_filter is the place for filters over single SSE events (a later MCP plugin filtering `tools/list`
  results): policies would provide `event_filter(ex, event: bytes) -> bytes`, and the forwarder's SSE relay would
  split the stream at blank lines and run `ResponsePhases.filter_event` on each event. Nothing uses it yet.

A route whose plugins have no such phase gets None (Exchange.phases), and the connection loop pays one attribute
test per response for all of this.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from gateway.http.codec import END, NEED_DATA, Headers
from gateway.http.kong_headers import PROXIED, UPSTREAM_STATUS
from gateway.http.server import HEADERS_SET, Exchange
from gateway.http.timers import Phase
from gateway.pipeline.hashing import set_new_cookie

log = logging.getLogger("gateway.phases")

RESPONSE_BODY_LIMIT = 8 * 1024 * 1024  # bytes of an upstream body a body filter may hold in memory
_HEAD_FILTERED = "head_filtered"  # ex.state: what filter_head made of the response head, for send_head's filter


class Exit(Exception):  # noqa: N818 - named for Kong's kong.response.exit
    """Raised by a header filter to answer `status` without a body in place of the response: Kong's
    kong.response.exit(status) in header_filter (which Kong allows only without a body). The head keeps `headers`
    (as filtered so far) with Content-Length: 0, and the header filters after it run on that status and head (in a
    header filter ngx.exit(ngx.OK) returns: lua-nginx-module's ngx_http_lua_ffi_exit gives NGX_DONE, lua-resty-core's
    exit.lua returns, and kong/init.lua goes on with the next plugin's header_filter); one of them may Exit in turn.
    The body filters do not run (there is no body). The upstream's body is not sent: the forwarder closes the
    upstream connection rather than read it (Exchange.response_done is set)."""

    def __init__(self, status: int, headers: Headers) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers


class HeaderFilter(Protocol):
    name: str
    priority: int

    def header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        """Return the response headers (the list may be changed in place); names are lower case. Raise Exit to
        answer in the response's place."""
        ...


class BodyFilter(Protocol):
    """A filter whose body_filter changes the body it wants (not one that only reads it) also has `changes_body =
    True`: a body it cannot have whole is then refused rather than passed on unfiltered (refuses_unfiltered)."""

    name: str
    priority: int

    def wants_body(self, ex: Exchange, status: int, headers: Headers) -> bool:
        """Whether this response's body must be read whole for `body_filter` (after the header filters ran)."""
        ...

    def body_filter(self, ex: Exchange, status: int, headers: Headers, body: bytes) -> bytes:
        """The new body (return `body` itself when unchanged)."""
        ...


class ResponsePhases:
    """The response filters of one plugin chain, in the chain's (priority) order."""

    __slots__ = ("header_filters", "body_filters", "event_filters", "body_changers")

    def __init__(self, policies: Sequence[Any]) -> None:
        self.header_filters = [p for p in policies if hasattr(p, "header_filter")]
        self.body_filters = [p for p in policies if hasattr(p, "body_filter")]
        self.event_filters = [p for p in policies if hasattr(p, "event_filter")]
        self.body_changers = [p for p in self.body_filters if getattr(p, "changes_body", False)]

    @classmethod
    def of(cls, policies: Sequence[Any]) -> ResponsePhases | None:
        """The phases of a chain, or None when none of its policies has a response phase."""
        phases = cls(policies)
        return phases if phases.header_filters or phases.body_filters or phases.event_filters else None

    def filter(self, ex: Exchange, status: int, headers: Headers, body: bytes,
               end: bool) -> tuple[int, Headers, bytes, bool]:
        """Run the header filters (unless `filter_head` ran them), then (when `body` is the whole body) the body
        filters; called by Exchange.send_head just before the head is written. Returns the (status, headers, body,
        end) to send: those given, filtered, or a header filter's Exit (its status, no body, the end)."""
        state = ex.state
        early = state.pop(_HEAD_FILTERED, None) if state else None
        if early is not None and early[0] is headers:  # (another answer in its place, an error, runs them anew)
            status, headers, exited = early[1]
        else:
            status, headers, exited = self._header_filters(ex, status, headers)
        if exited:
            return status, headers, b"", True
        if end and self.body_filters and ex.request.method != b"HEAD":
            new = body
            for f in self.body_filters:
                if f.wants_body(ex, status, headers):
                    new = f.body_filter(ex, status, headers, new)
            if new is not body:
                headers = [hv for hv in headers if hv[0] != b"content-length"]
                headers.append((b"content-length", b"%d" % len(new)))
                body = new
        return status, headers, body, end

    def filter_head(self, ex: Exchange, status: int, headers: Headers) -> tuple[int, Headers, bool]:
        """Run the header filters ahead of Exchange.send_head (which then does not run them again, given the same
        `headers` list): the forwarder
        decides from the headers as they made them whether a body filter needs the upstream's body whole, as Kong's
        body filters decide in header_filter after the plugins of higher priority. (status, headers, whether a
        filter's Exit answers in the response's place)."""
        try:
            result = self._header_filters(ex, status, headers)
        except Exception:
            ex.response_started = True  # a failed header filter: no answer, as from send_head (nginx's header filter
            raise  # failing sends nothing, whether or not the body had come)
        if ex.state is None:
            ex.state = {}
        ex.state[_HEAD_FILTERED] = (headers, result)
        return result

    def _header_filters(self, ex: Exchange, status: int, headers: Headers) -> tuple[int, Headers, bool]:
        """The header filters, headers a policy set in access (Exchange.set_response_header) going in first, as
        Kong's do, then Kong's header_filter.before: (status, headers, exited), a filter's Exit giving its status and
        Content-Length: 0 to the filters after it (_exited)."""
        state = ex.state
        if state and (headers_set := state.get(HEADERS_SET)):  # (kept for an answer in the response's place)
            names = {name for name, _ in headers_set}
            headers = [hv for hv in headers if hv[0] not in names] + headers_set
        if ex.tries or (state and PROXIED in state):  # Kong's ctx.KONG_PROXIED
            headers = _before(ex, status, headers)
        filters = self.header_filters
        try:
            for f in filters:
                headers = f.header_filter(ex, status, headers)
        except Exit as e:
            return self._exited(ex, e, filters.index(f) + 1)
        return status, headers, False

    def _exited(self, ex: Exchange, first: Exit, i: int) -> tuple[int, Headers, bool]:
        """The header filters from the i-th on, after a filter's Exit: each runs on the exit's status and headers
        (Content-Length: 0), as Kong's loop goes on after kong.response.exit in header_filter (response-transformer's
        rules and proxy-cache's Bypass apply to response-ratelimiting's 429)."""
        filters = self.header_filters
        status, headers = first.status, _exit_head(first.headers)
        while i < len(filters):
            try:
                headers = filters[i].header_filter(ex, status, headers)
            except Exit as again:  # (Kong lets a later filter exit too: the head is not sent yet)
                status, headers = again.status, _exit_head(again.headers)
            i += 1
        return status, headers, True

    def buffers(self, ex: Exchange, status: int, headers: Headers) -> bool:
        """Whether an upstream response must be read whole before its head goes out (a body filter wants it)."""
        if not self.body_filters or ex.request.method == b"HEAD" or _is_event_stream(headers):
            return False
        return any(f.wants_body(ex, status, headers) for f in self.body_filters)

    def refuses_unfiltered(self, ex: Exchange, status: int, headers: Headers, limit: int = RESPONSE_BODY_LIMIT) -> bool:
        """An upstream body `buffers` asked for is over `limit`: whether it must not be passed on (True: a filter
        that changes bodies wants this one, and the caller answers 502 in its place; logged as an error naming the
        limit and the plugin) or may stream on unchanged, the filters that only read it (proxy-cache) skipped
        (False; logged as a warning)."""
        request = ex.request
        what = f"{request.method.decode()} {request.target[:200].decode('latin-1')}"
        changer = next((f for f in self.body_changers if f.wants_body(ex, status, headers)), None)
        if changer is not None:
            log.error("response body of %s is over %d bytes (RESPONSE_BODY_LIMIT, what the gateway reads whole for "
                      "a body filter), which plugin %s must change: answered 502 rather than passed on unchanged (the "
                      "plugin transforms answers within the limit only)", what, limit, changer.name)
            return True
        log.warning("response body of %s is over %d bytes (RESPONSE_BODY_LIMIT): sent unfiltered, not stored", what,
                    limit)
        return False

    def filter_event(self, ex: Exchange, event: bytes) -> bytes:
        """One whole SSE event through the event filters (see the module doc: not wired into the relay yet)."""
        for f in self.event_filters:
            event = f.event_filter(ex, event)
        return event


def _exit_head(headers: Headers) -> Headers:
    """An Exit's headers framed as kong.response.exit without a body frames them: Content-Length: 0."""
    headers = [hv for hv in headers if hv[0] != b"content-length" and hv[0] != b"transfer-encoding"]
    headers.append((b"content-length", b"0"))
    return headers


def _before(ex: Exchange, status: int, headers: Headers) -> Headers:
    """What Kong's runloop sets on a proxied response before the plugins' header filters (kong/runloop/handler.lua
    header_filter.before, run first by kong/init.lua Kong.header_filter): X-Kong-Upstream-Status, `status`, when
    kong.conf's `headers` has it on (by assignment: in place of any of that name; KongHeaders leaves its line out when
    the request has response phases), then the balancer's new hash_on cookie (hashing.set_new_cookie). The list
    given is left as it is (filter_head knows the response by it): what changes is a new one."""
    kong = ex.settings.kong_headers
    if kong is not None and kong.upstream_status:
        headers = [hv for hv in headers if hv[0] != UPSTREAM_STATUS]
        headers.append((UPSTREAM_STATUS, b"%d" % status))
    return set_new_cookie(ex, headers)


async def read_whole_body(ex: Exchange, codec: Any, conn: Any, first: bytes, read_timeout: float,
                          limit: int = RESPONSE_BODY_LIMIT) -> tuple[bytes, bool]:
    """Read an upstream body to its end for the body filters: (body, True), or (what was read, False) once it
    passes `limit` (ResponsePhases.refuses_unfiltered says what then). read_timeout applies between reads, as when
    streaming; with no head sent yet, a stall past it gets the client a 504 (gateway.http.server._timed_out), logged
    with the upstream the head came from (the timer's detail as the head's read left it). The body is held in one
    buffer (one of tiny chunks weighs its bytes, not an object per chunk), and each chunk counts against the
    upstream connection's checkpoint budget (Conn.pace: a read of 1-byte chunks must not hold the worker's other
    clients)."""
    body = bytearray(first)
    timer = ex.timer
    detail = ((timer.detail or ("?", 0.0))[0], read_timeout)
    while True:
        timer.set(read_timeout, Phase.UPSTREAM_BODY, detail)
        codec.receive_data(await conn.recv())
        while (ev := codec.next_event()) is not NEED_DATA:
            if ev is END:
                timer.clear()
                return bytes(body), True
            await conn.pace()
            body += ev
        if len(body) > limit:
            timer.clear()
            return bytes(body), False


def _is_event_stream(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value[:17].lower() == b"text/event-stream"
    return False
