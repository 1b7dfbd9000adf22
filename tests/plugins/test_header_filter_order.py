"""Response headers a plugin sets in access are there before the header filters run, as Kong's (set through
ngx.header in access, then kong/init.lua Kong.header_filter runs the collected plugins' header_filter): rate-limiting's,
which response-transformer (priority 800, after rate-limiting's 910) can remove, rename or find present."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
from plugin_helpers import call, http_codec, plugin, start  # noqa: F401 - http_codec: the tests' codec fixture

from gateway.http.server import Exchange
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
