"""Response headers a plugin sets in access are there before the header filters run, as Kong's (set through
ngx.header in access, then kong/init.lua Kong.header_filter runs the collected plugins' header_filter): rate-limiting's,
which response-transformer (priority 800, after rate-limiting's 910) can remove, rename or find present. So are those
Kong's runloop sets on a proxied response in header_filter.before, which Kong.header_filter runs before the plugins':
X-Kong-Upstream-Status and the balancer's new hash_on cookie. And the header filters after one that answers in the
response's place (response-ratelimiting's 429) still run, on that answer."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
import trio
from backends import EchoBackend, service, upstream
from plugin_helpers import call, headers_of, http_codec, plugin, start  # noqa: F401 - http_codec: the codec fixture

from gateway.http.server import Exchange
from gateway.pipeline.hashing import NEW_COOKIE, set_new_cookie
from gateway.pipeline.phases import ResponsePhases
from gateway.policies.rate_limiting.handler import RateLimiting
from gateway.policies.rate_limiting.schema import RateLimitingConfig
from gateway.ratelimit.headers import header_pairs

LINES = b"X-RateLimit-Limit-Minute: 100\r\nX-RateLimit-Remaining-Minute: 99\r\n"


async def test_response_transformer_removes_the_headers_rate_limiting_set_in_access(nursery, gateway):
    """kong/plugins/rate-limiting/handler.lua:185-204 sets X-RateLimit-* in access (kong/pdk/private/rate_limiting.lua
    apply_response_headers: `resp_header[k] = ...`, ngx.header); response-transformer's header_filter then clears
    the ones it is told to (kong/plugins/response-transformer/header_transformer.lua:89-91)."""
    _, port = await start(nursery, gateway, plugins=[
        plugin("rate-limiting", minute=100, policy="local"),
        plugin("response-transformer", remove={"headers": ["X-RateLimit-Remaining-Minute", "RateLimit-Remaining"]}),
    ])
    reply = await call(port, "/")
    assert reply.status == 200
    assert reply.header("x-ratelimit-limit-minute") == "100"  # rate-limiting applied
    assert reply.header("x-ratelimit-remaining-minute") is None
    assert reply.header("ratelimit-remaining") is None


async def test_response_transformer_add_finds_the_rate_limit_headers_present(nursery, gateway):
    """kong/plugins/response-transformer/header_transformer.lua transform_headers: `add` sets a header only when the
    response (kong.response.get_headers(), which has what rate-limiting set in access) has none of that name."""
    _, port = await start(nursery, gateway, plugins=[
        plugin("rate-limiting", minute=100, policy="local"),
        plugin("response-transformer", add={"headers": ["RateLimit-Limit:999"]}),
    ])
    reply = await call(port, "/")
    assert [v for k, v in reply.headers if k == "ratelimit-limit"] == ["100"]


async def test_response_transformer_renames_the_retry_after_of_a_denial(nursery, gateway):
    """kong/plugins/rate-limiting/handler.lua:193-198: a denial's Retry-After is set in access before
    kong.response.error, whose answer goes through the header filters: response-transformer's rename moves it
    (header_transformer.lua transform_headers, rename)."""
    _, port = await start(nursery, gateway, plugins=[
        plugin("rate-limiting", minute=1, policy="local"),
        plugin("response-transformer", rename={"headers": ["Retry-After:X-Retry-After"]}),
    ])
    assert (await call(port, "/")).status == 200
    denied = await call(port, "/")
    assert denied.status == 429
    assert denied.header("retry-after") is None
    assert int(denied.header("x-retry-after") or "0") > 0


async def test_the_header_filters_after_response_ratelimiting_run_on_its_429(nursery, gateway):
    """kong/plugins/response-ratelimiting/header_filter.lua:94-97 answers `kong.response.exit(429)` in header_filter;
    there kong/pdk/response.lua:805-807 ends with ngx.exit(ngx.OK), which returns (lua-nginx-module
    ngx_http_lua_control.c ngx_http_lua_ffi_exit: NGX_DONE in a header filter; lua-resty-core exit.lua: `if rc ==
    FFI_DONE then return end`), so kong/init.lua:457-480 runs the next plugins' header_filter on the 429:
    response-transformer (800) adds its header, and proxy-cache (100, kong/plugins/proxy-cache/handler.lua:352-376)
    finds the 429 uncacheable and sets X-Cache-Status: Bypass over its access's Miss."""
    backend, port = await start(nursery, gateway, plugins=[
        plugin("response-ratelimiting", limits={"video": {"minute": 1}}, policy="local"),
        plugin("response-transformer", add={"headers": ["X-Added:1"]}),
        plugin("proxy-cache", strategy="memory", response_code=[404])])
    backend.extra_headers = [(b"x-kong-limit", b"video=1")]
    assert (await call(port, "/")).status == 200
    with trio.fail_after(5):
        while (reply := await call(port, "/")).status != 429:  # (the usage is counted in the log phase)
            await trio.sleep(0.02)
    assert reply.header("x-added") == "1"
    assert reply.header("x-cache-status") == "Bypass"


