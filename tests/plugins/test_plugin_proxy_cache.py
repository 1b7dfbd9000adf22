"""proxy-cache through the gateway (in-process, real sockets, the state keeper's host store in-process), from Kong's
spec/03-plugins/31-proxy-cache/02-access_spec.lua: X-Cache-Status, X-Cache-Key, Age, statuses and bodies, and
whether the upstream was reached. The backend is a small httpbin (/cache/N, /response-headers, /status/N, /xml,
/stream/N); its JSON answers count the requests it saw, so a cached body is told apart from a fresh one.

Times: the plugin's clock (whole seconds, ngx.time()) is moved by the tests instead of sleeping, except where the
store itself must drop an entry (TTLs of 1 s and less)."""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import h11
import pytest
import trio
from backends import BadBackend, Client, _Backend, free_port, parse_raw_response, raw_exchange, service
from plugin_helpers import TIMEOUT, http_codec, plugin  # noqa: F401 - http_codec: the fixture

from gateway.policies.proxy_cache import handler as handler_module

ROUTE_ID = "6e7c9ab3-8a0f-4c59-a4bb-1f3b1c6e0f10"


class Httpbin(_Backend):
    """/cache/N: Cache-Control "public, max-age=N"; /response-headers?K=V: those headers; /status/N; /xml;
    /stream/N: N JSON lines, chunked; /nowhere...: 404; anything else: JSON about the request, with `n`, the number
    of requests seen so far."""

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            seen = await self._read_request(stream, conn)
            if seen is None:
                return
            status, headers, chunks = self._answer(seen.method, seen.target, seen.headers)
            if seen.method == "HEAD" or status in (204, 304):
                chunks = []
            elif len(chunks) == 1:
                headers.append(("content-length", str(len(chunks[0]))))
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
            for chunk in chunks:
                await stream.send_all(conn.send(h11.Data(data=chunk)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    def _answer(self, method: str, target: str, headers: list) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        url = urlsplit(target)
        path = url.path
        doc = json.dumps({"n": len(self.requests), "method": method, "url": target,
                          "headers": dict(headers)}).encode()
        json_type = ("content-type", "application/json")
        if path.startswith("/cache/"):
            return 200, [json_type, ("cache-control", f"public, max-age={path[7:]}")], [doc]
        if path == "/response-headers":
            given = parse_qsl(url.query, keep_blank_values=True)
            if not any(k.lower() == "content-type" for k, _ in given):
                given.insert(0, json_type)
            return 200, given, [doc]
        if path.startswith("/status/"):
            return int(path[8:]), [("content-type", "text/html; charset=utf-8")], [b""]
        if path == "/xml":
            return 200, [("content-type", "application/xml")], [b'<?xml version="1.0"?><n>%d</n>' % len(self.requests)]
        if path.startswith("/stream/"):
            return 200, [json_type], [b'{"id": %d, "n": %d}\n' % (i, len(self.requests)) for i in range(int(path[8:]))]
        if path.startswith("/nowhere"):
            return 404, [json_type], [doc]
        return 200, [json_type], [doc]


def cache(**config: Any) -> dict[str, Any]:
    return plugin("proxy-cache", strategy="memory", **config)


async def start(nursery: trio.Nursery, gateway: Any, *plugins: dict[str, Any], routes: list[dict] | None = None,
                **doc: Any) -> tuple[Httpbin, int]:
    """The backend behind service `svc`, a route for every path (`routes` instead) with `plugins`, and the gateway."""
    backend = Httpbin()
    await nursery.start(backend.serve)
    if routes is None:
        routes = [{"name": "r", "id": ROUTE_ID, "paths": ["/"], "plugins": list(plugins)}]
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", routes)], **doc})
    return backend, port


async def get(port: int, target: str = "/get", headers: list[tuple[str, str]] | None = None, method: str = "GET",
              body: bytes = b"", host: str | None = None) -> Any:
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port, host or "gateway.test") as client:
            return await client.request(method, target, headers=headers, body=body)


def status_of(reply: Any) -> str | None:
    return reply.header("x-cache-status")


def key_of(reply: Any) -> str | None:
    return reply.header("x-cache-key")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The plugin's ngx.time(), moved by the test."""
    now = [int(time.time())]
    monkeypatch.setattr(handler_module, "now", lambda: now[0])
    return now


# --- hits and misses -------------------------------------------------------------------------------------------------


async def test_a_request_is_a_miss_then_a_hit_with_the_same_key_and_body(nursery, gateway):
    _, port = await start(nursery, gateway, cache())
    first = await get(port)
    assert first.status == 200 and status_of(first) == "Miss"
    key = key_of(first)
    assert key is not None and len(key) == 64 and key.isalnum()
    second = await get(port)
    assert second.status == 200 and status_of(second) == "Hit"
    assert key_of(second) == key and second.body == first.body


async def test_a_hit_does_not_reach_the_upstream(nursery, gateway):
    backend, port = await start(nursery, gateway, cache())
    await get(port)
    await get(port)
    await get(port)
    assert len(backend.requests) == 1


async def test_the_cache_key_is_kongs_hash_of_the_route_and_the_request_line(nursery, gateway):
    _, port = await start(nursery, gateway, cache())
    assert key_of(await get(port, "/get")) == hashlib.sha256(f"{ROUTE_ID}|GET|GET /get HTTP/1.1||".encode()).hexdigest()
    assert key_of(await get(port, "/get?b=2&a=1")) == hashlib.sha256(
        f"{ROUTE_ID}|GET|GET /get|a=1:b=2|".encode()).hexdigest()


async def test_a_hit_carries_the_stored_headers_and_its_own_length_and_request_id(nursery, gateway):
    _, port = await start(nursery, gateway, cache())
    first = await get(port, "/response-headers?x-stored=yes")
    second = await get(port, "/response-headers?x-stored=yes")
    assert status_of(second) == "Hit" and second.header("x-stored") == "yes"
    assert second.header("content-length") == str(len(second.body)) == str(len(first.body))
    assert second.header("x-request-id") not in (None, first.header("x-request-id"))


# --- the diagnostic headers ------------------------------------------------------------------------------------------


async def test_diagnostic_headers_switched_off_are_left_out(nursery, gateway):
    _, port = await start(nursery, gateway, cache(response_headers={"age": False, "X-Cache-Status": False,
                                                                    "X-Cache-Key": False}))
    first, second = await get(port), await get(port)
    for reply in (first, second):
        assert reply.status == 200
        assert status_of(reply) is None and key_of(reply) is None and reply.header("age") is None
    assert second.body == first.body  # cached all the same


async def test_a_kong_debug_header_shows_the_diagnostic_headers_anyway(nursery, gateway):
    _, port = await start(nursery, gateway, cache(response_headers={"age": False, "X-Cache-Status": False,
                                                                    "X-Cache-Key": False}))
    await get(port)
    reply = await get(port, headers=[("kong-debug", "1")])
    assert status_of(reply) == "Hit" and reply.header("age") is not None and key_of(reply) is not None


async def test_a_miss_has_no_age_and_a_hit_has_one(nursery, gateway):
    _, port = await start(nursery, gateway, cache())
    first = await get(port)
    assert status_of(first) == "Miss" and key_of(first) is not None and first.header("age") is None
    second = await get(port)
    assert status_of(second) == "Hit" and second.header("age") == "0"


async def test_a_hit_says_its_age_in_whole_seconds(nursery, gateway, clock):
    _, port = await start(nursery, gateway, cache())
    await get(port)
    clock[0] += 7
    assert (await get(port)).header("age") == "7"


# --- TTLs ------------------------------------------------------------------------------------------------------------


async def test_an_entry_leaves_the_store_after_cache_ttl(nursery, gateway):
    _, port = await start(nursery, gateway, cache(cache_ttl=1))
    assert status_of(await get(port)) == "Miss"
    assert status_of(await get(port)) == "Hit"
    await trio.sleep(1.1)
    assert status_of(await get(port)) == "Miss"
    assert status_of(await get(port)) == "Hit"


async def test_an_entry_kept_past_cache_ttl_by_storage_ttl_is_refreshed(nursery, gateway, clock):
    backend, port = await start(nursery, gateway, cache(cache_ttl=2, storage_ttl=60))
    assert status_of(await get(port)) == "Miss"
    assert status_of(await get(port)) == "Hit"
    clock[0] += 3
    refreshed = await get(port)
    assert status_of(refreshed) == "Refresh" and refreshed.json()["n"] == 2
    assert status_of(await get(port)) == "Hit"
    assert len(backend.requests) == 2


async def test_with_cache_control_the_response_max_age_is_the_storage_time(nursery, gateway):
    _, port = await start(nursery, gateway, cache(cache_control=True))
    target = "/response-headers?Cache-Control=" + quote("max-age=0.3")
    assert status_of(await get(port, target)) == "Miss"
    assert status_of(await get(port, target)) == "Hit"
    await trio.sleep(0.4)
    assert status_of(await get(port, target)) == "Miss"


async def test_with_cache_control_max_age_0_is_never_cached(nursery, gateway):
    backend, port = await start(nursery, gateway, cache(cache_control=True))
    assert status_of(await get(port, "/cache/0")) == "Bypass"
    assert status_of(await get(port, "/cache/0")) == "Bypass"
    assert len(backend.requests) == 2


async def test_max_age_without_public_is_cacheable(nursery, gateway):
    _, port = await start(nursery, gateway, cache(cache_control=True))
    target = "/response-headers?Cache-Control=" + quote("max-age=604800")
    assert status_of(await get(port, target)) == "Miss"
    assert status_of(await get(port, target)) == "Hit"


async def test_s_maxage_alone_is_cacheable(nursery, gateway):
    _, port = await start(nursery, gateway, cache(cache_control=True))
    target = "/response-headers?Cache-Control=" + quote("s-maxage=604800")
    assert status_of(await get(port, target)) == "Miss"
    assert status_of(await get(port, target)) == "Hit"


async def test_expires_without_cache_control_is_cacheable(nursery, gateway):
    _, port = await start(nursery, gateway, cache(cache_control=True))
    target = "/response-headers?Expires=" + quote(email.utils.formatdate(time.time() + 5000, usegmt=True))
    assert status_of(await get(port, target)) == "Miss"
    assert status_of(await get(port, target)) == "Hit"


async def test_private_responses_are_not_cached_with_cache_control(nursery, gateway):
    _, port = await start(nursery, gateway, cache(cache_control=True))
    target = "/response-headers?Cache-Control=" + quote("private, max-age=60")
    assert status_of(await get(port, target)) == "Bypass"
    assert status_of(await get(port, target)) == "Bypass"


# --- the request's Cache-Control -------------------------------------------------------------------------------------


async def test_request_min_fresh_refreshes_an_entry_fresh_for_less(nursery, gateway):
    _, port = await start(nursery, gateway, cache(cache_control=True))
    assert status_of(await get(port, "/cache/2")) == "Miss"
    assert status_of(await get(port, "/cache/2", [("cache-control", "min-fresh=30")])) == "Refresh"


async def test_request_max_age_refreshes_an_older_entry(nursery, gateway, clock):
    _, port = await start(nursery, gateway, cache(cache_control=True))
    cc = [("cache-control", "max-age=2")]
    assert status_of(await get(port, "/cache/10", cc)) == "Miss"
    assert status_of(await get(port, "/cache/10", cc)) == "Hit"
    clock[0] += 3
    assert status_of(await get(port, "/cache/10", cc)) == "Refresh"


async def test_request_max_stale_refreshes_an_entry_stale_for_longer(nursery, gateway, clock):
    _, port = await start(nursery, gateway, cache(cache_control=True, storage_ttl=600))
    assert status_of(await get(port, "/cache/2")) == "Miss"
    assert status_of(await get(port, "/cache/2")) == "Hit"
    clock[0] += 4
    assert status_of(await get(port, "/cache/2")) == "Hit"  # stale, kept by storage_ttl: Kong serves it
    assert status_of(await get(port, "/cache/2", [("cache-control", "max-stale=1")])) == "Refresh"


async def test_only_if_cached_without_an_entry_is_nginxs_504_page(nursery, gateway):
    """handler.lua:276-277: kong.response.exit(504) without a body, so nginx's error page through
    kong/error_handlers.lua:55-60: no Accept and no Content-Type -> error_default_type (text/plain,
    kong.conf.default), the template of kong/tools/http.lua "%s\\nrequest_id: %s\\n"."""
    backend, port = await start(nursery, gateway, cache(cache_control=True, storage_ttl=600))
    reply = await get(port, "/get?not=here", [("cache-control", "only-if-cached")])
    assert reply.status == 504
    assert (reply.header("content-type") or "").startswith("text/plain"), reply.header("content-type")
    assert reply.body.startswith(b"The upstream server is timing out\nrequest_id: "), reply.body
    assert status_of(reply) is None
    assert backend.requests == []


async def test_only_if_cached_504_takes_its_format_from_the_request_content_type(nursery, gateway):
    """kong/error_handlers.lua:55-57: without Accept, the request's Content-Type picks the error page's format (here
    XML), as for any of nginx's own error pages."""
    _, port = await start(nursery, gateway, cache(cache_control=True))
    reply = await get(port, "/get?not=here", [("cache-control", "only-if-cached"),
                                              ("content-type", "application/xml")])
    assert reply.status == 504
    assert (reply.header("content-type") or "").startswith("application/xml"), reply.header("content-type")
    assert b"<message>The upstream server is timing out</message>" in reply.body, reply.body


async def test_only_if_cached_with_an_entry_is_a_hit(nursery, gateway):
    _, port = await start(nursery, gateway, cache(cache_control=True))
    await get(port, "/cache/60")
    assert status_of(await get(port, "/cache/60", [("cache-control", "only-if-cached")])) == "Hit"


async def test_numbers_too_large_for_an_int_or_a_double_are_answered(nursery, gateway):
    """A response max-age of 20 digits is Kong's 1e20 (stored as a Python int past 2**64 - 1 it reset the
    connection); a request max-age LuaJIT reads as inf (0x1p99999, 5000 nines: a 500 before) is never exceeded."""
    backend, port = await start(nursery, gateway, cache(cache_control=True))
    target = "/response-headers?Cache-Control=public,%20max-age%3D" + "9" * 20
    assert status_of(await get(port, target)) == "Miss"
    for cc in ([], [("cache-control", "max-age=0x1p99999")], [("cache-control", "max-age=" + "9" * 5000)]):
        reply = await get(port, target, cc)
        assert reply.status == 200 and status_of(reply) == "Hit", cc
    assert len(backend.requests) == 1


async def test_a_no_cache_request_bypasses_with_cache_control(nursery, gateway):
    backend, port = await start(nursery, gateway, cache(cache_control=True))
    await get(port, "/cache/60")
    reply = await get(port, "/cache/60", [("cache-control", "no-cache")])
    assert status_of(reply) == "Bypass" and key_of(reply) is None
    assert len(backend.requests) == 2


async def test_a_no_store_request_is_cached_without_cache_control(nursery, gateway):
    _, port = await start(nursery, gateway, cache())
    await get(port)
    assert status_of(await get(port, headers=[("cache-control", "no-store")])) == "Hit"


async def test_an_authorization_header_does_not_bypass_the_cache(nursery, gateway):
    """Kong's handler tests ngx.var.authorization, which nginx does not have."""
    _, port = await start(nursery, gateway, cache(cache_control=True))
    await get(port, "/cache/60", [("authorization", "Bearer a")])
    assert status_of(await get(port, "/cache/60", [("authorization", "Bearer b")])) == "Hit"


# --- what is cached --------------------------------------------------------------------------------------------------


async def test_a_chunked_response_is_cached_and_served_with_a_length(nursery, gateway):
    _, port = await start(nursery, gateway, cache())
    first = await get(port, "/stream/3")
    assert status_of(first) == "Miss" and first.header("content-length") is None
    assert first.header("transfer-encoding") == "chunked"
    second = await get(port, "/stream/3")
    assert status_of(second) == "Hit" and second.body == first.body
    assert second.header("content-length") == str(len(first.body))


async def test_a_method_not_listed_bypasses(nursery, gateway):
    _, port = await start(nursery, gateway, cache())
    reply = await get(port, "/post", [("content-type", "application/json")], "POST", b'{"foo": "bar"}')
    assert reply.status == 200 and status_of(reply) == "Bypass"


async def test_post_is_cached_when_listed(nursery, gateway):
    _, port = await start(nursery, gateway, cache(request_method=["GET", "HEAD", "POST"]))
    ct = [("content-type", "application/json")]
    assert status_of(await get(port, "/post", ct, "POST", b'{"foo": "bar"}')) == "Miss"
    assert status_of(await get(port, "/post", ct, "POST", b'{"foo": "bar"}')) == "Hit"


async def test_a_hit_on_a_post_drops_its_body_and_keeps_the_connection(nursery, gateway):
    """nginx discards the body of a request Kong answers from the cache; the connection goes on."""
    backend, port = await start(nursery, gateway, cache(request_method=["POST"]))
    ct = [("content-type", "application/json")]
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            replies = [await client.request("POST", "/post", headers=ct, body=b'{"n": %d}' % i) for i in range(3)]
    assert [status_of(r) for r in replies] == ["Miss", "Hit", "Hit"]
    assert [r.header("connection") for r in replies] == [None, None, None]
    assert len(backend.requests) == 1


async def test_head_requests_are_never_stored(nursery, gateway):
    """nginx runs no body filter for a HEAD request: Kong's plugin never gets a body to store."""
    backend, port = await start(nursery, gateway, cache())
    assert status_of(await get(port, method="HEAD")) == "Miss"
    assert status_of(await get(port, method="HEAD")) == "Miss"
    assert len(backend.requests) == 2


async def test_a_status_not_listed_bypasses(nursery, gateway):
    _, port = await start(nursery, gateway, cache())
    reply = await get(port, "/status/418")
    assert reply.status == 418 and status_of(reply) == "Bypass"


async def test_a_listed_status_is_cached(nursery, gateway):
    _, port = await start(nursery, gateway, cache(response_code=[200, 417],
                                                  content_type=["text/html; charset=utf-8", "application/json"]))
    first = await get(port, "/status/417")
    assert first.status == 417 and status_of(first) == "Miss"
    second = await get(port, "/status/417")
    assert second.status == 417 and status_of(second) == "Hit"


async def test_a_proxied_204_and_304_are_cached_and_a_204_hit_drops_its_content_type(nursery, gateway):
    """Kong stores the empty body its body_filter sees at eof (kong/pdk/response.lua:577-578 `if eof and not
    body_buffer then return chunk end`; handler.lua:387 `if body then`: "" is true in Lua). A proxied 204 or 304
    reaches the body filters: nginx 1.27.1 makes them header-only only without a status line of their own
    (src/http/ngx_http_header_filter_module.c:208-244), and a proxied response keeps the upstream's
    (ngx_http_upstream.c:2945), so ngx_http_upstream_finalize_request sends the last buffer through the body
    filters (4645-4660, ngx_http_send_special(r, NGX_HTTP_LAST)). The hit is kong.response.exit(status, "", headers):
    ngx.status clears the status line (lua-nginx-module ngx_http_lua_misc.c:118), so the 204 is nginx's own and
    goes out without its Content-Type (header filter 226-228); a 304 keeps it."""
    backend, port = await start(nursery, gateway, cache(response_code=[204, 304],
                                                        content_type=["text/html; charset=utf-8"]))
    for status in (204, 304):
        first = await get(port, f"/status/{status}")
        second = await get(port, f"/status/{status}")
        assert (first.status, status_of(first)) == (status, "Miss")
        assert first.header("content-type") == "text/html; charset=utf-8"
        assert (second.status, status_of(second), second.body) == (status, "Hit", b"")
    assert second.header("content-type") == "text/html; charset=utf-8"  # the 304's
    hit_204 = await get(port, "/status/204")
    assert status_of(hit_204) == "Hit" and hit_204.header("content-type") is None
    assert len(backend.requests) == 2


async def test_a_content_type_not_listed_bypasses(nursery, gateway):
    _, port = await start(nursery, gateway, cache())
    assert status_of(await get(port, "/xml")) == "Bypass"


async def test_a_wildcard_content_type_caches_any(nursery, gateway):
    _, port = await start(nursery, gateway, cache(content_type=["*/*"]))
    first = await get(port, "/xml")
    assert status_of(first) == "Miss" and first.header("content-type") == "application/xml"
    second = await get(port, "/xml")
    assert status_of(second) == "Hit" and second.header("content-type") == "application/xml"


async def test_a_content_type_entry_with_parameters_needs_them(nursery, gateway):
    _, port = await start(nursery, gateway, cache(content_type=["application/xml; charset=UTF-8"]))
    reply = await get(port, "/xml")
    assert reply.header("content-type") == "application/xml" and status_of(reply) == "Bypass"


async def test_an_invalid_upstream_content_type_bypasses(nursery, gateway):
    _, port = await start(nursery, gateway, cache(content_type=["application/xml; charset=UTF-8"]))
    reply = await get(port, "/response-headers?Content-Type=application/xml;")
    assert reply.status == 200 and reply.header("content-type") == "application/xml;"
    assert status_of(reply) == "Bypass"


async def test_an_invalid_content_type_entry_matches_nothing(nursery, gateway):
    _, port = await start(nursery, gateway, cache(content_type=["application/xml;"]))
    reply = await get(port, "/xml")
    assert reply.status == 200 and status_of(reply) == "Bypass"


async def test_a_vary_response_header_does_not_split_the_cache(nursery, gateway):
    """Kong's plugin does not look at Vary (a TODO in its handler)."""
    _, port = await start(nursery, gateway, cache())
    await get(port, "/response-headers?Vary=Accept", [("accept", "application/json")])
    assert status_of(await get(port, "/response-headers?Vary=Accept", [("accept", "text/plain")])) == "Hit"


async def test_an_entry_too_large_for_the_store_is_served_as_a_miss_and_not_stored(nursery, gateway, monkeypatch,
                                                                                   caplog):
    monkeypatch.setattr("gateway.policies.proxy_cache.handler.ENTRY_LIMIT", 100)
    backend, port = await start(nursery, gateway, cache())
    with caplog.at_level(logging.WARNING, "gateway.policies.proxy_cache"):
        first = await get(port)
        assert first.status == 200 and status_of(first) == "Miss" and first.json()["n"] == 1
        assert status_of(await get(port)) == "Miss"
    assert len(backend.requests) == 2
    assert "no memory" in caplog.text


# --- upstream bodies that break off or stall --------------------------------------------------------------------------


PAGES = ["text/plain", "text/plain; charset=utf-8"]  # the upstream's type and the gateway's pages' (Kong's match)


async def start_bad(nursery: trio.Nursery, gateway: Any, backend: _Backend, **fields: Any) -> int:
    """`backend` behind service `svc`, a route for every path with proxy-cache on it, and the gateway: its port."""
    await nursery.start(backend.serve)
    return await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "paths": ["/"], "plugins": [cache(**fields.pop("config", {}))]}], **fields)]})


