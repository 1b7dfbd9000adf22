"""The headers Kong adds to every response (kong.conf's `headers`) and to every proxied request (`headers_upstream`).

Kong's defaults, `headers = server_tokens, latency_tokens, X-Kong-Request-Id` (kong/runloop/handler.lua, the header
filter's last step, after the plugins'):
    an upstream's answer  Via: <its Via, >1.1 <token>; Server: <token> when the upstream sent none;
                          X-Kong-Upstream-Latency (request sent upstream -> response head, ms);
                          X-Kong-Proxy-Latency (request head -> sent upstream, ms)
    a proxy-cache hit     the same (upstream latency 0), but Via: 1.1 <token> alone (the stored one replaced)
    the gateway's own     Server: <token>; X-Kong-Response-Latency (request head -> answer, ms)
    both                  X-Kong-Request-Id (the id the request is logged and answered under)
`X-Kong-Upstream-Status` (the upstream's status) is off by default; Kong sets it before the plugins' header filters
(header_filter.before), so a request with response phases gets it from those (gateway.pipeline.phases), and only one
without, on which no filter runs, from here. The token names this gateway, not Kong:
`mcp-gateway/<version>`. The settings are parsed once (KongHeaders); a response costs one call that returns the
lines to add, formatted.

The same call adds nginx's `Date` (ngx_http_header_filter's, after every header filter, whatever `headers` says) to a
response that has none by then: an upstream's own is kept (Kong's `proxy_pass_header Date`), as is one a plugin set
(a proxy-cache hit's stored one). A proxied answer without one (the upstream sent none, or a plugin removed it) gets
the gateway's too, as RFC 9110 6.6.1 asks of a proxy; Kong's gets none (`proxy_pass_header Date` leaves nginx's proxy
an empty Date in r->headers_out.date, so its header filter adds none).

And it does what nginx's charset filter (kong.conf's nginx_http_charset, Kong's `charset UTF-8;`) leaves in the
Content-Type, after the plugins' header filters: `; charset=<name>` added to a type of nginx's charset_types that names
no charset, except on a 301 or 302 (`charset_type`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from gateway import __version__
from gateway.http.dates import NOW
from gateway.http.ids import new_request_id
from gateway.http.timers import run_clock
from gateway.kong_array import kong_array
from gateway.memo import Derived

SERVER_TOKEN = f"mcp-gateway/{__version__}".encode()
_VIA = b"1.1 " + SERVER_TOKEN
_VIA_LINE = b"Via: " + _VIA + b"\r\n"
_SERVER_LINE = b"Server: " + SERVER_TOKEN + b"\r\n"
_VIA_AND_SERVER = _VIA_LINE + _SERVER_LINE
_DEFAULT_LINES = b"X-Kong-Upstream-Latency: %d\r\nX-Kong-Proxy-Latency: %d\r\nX-Kong-Request-Id: %b\r\n%b"
PROXIED = "kong-proxied"  # ex.state: a plugin answered as Kong's KONG_PROXIED (proxy-cache's hit)
# ex.state: the upstream's own Via lines, joined (nginx's $upstream_http_via), noted by gateway.pipeline.forward for a
# request whose plugins filter the headers (they may set or remove Via before Kong's is built from it)
UPSTREAM_VIA = "upstream_via"
_DEFAULTS = {"via", "server", "x-kong-proxy-latency", "x-kong-response-latency", "x-kong-upstream-latency",
             "x-kong-request-id"}

# kong/conf_loader/constants.lua HEADER_KEY_TO_NAME (lower case); X-Kong-Admin-Latency has no place on the proxy's
# answers (KongHeaders): the status server sends it, as Kong's admin_header_filter does (gateway.status.app).
RESPONSE_HEADERS = ("server_tokens", "latency_tokens", "via", "server", "x-kong-proxy-latency",
                    "x-kong-response-latency", "x-kong-admin-latency", "x-kong-upstream-latency",
                    "x-kong-upstream-status", "x-kong-request-id")
UPSTREAM_HEADERS = ("x-kong-request-id",)
ADMIN_LATENCY = "x-kong-admin-latency"
# What Kong's runloop sets by assignment on a proxied answer, when `headers` has it on (kong/runloop/handler.lua
# header_filter: `header[name] = value`, which replaces the upstream's lines of that name: lua-nginx-module's
# ngx_http_set_header_helper). Its Via extends the upstream's and its Server is only added: neither is here.
UPSTREAM_STATUS = b"x-kong-upstream-status"
ASSIGNED_BY_KONG = frozenset({b"x-kong-upstream-latency", b"x-kong-proxy-latency", UPSTREAM_STATUS,
                              b"x-kong-request-id"})

CHARSET_OFF = "off"  # nginx's `charset off` (compared as nginx does: case-sensitive)
KONG_CHARSET = "UTF-8"  # kong_defaults.lua's nginx_http_charset
# ngx_http_charset_filter_module's default charset_types, lower case (nginx compares a type lower-cased)
CHARSET_TYPES = frozenset((b"text/html", b"text/xml", b"text/plain", b"text/vnd.wap.wml", b"application/javascript",
                           b"application/rss+xml"))
_REDIRECTS = (301, 302)  # ngx_http_set_charset: no charset on these (Netscape 4 took it for the next page's)
# ex.state: the upstream's X-Accel-Charset names a charset nginx does not know, so its charset filter declines: no
# charset added (gateway.pipeline.forward._override_charset, which applies one it knows)
CHARSET_DECLINED = "charset_declined"
_CHARSET_MEMO = 256  # distinct Content-Type values remembered (a multipart boundary makes each value new)


def entries(setting: list[str] | str) -> list[str]:
    """The entries of a `headers` / `headers_upstream` setting: a list, or kong.conf's comma-separated string."""
    return kong_array(setting)