class _Ex:
    """What rate-limiting's reporting uses of an Exchange: its phases and the two ways headers go on the response."""

    add_response_lines = Exchange.add_response_lines
    set_response_headers = Exchange.set_response_headers

    def __init__(self, *filters: object) -> None:
        self.phases = ResponsePhases.of(list(filters))
        self.response_lines = b""
        self.state: dict | None = None


def _filter(priority: int) -> SimpleNamespace:
    return SimpleNamespace(name="f", priority=priority, header_filter=lambda ex, status, headers: headers)


def _rate_limiting() -> RateLimiting:
    return RateLimiting(msgspec.convert({"minute": 100}, RateLimitingConfig), "rl", None)


def test_rate_limit_headers_stay_formatted_lines_when_no_header_filter_runs_after_rate_limiting():
    """The fast path (README "Rate limiting costs a few µs per request"): with only header filters of higher
    priority (correlation-id's 100001), which run before rate-limiting's in Kong's order, the lines are appended to
    the head as they are."""
    ex = _Ex(_filter(100001))
    _rate_limiting()._report(ex, LINES)  # type: ignore[arg-type]
    assert ex.response_lines == LINES and ex.state is None


def test_rate_limit_headers_are_set_before_the_filters_when_one_runs_after_rate_limiting():
    """A header filter of lower priority than rate-limiting's 910 (response-transformer's 800) can see and change
    them: they go in as headers set in access (Exchange.set_response_headers), not as lines after the filters."""
    ex = _Ex(_filter(100001), _filter(800))
    _rate_limiting()._report(ex, LINES)  # type: ignore[arg-type]
    assert ex.response_lines == b""
    assert ex.state == {"headers_set": [(b"x-ratelimit-limit-minute", b"100"), (b"x-ratelimit-remaining-minute",
                                                                               b"99")]}


def test_header_pairs_are_the_lines_with_lower_case_names():
    """The header filters compare names in lower case (gateway.pipeline.phases.HeaderFilter)."""
    assert header_pairs(b"Retry-After: 5\r\nRateLimit-Reset: 7\r\n") == [(b"retry-after", b"5"),
                                                                         (b"ratelimit-reset", b"7")]


# --- Kong's header_filter.before: X-Kong-Upstream-Status and the hash_on cookie -------------------------------------

COOKIE = b"sticky=5c3b2c5e-8f4a-4c1e-9a57-0b6f3d8e2a11; Path=/; Same-Site=Lax; HttpOnly"