@pytest.mark.parametrize("mode", ["truncate", "truncate-chunked"])
async def test_a_body_cut_midway_is_never_stored(nursery, gateway, mode, caplog):
    """Kong stores at the body's end only, and nginx ends a cut upstream body without it: the next request goes
    upstream again. The cut one gets the gateway's 502 page (the body was read whole before the head), which is no
    more stored than the upstream's 200 it replaces, though 502 and its type are listed (a decision made on one
    response is not applied to another)."""
    backend = BadBackend(mode)  # 200 text/plain: cacheable, then the connection closes mid-body
    port = await start_bad(nursery, gateway, backend, config={"response_code": [200, 502], "content_type": PAGES})
    first = await get(port, "/cut")
    assert (first.status, status_of(first), key_of(first) is not None) == (502, "Bypass", True)
    second = await get(port, "/cut")
    assert (second.status, status_of(second)) == (502, "Bypass")
    assert len(backend.requests) == 2
    assert sum("failed mid-response" in r.getMessage() for r in caplog.records if r.levelname == "ERROR") == 2


class WholeThenCut(_Backend):
    """The first answer whole (200 text/plain), every later one cut after 10 of its 1000 bytes."""

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        if await self._read_request(stream, conn) is None:
            return
        if len(self.requests) == 1:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n"
                                  b"connection: close\r\n\r\nwhole")
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\n\r\n"
                              + b"x" * 10)
        await trio.sleep(0.05)