def invalid_entries(setting: list[str] | str, known: tuple[str, ...]) -> list[str]:
    """The entries Kong's conf loader refuses: names in any case, but "off" in lower case only ("OFF" names no
    header)."""
    return [t for t in entries(setting) if t != "off" and t.lower() not in known]


def charset_type(suffix: bytes, ctype: bytes | None) -> bytes | None:
    """The Content-Type nginx's charset and header filters make of `ctype` (suffix: `; charset=<name>`), or None
    when they leave it. A value with a parameter is always left: an upstream's type is the whole value unless it has a
    `charset=`, which is then its own (ngx_http_upstream_copy_content_type); one Lua set (ngx.header, kong.response)
    has its type end at the first `;`, but nginx's header filter adds a charset only to a value that is its type."""
    if ctype is not None and ctype.lower() in CHARSET_TYPES:
        return ctype + suffix
    return None


def _no_charset(ctype: bytes | None) -> None:
    """`charset off`: no Content-Type changed."""
    return None


def enabled(setting: list[str] | str) -> set[str]:
    """Kong's enabled_headers: nothing when the list is empty or starts with "off"; the two groups expanded."""
    tokens = entries(setting)
    if not tokens or tokens[0] == "off":
        return set()
    on = {t.lower() for t in tokens if t != "off"}
    if "server_tokens" in on:
        on |= {"via", "server"}
    if "latency_tokens" in on:
        on |= {"x-kong-proxy-latency", "x-kong-response-latency", "x-kong-upstream-latency", ADMIN_LATENCY}
    return on