async def test_response_transformer_renames_the_upstream_status_header_kong_sets_before_it(nursery, gateway):
    """kong/runloop/handler.lua header_filter.before sets X-Kong-Upstream-Status when kong.conf's `headers` has it,
    and kong/init.lua Kong.header_filter runs that before execute_collected_plugins_iterator(..., "header_filter"):
    response-transformer's rename (header_transformer.lua transform_headers) finds it and moves it."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({
        "services": [service("svc", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
        "plugins": [plugin("response-transformer",
                           rename={"headers": ["X-Kong-Upstream-Status:X-Upstream-Status"]})]},
        headers=["X-Kong-Upstream-Status"])
    reply = await call(port, "/?status=201")
    assert reply.status == 201
    assert reply.header("x-upstream-status") == "201"
    assert reply.header("x-kong-upstream-status") is None


async def test_the_upstream_status_header_is_sent_once_when_a_header_filter_runs(nursery, gateway):
    """With a header filter on the route, X-Kong-Upstream-Status goes in before it (handler.lua header_filter.before)
    and nothing adds it again after the filters (header_filter.after sets only the latencies, Via, Server and the
    request id)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({
        "services": [service("svc", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
        "plugins": [plugin("response-transformer", add={"headers": ["X-Filtered:1"]})]},
        headers=["X-Kong-Upstream-Status"])
    reply = await call(port, "/?status=202")
    assert reply.header("x-filtered") == "1"
    assert headers_of(reply, "x-kong-upstream-status") == ["202"]


async def _hash_on_cookie(nursery, gateway, transformer: dict, upstream_cookies=()):  # noqa: ANN001, ANN202
    backend = EchoBackend()
    backend.extra_headers = list(upstream_cookies)
    await nursery.start(backend.serve)
    return await gateway({
        "services": [service("svc", "http://sticky")],
        "upstreams": [upstream("sticky", [backend.port], algorithm="consistent-hashing", hash_on="cookie",
                               hash_on_cookie="sticky")],
        "plugins": [plugin("response-transformer", **transformer)]})


async def test_response_transformer_renames_the_hash_on_cookie_kong_sets_before_it(nursery, gateway):
    """kong/runloop/handler.lua header_filter.before calls balancer.set_cookie(ctx.balancer_data.hash_cookie)
    before the plugins' header filters: response-transformer's rename of Set-Cookie moves the new cookie too."""
    port = await _hash_on_cookie(nursery, gateway, {"rename": {"headers": ["Set-Cookie:X-Sticky"]}})
    reply = await call(port, "/")
    assert reply.status == 200
    assert headers_of(reply, "set-cookie") == []
    assert [v.split("=")[0] for v in headers_of(reply, "x-sticky")] == ["sticky"]


async def test_the_hash_on_cookie_replaces_the_upstreams_of_its_name_and_keeps_the_others(nursery, gateway):
    """kong/runloop/balancer/init.lua set_cookie: the Set-Cookie value starting with "<hash_on_cookie>=" is replaced
    in its place, the upstream's other cookies are kept."""
    port = await _hash_on_cookie(nursery, gateway, {"add": {"headers": ["X-Filtered:1"]}},
                                 [(b"set-cookie", b"sticky=upstream; Path=/"), (b"set-cookie", b"other=1")])
    reply = await call(port, "/")
    cookies = headers_of(reply, "set-cookie")
    assert reply.header("x-filtered") == "1"
    assert len(cookies) == 2 and cookies[1] == "other=1"
    assert cookies[0].startswith("sticky=") and cookies[0].endswith("; Path=/; Same-Site=Lax; HttpOnly")
    assert cookies[0] != "sticky=upstream; Path=/"


def _answering(lines: bytes = b"") -> SimpleNamespace:
    """What set_new_cookie uses of an Exchange: the lines for the head and the per-request state."""
    return SimpleNamespace(response_lines=lines, state=None)


def test_set_cookie_adds_the_new_cookie_when_the_response_has_none_of_its_name():
    """balancer.set_cookie: a Set-Cookie of another name is kept and the new one added (a table of both)."""
    ex = _answering(b"X-RateLimit-Limit-Minute: 5\r\nSet-Cookie: " + COOKIE + b"\r\n")
    headers = [(b"set-cookie", b"a=1")]
    assert set_new_cookie(ex, headers) == [(b"set-cookie", b"a=1"), (b"set-cookie", COOKIE)]  # type: ignore[arg-type]
    assert headers == [(b"set-cookie", b"a=1")]  # (a new list: filter_head knows the response by the one given)
    assert ex.response_lines == b"X-RateLimit-Limit-Minute: 5\r\n"  # not sent again after the filters


def test_set_cookie_compares_the_cookie_name_case_sensitively():
    """balancer.set_cookie compares `sub(cookie_header[i], 1, #prefix) == prefix`: Sticky= is another cookie."""
    ex = _answering(b"Set-Cookie: " + COOKIE + b"\r\n")
    assert set_new_cookie(ex, [(b"set-cookie", b"Sticky=x")]) == [  # type: ignore[arg-type]
        (b"set-cookie", b"Sticky=x"), (b"set-cookie", COOKIE)]


def test_set_cookie_replaces_only_the_first_cookie_of_its_name():
    """balancer.set_cookie breaks at the first match: a later Set-Cookie of the same name stays."""
    ex = _answering(b"Set-Cookie: " + COOKIE + b"\r\n")
    headers = [(b"set-cookie", b"sticky=1"), (b"x", b"y"), (b"set-cookie", b"sticky=2")]
    assert set_new_cookie(ex, headers) == [  # type: ignore[arg-type]
        (b"set-cookie", COOKIE), (b"x", b"y"), (b"set-cookie", b"sticky=2")]


def test_the_new_cookie_is_set_again_on_an_answer_in_the_responses_place():
    """A 502 after the head's filters ran (its body broke off) is still the proxied request's answer (Kong's
    ctx.balancer_data.hash_cookie stays): the cookie, taken out of the lines, is kept in the request's state."""
    ex = _answering(b"Set-Cookie: " + COOKIE + b"\r\n")
    set_new_cookie(ex, [])  # type: ignore[arg-type]
    assert ex.state == {NEW_COOKIE: COOKIE} and ex.response_lines == b""
    assert set_new_cookie(ex, [(b"content-length", b"0")]) == [  # type: ignore[arg-type]
        (b"content-length", b"0"), (b"set-cookie", COOKIE)]


def test_without_a_new_cookie_the_headers_are_left_as_they_are():
    """Nothing of Kong's balancer.set_cookie without ctx.balancer_data.hash_cookie (the client sent the cookie)."""
    headers = [(b"set-cookie", b"sticky=1")]
    assert set_new_cookie(_answering(b"X-A: 1\r\n"), headers) is headers  # type: ignore[arg-type]