async def test_a_refresh_cut_midway_leaves_the_stale_entry_in_place(nursery, gateway, clock):
    """Kong stores nothing for a Refresh whose body is cut: the stale entry stays (not replaced by the gateway's 502
    page), so the next request is a Refresh again and reaches the upstream."""
    backend = WholeThenCut()
    port = await start_bad(nursery, gateway, backend, config={"cache_ttl": 2, "storage_ttl": 60})
    assert status_of(await get(port, "/page")) == "Miss"
    clock[0] += 3
    assert (await get(port, "/page")).status == 502  # a Refresh whose upstream answer is cut
    third = await get(port, "/page")
    assert (third.status, status_of(third)) == (502, "Bypass")  # a Refresh, cut again: not a stored 502
    assert len(backend.requests) == 3


async def test_a_body_stalled_past_read_timeout_is_a_504_logged_and_never_stored(nursery, gateway, caplog):
    """The body is read whole before the head goes out: an upstream silent past read_timeout mid-body gets the
    client the gateway's 504 page (as a cut there gets its 502), not a connection closed without a byte; the log
    names the upstream and the setting, as the other 504s; the next request goes upstream again."""
    backend = BadBackend("stall")  # 200 text/plain, Content-Length 1000, 10 bytes, then silence
    port = await start_bad(nursery, gateway, backend, read_timeout=200,
                           config={"response_code": [200, 504], "content_type": PAGES})
    with caplog.at_level(logging.INFO, "gateway.http"):
        data, _ = await raw_exchange(port, b"GET /stall HTTP/1.1\r\nhost: gateway.test\r\nconnection: close\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 "), data  # (not a connection closed without a byte)
        status, headers, body = parse_raw_response(data)
        assert (status, headers["x-cache-status"], len(body)) == (504, "Bypass", int(headers["content-length"]))
        second = await get(port, "/stall")
        assert (second.status, status_of(second)) == (504, "Bypass")
    assert len(backend.requests) == 2
    logged = [r.getMessage().partition(", client: ")[0] for r in caplog.records
              if "did not send the rest of its response" in r.getMessage() and r.levelname == "ERROR"]
    assert logged == [f"upstream 127.0.0.1:{backend.port} did not send the rest of its response within 0.2s "
                      "(read_timeout): 504"] * 2