class KongHeaders:
    """The response headers a gateway's `headers` setting turns on (None stands for none at all), with their lines
    formatted by one %-format per response: the one for an upstream's answer and the one for our own are built
    here, from the headers that are on. `add` is Kong's defaults' own code when those are what is on (the usual
    case, on every response), else the general one."""

    __slots__ = ("via", "server", "upstream_status", "request_id", "assigned", "_proxied", "_cached", "_own",
                 "_plugins_server", "_filtered", "_clock", "add", "types", "_after_proxied", "_after_own",
                 "charsets")

    def __init__(self, on: set[str], charset: str = KONG_CHARSET) -> None:
        # a Content-Type value -> what nginx's charset filter makes of it, or None (most: left as they are)
        make = _no_charset if charset == CHARSET_OFF else partial(charset_type, b"; charset=" + charset.encode())
        self.types: Derived[bytes | None, bytes | None] = Derived(make, _CHARSET_MEMO)
        # the charsets nginx knows (an upstream's X-Accel-Charset may name), lower case: the configured one and
        # UTF-8, which Kong's admin server's `charset UTF-8;` names whatever the setting (nginx_kong.lua:413)
        self.charsets = frozenset({b"utf-8"} | (set() if charset == CHARSET_OFF else {charset.encode().lower()}))
        # (an upstream's own lines of these are not relayed: gateway.pipeline.forward)
        self.assigned = frozenset(name for name in ASSIGNED_BY_KONG if name.decode() in on)
        self.via = "via" in on
        self.server = "server" in on
        self.upstream_status = "x-kong-upstream-status" in on
        self.request_id = "x-kong-request-id" in on
        # what Kong's runloop assigns after the plugins' header filters (header_filter.after), in place of a plugin's
        # lines of those names: on a proxied answer, and on one of the gateway's own (Server apart: _own_lines)
        self._after_proxied = frozenset(name.encode() for name in (
            "x-kong-upstream-latency", "x-kong-proxy-latency", "via", "x-kong-request-id") if name in on)
        self._after_own = frozenset(name.encode() for name in ("x-kong-response-latency", "x-kong-request-id")
                                    if name in on)
        proxied = own = b""
        if "x-kong-upstream-latency" in on:
            proxied += b"X-Kong-Upstream-Latency: %(u)d\r\n"
        if "x-kong-proxy-latency" in on:
            proxied += b"X-Kong-Proxy-Latency: %(p)d\r\n"
        filtered = proxied  # (with response phases: X-Kong-Upstream-Status went in before the filters)
        if self.upstream_status:  # (a cache hit's is the stored response's status, as Kong's ngx.status)
            proxied += b"X-Kong-Upstream-Status: %(s)d\r\n"
        cached = proxied
        if "x-kong-response-latency" in on:
            own += b"X-Kong-Response-Latency: %(l)d\r\n"
        plugins_server = own  # (a plugin's answer with Kong's own Via: its Server is left as it is)
        if self.server:
            own += b"Server: " + SERVER_TOKEN.replace(b"%", b"%%") + b"\r\n"
        if self.request_id:
            proxied += b"X-Kong-Request-Id: %(r)b\r\n"
            cached += b"X-Kong-Request-Id: %(r)b\r\n"
            own += b"X-Kong-Request-Id: %(r)b\r\n"
            plugins_server += b"X-Kong-Request-Id: %(r)b\r\n"
            filtered += b"X-Kong-Request-Id: %(r)b\r\n"
        self._proxied = proxied
        self._cached = cached
        self._filtered = filtered
        self._own = own
        self._plugins_server = plugins_server
        self._clock: Callable[[], float] = run_clock()
        self.add: Callable[[Any, list[tuple[bytes, bytes]], int], bytes] = \
            self._add_defaults if on == _DEFAULTS else self._add_any if on else self._add_none

    @classmethod
    def from_setting(cls, setting: list[str] | str, charset: str = KONG_CHARSET) -> KongHeaders:
        """With none on (`off`), the gateway's own answers still lose a plugin's Server, as Kong's runloop removes
        it. `charset`: kong.conf's nginx_http_charset (`off`: none added)."""
        return cls(enabled(setting) - {"server_tokens", "latency_tokens", "x-kong-admin-latency"}, charset)

    def _add_any(self, ex: Any, headers: list[tuple[bytes, bytes]], upstream_status: int) -> bytes:
        """The lines to add to the response `ex` is sending (`headers`, edited in place as Kong leaves them): a
        proxied response's once a try was made (Kong's KONG_PROXIED, set before the balancer: an upstream that failed
        gets them too, its upstream latency the wait until the failure), else our own (`upstream_status`: what the
        upstream said)."""
        rid = ex.request_id or self._new_id(ex)
        tries = ex.tries
        if tries:
            last = tries[-1]
            sent = last.started
            if ex.phases is None:
                fmt = self._proxied
            else:  # (X-Kong-Upstream-Status: set before the header filters)
                fmt = self._filtered if self.upstream_status else self._proxied
                _reassign(ex, headers, self._after_proxied)
            lines = fmt % {b"u": ((last.head_at or self._clock()) - sent) * 1000.0 + 0.5,
                           b"p": (sent - ex.started) * 1000.0 + 0.5, b"s": upstream_status, b"r": rid}
            seen = dict(headers)
            if self.types[seen.get(b"content-type")] is not None:
                self._charset(ex, headers)
            lines += self._via_and_server(headers, seen)
            return lines if b"date" in seen else lines + NOW.line
        return self._own_lines(ex, headers, rid, upstream_status)

    def _add_none(self, ex: Any, headers: list[tuple[bytes, bytes]], upstream_status: int) -> bytes:
        """`headers: off`: nothing of Kong's added (nginx's Date and charset apart); an answer of the gateway's own
        loses a plugin's Server, as Kong's runloop removes it (a proxied one keeps the upstream's)."""
        seen = dict(headers)
        if self.types[seen.get(b"content-type")] is not None:
            self._charset(ex, headers)
        if b"server" in seen and not ex.tries and not (ex.state and PROXIED in ex.state):
            headers[:] = [hv for hv in headers if hv[0] != b"server"]
        return b"" if b"date" in seen else NOW.line

    def _via_and_server(self, headers: list[tuple[bytes, bytes]], seen: dict[bytes, bytes]) -> bytes:
        """A proxied response's Via (the upstream's own extended in `headers`, else a line) and Server (a line, when
        the upstream sent none), as far as they are on; `seen` is dict(headers) (one C call: the names sent)."""
        lines = b""
        if self.via:
            if b"via" in seen:
                _append_via(headers)
            else:
                lines = _VIA_LINE
        if self.server and b"server" not in seen:
            lines += _SERVER_LINE
        return lines

    def _add_defaults(self, ex: Any, headers: list[tuple[bytes, bytes]], upstream_status: int) -> bytes:
        """`_add_any` for Kong's defaults, in one format per response."""
        rid = ex.request_id or self._new_id(ex)
        tries = ex.tries
        if tries:
            last = tries[-1]
            head_at = last.head_at or self._clock()  # (none: the try failed, and Kong's answer is still proxied)
            sent = last.started
            if ex.phases is not None:
                _reassign(ex, headers, self._after_proxied)
            seen = dict(headers)
            if self.types[seen.get(b"content-type")] is not None:
                self._charset(ex, headers)
            if b"via" in seen:
                _append_via(headers)
                tail = b"" if b"server" in seen else _SERVER_LINE
            else:
                tail = _VIA_LINE if b"server" in seen else _VIA_AND_SERVER
            if b"date" not in seen:  # (an upstream's usually comes: one test)
                tail += NOW.line
            return _DEFAULT_LINES % ((head_at - sent) * 1000.0 + 0.5, (sent - ex.started) * 1000.0 + 0.5, rid, tail)
        return self._own_lines(ex, headers, rid, upstream_status)

    def _own_lines(self, ex: Any, headers: list[tuple[bytes, bytes]], rid: bytes, status: int) -> bytes:
        """For an answer of the gateway's own: Server (replacing one a plugin set) and the response latency; but a
        plugin's answer whose one Via is Kong's token (`headers` having Via on) keeps its Server, or none, as Kong's
        runloop leaves it."""
        state = ex.state
        if state and PROXIED in state:
            return self._cached_lines(ex, headers, rid, status)
        started = ex.started
        own = self._own
        if ex.phases is not None:
            _reassign(ex, headers, self._after_own)
        seen = dict(headers)
        if self.types[seen.get(b"content-type")] is not None:
            self._charset(ex, headers)
        if b"server" in seen or b"via" in seen:  # (a plugin's): Kong's replaces Server, or removes it
            if self.via and [hv[1] for hv in headers if hv[0] == b"via"] == [SERVER_TOKEN]:
                own = self._plugins_server
            else:
                headers[:] = [hv for hv in headers if hv[0] != b"server"]
        lines = own % {b"l": (self._clock() - started) * 1000.0 + 0.5 if started else 0, b"r": rid}
        return lines if b"date" in seen else lines + NOW.line

    def _cached_lines(self, ex: Any, headers: list[tuple[bytes, bytes]], rid: bytes, status: int) -> bytes:
        """For a plugin's answer Kong counts as proxied (proxy-cache's hit sets KONG_PROXIED): the headers of a
        proxied response, the upstream latency 0, the proxy latency the time to this answer and the upstream status
        the stored one; Server only when the stored response has none, and Via the gateway's alone: Kong (3.8+)
        extends $upstream_http_via, which a request no upstream answered does not have, so the stored Via goes."""
        if ex.phases is None:
            fmt = self._cached
        else:
            fmt = self._filtered if self.upstream_status else self._cached
            _reassign(ex, headers, self._after_proxied)
        lines = fmt % {b"u": 0, b"p": (self._clock() - ex.started) * 1000.0 + 0.5, b"s": status, b"r": rid}
        seen = dict(headers)
        if self.types[seen.get(b"content-type")] is not None:
            self._charset(ex, headers)
        if self.via:
            if b"via" in seen:
                headers[:] = [hv for hv in headers if hv[0] != b"via"]
            lines += _VIA_LINE
        if self.server and b"server" not in seen:
            lines += _SERVER_LINE
        return lines if b"date" in seen else lines + NOW.line

    def _charset(self, ex: Any, headers: list[tuple[bytes, bytes]]) -> None:
        """The last Content-Type (the one nginx sends) with its charset, unless the response is a 301 or 302 or an
        upstream's X-Accel-Charset made nginx's charset filter decline (CHARSET_DECLINED; called when `types` has a
        value for it)."""
        if ex.status in _REDIRECTS or (ex.state and CHARSET_DECLINED in ex.state):
            return
        for i in range(len(headers) - 1, -1, -1):
            name, value = headers[i]
            if name == b"content-type":
                if (typed := self.types[value]) is not None:
                    headers[i] = (name, typed)
                return

    def _new_id(self, ex: Any) -> bytes:
        """The request's id, for an answer of our own given before anything named it (b"" when not sent)."""
        if not self.request_id:
            return b""
        rid = ex.request_id = new_request_id()
        return rid


