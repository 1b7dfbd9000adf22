"""response-ratelimiting's handler with policy local against a stand-in for the state keeper's counters (no sockets):
what access, header_filter and the log step ask of the keeper, and what happens when counters cannot be read."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from gateway.pipeline.phases import Exit
from gateway.policies.response_ratelimiting.counters import UsageError
from gateway.policies.response_ratelimiting.handler import ResponseRateLimiting
from gateway.policies.response_ratelimiting.schema import ResponseRateLimitingConfig
from gateway.policies.response_ratelimiting.usage import EMPTY_UUID


class Keeper:
    """SharedState's counters API: every counter at `count`; adds recorded."""

    def __init__(self, count: int = 0) -> None:
        self.count = count
        self.asked: list[list[str]] = []
        self.added: list[tuple[str, int, float]] = []

    async def counters_usage(self, keys: list[str], ends: list[float]) -> list[int]:
        self.asked.append(keys)
        return [self.count] * len(keys)

    def counters_add(self, items: list[tuple[str, int, float]]) -> None:
        self.added += items


class Exchange(SimpleNamespace):
    def __init__(self) -> None:
        super().__init__(consumer=None, client_ip="10.0.0.1", request=SimpleNamespace(headers=[]), state=None,
                         answered=None)

    async def respond_error(self, status: int, message: str | None = None, extra: Any = None) -> None:
        self.answered = (status, message)


def policy(keeper: Keeper, **config: Any) -> ResponseRateLimiting:
    cfg = msgspec.convert({"limits": {"video": {"second": 2}}, **config}, ResponseRateLimitingConfig)
    return ResponseRateLimiting(cfg, "pid", keeper)


class Unreadable:
    """Counters that cannot be read (policy redis, its Redis away; policy local's never fail to be read:
    tests/test_keeper_restart_state.py)."""

    async def usage(self, keys: list[str], ends: list[float]) -> list[float]:
        raise UsageError("Redis is away")

    def increment(self, items: list[tuple[str, int, float]]) -> None:
        raise AssertionError("nothing is counted without usage")


def unreadable(**config: Any) -> ResponseRateLimiting:
    p = policy(Keeper(), **config)
    p.counters = Unreadable()  # type: ignore[assignment]
    return p


async def test_counters_that_cannot_be_read_are_kongs_500_without_fault_tolerance():
    ex = Exchange()
    assert await unreadable(fault_tolerant=False).access(ex)
    assert ex.answered == (500, None)  # respond_error's text for 500: "An unexpected error occurred"


async def test_counters_that_cannot_be_read_let_the_request_through_unlimited_with_fault_tolerance():
    ex = Exchange()
    p = unreadable()
    assert not await p.access(ex)
    assert ex.answered is None and ex.request.headers == []
    headers = [(b"x-kong-limit", b"video=1")]
    assert p.header_filter(ex, 200, headers) == [(b"x-kong-limit", b"video=1")]  # Kong: no usage, nothing done


async def test_access_reads_every_configured_counter_of_the_client_once():
    keeper = Keeper()
    await policy(keeper, limits={"video": {"second": 2, "hour": 5}, "image": {"day": 1}}).access(Exchange())
    assert len(keeper.asked) == 1
    assert [k.rsplit(":", 2)[1:] for k in keeper.asked[0]] == [["video", "second"], ["video", "hour"], ["image", "day"]]
    assert all(k.startswith(f"response-ratelimit:{EMPTY_UUID}:{EMPTY_UUID}:10.0.0.1:") for k in keeper.asked[0])


async def test_the_log_step_adds_the_increments_to_the_keepers_counters():
    keeper = Keeper()
    p = policy(keeper)
    ex = Exchange()
    await p.access(ex)
    p.header_filter(ex, 200, [(b"x-kong-limit", b"video=2")])
    assert keeper.added == []  # counted after the response, in the log step
    p.log(ex, 0.0, 0.0, 200)
    assert [(k.rsplit(":", 1)[1], n) for k, n, _ in keeper.added] == [
        ("second", 2), ("minute", 2), ("hour", 2), ("day", 2), ("month", 2), ("year", 2)]
    assert all(ttl >= 1 for _, _, ttl in keeper.added)


async def test_a_gateway_page_in_place_of_a_cut_response_keeps_the_usage_the_response_declared():
    """Kong counts the usage of a response whose body broke off (its head, and so its header, went out); here the
    gateway's 502 page replaces it, and the header filters run again on that page, which declares nothing."""
    keeper = Keeper()
    p = policy(keeper)
    ex = Exchange()
    await p.access(ex)
    p.header_filter(ex, 200, [(b"x-kong-limit", b"video=2")])
    p.header_filter(ex, 502, [(b"content-type", b"text/html")])
    p.log(ex, 0.0, 0.0, 502)
    assert {n for _, n, _ in keeper.added} == {2}


async def test_the_header_name_is_found_whatever_its_case_and_with_underscores_for_dashes():
    keeper = Keeper()
    p = policy(keeper, header_name="X_Cost")
    ex = Exchange()
    await p.access(ex)
    headers = p.header_filter(ex, 200, [(b"x-cost", b"video=1")])
    assert (b"x-cost", b"video=1") not in headers
    assert (b"x-ratelimit-remaining-video-second", b"1") in headers


async def test_a_used_up_limit_turns_the_response_into_a_429_and_nothing_is_counted():
    keeper = Keeper(2)
    p = policy(keeper)
    ex = Exchange()
    assert not await p.access(ex)
    with pytest.raises(Exit) as stop:
        p.header_filter(ex, 200, [(b"x-kong-limit", b"video=1"), (b"content-type", b"text/plain")])
    assert stop.value.status == 429
    assert (b"x-ratelimit-remaining-video-second", b"0") in stop.value.headers
    assert all(name != b"x-kong-limit" for name, _ in stop.value.headers)
    p.log(ex, 0.0, 0.0, 429)
    assert keeper.added == []


async def test_a_limit_name_with_an_underscore_names_the_client_headers_with_a_dash_and_the_upstreams_with_it():
    """Kong's header_filter sets "X-RateLimit-Limit-" .. limit_name .. "-" .. period_name with `ngx.header[k] = v`
    (kong/plugins/response-ratelimiting/header_filter.lua:75-80, kong/pdk/private/rate_limiting.lua:102), and
    lua-nginx-module's ngx_http_lua_ffi_set_resp_header (src/ngx_http_lua_headers.c:980-987) writes every "_" of a
    response header name as "-" (lua_transform_underscores_in_response_headers, on by default:
    src/ngx_http_lua_module.c:1760-1761). access.lua:100's kong.service.request.set_header (ngx.req.set_header)
    has no such rule: the upstream's X-RateLimit-Remaining-video_hd keeps it. The name in X-Kong-Limit is the
    configured one."""
    keeper = Keeper(0)
    p = policy(keeper, limits={"video_hd": {"second": 6}})
    ex = Exchange()
    assert not await p.access(ex)
    assert ex.request.headers == [(b"x-ratelimit-remaining-video_hd", b"6")]
    headers = p.header_filter(ex, 200, [(b"x-kong-limit", b"video_hd=2")])
    assert headers == [(b"x-ratelimit-limit-video-hd-second", b"6"), (b"x-ratelimit-remaining-video-hd-second", b"4")]