async def test_the_gateways_own_error_page_with_a_listed_status_is_cached(nursery, gateway):
    """When the gateway's page is the request's only answer (the upstream is down), proxy-cache judges it as any
    response, as Kong's error handler runs the header and body filters: 502 listed in response_code is stored."""
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{free_port()}", [
        {"name": "r", "paths": ["/"], "plugins": [cache(response_code=[200, 502], content_type=PAGES)]}],
        retries=0)]})
    first = await get(port, "/down")
    assert (first.status, status_of(first)) == (502, "Miss")
    second = await get(port, "/down")
    assert (second.status, status_of(second), second.body) == (502, "Hit", first.body)


# --- the key ---------------------------------------------------------------------------------------------------------


async def test_query_arguments_are_part_of_the_key_in_any_order(nursery, gateway):
    _, port = await start(nursery, gateway, cache())
    assert status_of(await get(port, "/get?a=b&b=c")) == "Miss"
    assert status_of(await get(port, "/get?a=c")) == "Miss"
    assert status_of(await get(port, "/get?b=c&a=b")) == "Hit"


async def test_bare_query_arguments_are_keyed_by_name(nursery, gateway):
    _, port = await start(nursery, gateway, cache())
    assert status_of(await get(port, "/get?a&b")) == "Miss"
    assert status_of(await get(port, "/get?a&b")) == "Hit"