def _reassign(ex: Any, headers: list[tuple[bytes, bytes]], names: frozenset[bytes]) -> None:
    """A plugin's lines of the `names` Kong assigns after the header filters dropped from `headers` (lua-nginx-module's
    header assignment replaces every line of the name), and, Via among them, the upstream's own put back, as it
    came (Kong builds its Via from $upstream_http_via, whatever the plugins made of the header): only a request
    whose plugins filter the headers calls this."""
    if names and any(hv[0] in names for hv in headers):
        headers[:] = [hv for hv in headers if hv[0] not in names]
    if b"via" in names and ex.state and (via := ex.state.get(UPSTREAM_VIA)) is not None:
        headers.append((b"via", via))


def note_via(ex: Any, value: bytes) -> None:
    """Note one of the upstream's Via lines (UPSTREAM_VIA), for a request whose plugins filter the headers."""
    state = ex.state
    if state is None:
        state = ex.state = {}
    via = state.get(UPSTREAM_VIA)
    state[UPSTREAM_VIA] = value if via is None else via + b", " + value


def _append_via(headers: list[tuple[bytes, bytes]]) -> None:
    """Kong's Via after an upstream's own: `its, 1.1 <token>`, one header (several of the upstream's joined, as
    nginx's $upstream_http_via joins them)."""
    via = b", ".join([hv[1] for hv in headers if hv[0] == b"via"])
    headers[:] = [hv for hv in headers if hv[0] != b"via"]
    headers.append((b"via", via + b", " + _VIA))