async def test_vary_query_params_limit_the_key_to_them(nursery, gateway):
    _, port = await start(nursery, gateway, cache(vary_query_params=["foo"]))
    assert status_of(await get(port, "/get?foo=b&b=c")) == "Miss"
    assert status_of(await get(port, "/get?b=d&foo=b")) == "Hit"


async def test_vary_headers_put_those_headers_in_the_key(nursery, gateway):
    _, port = await start(nursery, gateway, cache(vary_headers=["foo"]))
    assert status_of(await get(port, headers=[("foo", "bar")])) == "Miss"
    assert status_of(await get(port, headers=[("foo", "bar")])) == "Hit"
    assert status_of(await get(port, headers=[("foo", "baz")])) == "Miss"


async def test_ignore_uri_case_shares_one_entry(nursery, gateway):
    _, port = await start(nursery, gateway, cache(response_code=[404], ignore_uri_case=True))
    first = await get(port, "/nowhere/kong")
    assert first.status == 404 and status_of(first) == "Miss"
    second = await get(port, "/nowhere/KONG")
    assert second.status == 404 and status_of(second) == "Hit"
    assert key_of(second) == key_of(first) and second.body == first.body


async def test_the_uri_case_counts_by_default(nursery, gateway):
    _, port = await start(nursery, gateway, cache(response_code=[404]))
    first = await get(port, "/nowhere/kong")
    second = await get(port, "/nowhere/KONG")
    assert status_of(first) == status_of(second) == "Miss" and key_of(first) != key_of(second)


async def test_a_global_plugin_keys_each_route_apart(nursery, gateway):
    routes = [{"name": "r3", "hosts": ["route-3.test"]}, {"name": "r4", "hosts": ["route-4.test"]}]
    _, port = await start(nursery, gateway, routes=routes, plugins=[cache()])
    first = await get(port, host="route-3.test")
    second = await get(port, host="route-4.test")
    assert status_of(first) == status_of(second) == "Miss" and key_of(first) != key_of(second)


CONSUMERS = [{"username": "bob", "keyauth_credentials": [{"key": "bob"}]},
             {"username": "alice", "keyauth_credentials": [{"key": "alice"}]}]


async def test_consumers_have_caches_of_their_own(nursery, gateway):
    routes = [{"name": "r5", "paths": ["/"], "plugins": [plugin("key-auth"), cache()]}]
    _, port = await start(nursery, gateway, routes=routes, consumers=CONSUMERS)
    for key in ("bob", "alice"):
        assert status_of(await get(port, headers=[("apikey", key)])) == "Miss"
        assert status_of(await get(port, headers=[("apikey", key)])) == "Hit"


async def test_an_unauthenticated_request_gets_no_cache_status(nursery, gateway):
    routes = [{"name": "r5", "paths": ["/"], "plugins": [plugin("key-auth"), cache()]}]
    _, port = await start(nursery, gateway, routes=routes, consumers=CONSUMERS)
    reply = await get(port)
    assert reply.status == 401 and status_of(reply) is None


async def test_a_consumer_has_different_keys_on_different_routes(nursery, gateway):
    routes = [{"name": f"r{n}", "hosts": [f"route-{n}.test"], "plugins": [plugin("key-auth"), cache()]}
              for n in (13, 14)]
    _, port = await start(nursery, gateway, routes=routes, consumers=CONSUMERS)
    first = await get(port, headers=[("apikey", "bob")], host="route-13.test")
    second = await get(port, headers=[("apikey", "bob")], host="route-14.test")
    assert first.status == second.status == 200 and key_of(first) != key_of(second)


# --- with other plugins ----------------------------------------------------------------------------------------------


async def test_other_plugins_header_filters_run_on_a_cached_answer(nursery, gateway):
    _, port = await start(nursery, gateway, cache(), plugin("response-transformer", add={"headers": ["x-added:1"]}))
    await get(port)
    hit = await get(port)
    assert status_of(hit) == "Hit" and hit.header("x-added") == "1"


async def test_a_hit_is_logged_as_the_gateways_own_answer_with_no_upstream_try(nursery, gateway, tmp_path):
    backend = Httpbin()
    await nursery.start(backend.serve)
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "paths": ["/"], "plugins": [cache()]}])]}, access_log=str(log))
    await get(port)
    await get(port)
    with trio.fail_after(TIMEOUT):
        while len(lines := log.read_text().splitlines() if log.exists() else []) < 2:
            await trio.sleep(0.02)
    miss, hit = (json.loads(line) for line in lines)
    assert miss["source"] == "upstream" and miss["tries"]
    assert hit["source"] == "kong" and hit["tries"] == [] and hit["upstream_status"] == ""
    assert hit["response"]["status"] == 200 and hit["response"]["headers"]["x-cache-status"] == "Hit"


async def test_an_absolute_form_request_cannot_seed_the_entry_of_the_origin_form_request(nursery, gateway):
    """Kong keys the request line as sent (proxy-cache/handler.lua:243 `ngx_re_sub(ngx.var.request, ...)`; nginx's
    $request is r->request_line, release-1.27.1 src/http/ngx_http_request.c:1122-1123): `GET http://evil.test/get`
    has an entry of its own, so its answer (made for X-Forwarded-Host: evil.test) is never a Hit for `GET /get`."""
    backend, port = await start(nursery, gateway, cache())
    data, _ = await raw_exchange(port, b"GET http://evil.test/get HTTP/1.1\r\nhost: gateway.test\r\n"
                                       b"connection: close\r\n\r\n")
    status, headers, _ = parse_raw_response(data)
    assert (status, headers.get("x-cache-status")) == (200, "Miss")
    normal = await get(port, "/get")
    assert status_of(normal) == "Miss", (status_of(normal), normal.json()["headers"].get("x-forwarded-host"))
    assert normal.json()["headers"].get("x-forwarded-host") == "gateway.test"
    assert len(backend.requests) == 2
    assert key_of(normal) == hashlib.sha256(f"{ROUTE_ID}|GET|GET /get HTTP/1.1||".encode()).hexdigest()
    assert headers.get("x-cache-key") == hashlib.sha256(
        f"{ROUTE_ID}|GET|GET http://evil.test/get HTTP/1.1||".encode()).hexdigest()
