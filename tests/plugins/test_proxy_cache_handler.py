"""proxy-cache's handler over a stand-in exchange and host store (no sockets): what it stores, for how long, what a
hit sends, and the store's failures."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest

from gateway.bus import protocol as p
from gateway.http.codec import Request
from gateway.http.kong_headers import SERVER_TOKEN, KongHeaders
from gateway.http.server import HEADERS_SET, Exchange
from gateway.policies.proxy_cache import handler as handler_module
from gateway.policies.proxy_cache.entry import Entry, decode, encode
from gateway.policies.proxy_cache.handler import ProxyCache
from gateway.policies.proxy_cache.schema import ProxyCacheConfig
from gateway.stores import HostCache

NOW = 1_700_000_000
JSON = [(b"content-type", b"application/json")]


class Store:
    """SharedState's cache calls, in memory; `stored` records (dictionary, key, ttl) of every store."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], bytes] = {}
        self.stored: list[tuple[str, str, float]] = []
        self.purged: list[str] = []

    async def cache_fetch(self, dictionary: str, key: str) -> bytes | None:
        return self.entries.get((dictionary, key))

    def cache_store(self, dictionary: str, key: str, entry: bytes, ttl: float) -> None:
        self.entries[(dictionary, key)] = entry
        self.stored.append((dictionary, key, ttl))

    def cache_purge(self, dictionary: str, key: str) -> None:
        self.entries.pop((dictionary, key), None)
        self.purged.append(key)


class Ex:
    """What the handler uses of an Exchange; `sent` is the answer it gave itself (status, headers, body)."""

    def __init__(self, method: bytes = b"GET", target: bytes = b"/x", headers: list | None = None,
                 body: bytes = b"") -> None:
        length = [(b"content-length", b"%d" % len(body))] if body else []
        self.request = Request(method, target, [(b"host", b"h")] + (headers or []) + length, b"1.1", True, size=100)
        self.body_received = 0
        self.consumer = None
        self.route = None
        self.state: dict[str, Any] | None = None
        self.request_done = True
        self.close_after = False
        self.request_id = b""
        self.tries: list | None = None  # an upstream's answer has its try
        self.phases = None  # (KongHeaders: no other plugin's header filter)
        self.body = body
        self.sent: tuple[int, list, bytes] | None = None

    set_response_header = Exchange.set_response_header  # (ex.state: what access set, applied as the pipeline does)

    def request_line_method(self) -> bytes:
        return self.request.method

    def request_uri(self) -> bytes:
        return self.request.target

    async def read_body(self, limit: int) -> tuple[bytes, bool]:
        self.body_received = min(len(self.body), limit + 1)
        return self.body[:limit + 1], len(self.body) <= limit

    def take_buffered_body(self) -> tuple[bytes, bool]:  # (a body that came with its head, for nginx's preread)
        return b"", not self.body

    def hold_body(self, first: bytes) -> None:
        pass

    async def send_head(self, status: int, headers: list, body: bytes = b"", end: bool = False) -> None:
        self.sent = (status, headers, body)

    async def respond_error_page(self, status: int) -> None:
        self.sent = (status, [], b"error page")


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    now = [NOW]
    monkeypatch.setattr(handler_module, "now", lambda: now[0])
    return now


def cache(store: Store, **config: Any) -> ProxyCache:
    return ProxyCache(msgspec.convert({"strategy": "memory", **config}, ProxyCacheConfig), store)


def with_headers_set(ex: Ex, headers: list) -> list:
    """The response headers with those access set (Exchange.set_response_header), as the response phases add them
    before the header filters."""
    headers_set = ex.state.pop(HEADERS_SET, []) if ex.state else []
    return [hv for hv in headers if hv[0] not in {n for n, _ in headers_set}] + headers_set


async def miss(policy: ProxyCache, ex: Ex, status: int = 200, headers: list | None = None,
               body: bytes = b"{}") -> list:
    """A request that goes upstream: access, then the response phases as the pipeline runs them."""
    assert await policy.access(ex) is False  # type: ignore[arg-type]
    headers = with_headers_set(ex, list(headers if headers is not None else JSON))
    policy.wants_body(ex, status, headers)  # type: ignore[arg-type]
    headers = policy.header_filter(ex, status, headers)  # type: ignore[arg-type]
    if policy.wants_body(ex, status, headers):  # type: ignore[arg-type]
        policy.body_filter(ex, status, headers, body)  # type: ignore[arg-type]
    return headers


async def test_a_cacheable_response_is_stored_as_kong_stores_it():
    store = Store()
    policy = cache(store)
    ex = Ex(headers=[(b"x-in", b"1")])
    headers = await miss(policy, ex, headers=JSON + [(b"x-request-id", b"r1"), (b"content-length", b"2")])
    assert (b"x-cache-status", b"Miss") in headers
    [(dictionary, key, ttl)] = store.stored
    assert dictionary == "kong_db_cache" and ttl == 300
    entry = decode(store.entries[(dictionary, key)])
    assert entry == Entry(status=200, headers=JSON + [(b"content-length", b"2"), (b"x-cache-key", key.encode()),
                                                      (b"x-cache-status", b"Miss")],
                          body=b"{}", timestamp=NOW, ttl=300, req_body=b"")


async def test_storage_ttl_is_the_storage_time_and_cache_ttl_the_entrys():
    store = Store()
    await miss(cache(store, cache_ttl=2, storage_ttl=60), Ex())
    [(_, key, ttl)] = store.stored
    assert ttl == 60 and decode(store.entries[("kong_db_cache", key)]).ttl == 2  # type: ignore[union-attr]


async def test_with_cache_control_the_response_ttl_is_the_storage_time():
    store = Store()
    await miss(cache(store, cache_control=True), Ex(), headers=JSON + [(b"cache-control", b"max-age=0.5")])
    assert store.stored[0][2] == 0.5


async def test_a_ttl_of_twenty_digits_is_stored_as_the_double_kong_stores():
    """Kong's TTLs are doubles: max-age=99999999999999999999, or a cache_ttl / storage_ttl that large, is 1e20, which
    the entry, the bus message to the keeper and the keeper's store all take (an int past 2**64 - 1 could not be
    encoded)."""
    for config, headers in (({"cache_control": True}, [(b"cache-control", b"max-age=99999999999999999999")]),
                            ({"cache_ttl": 10**20}, []), ({"cache_ttl": 10**20, "storage_ttl": 10**20}, [])):
        store = Store()
        await miss(cache(store, **config), Ex(), headers=JSON + headers)
        [(_, key, ttl)] = store.stored
        assert ttl == 1e20 and type(ttl) is float, config
        assert decode(store.entries[("kong_db_cache", key)]).ttl == 1e20  # type: ignore[union-attr]
        assert p.decode(p.encode(p.CacheStore(dictionary="kong_db_cache", key=key, entry=b"e", ttl=ttl))) == \
            p.CacheStore(dictionary="kong_db_cache", key=key, entry=b"e", ttl=1e20)
        host = HostCache()
        assert host.set(key, b"e", ttl, 10.0) and host.get(key, 1e19) == b"e"


async def test_a_stored_ttl_keeps_the_16_digits_kongs_cjson_writes():
    """Kong's entry is cjson with 16 significant digits: a 17-digit TTL is read back rounded (max-stale and min-fresh
    see that), while the store keeps the entry for the TTL itself."""
    store = Store()
    await miss(cache(store, cache_control=True), Ex(),
               headers=JSON + [(b"cache-control", b"max-age=12345678901234567")])
    [(_, key, ttl)] = store.stored
    assert ttl == 12345678901234568.0
    assert decode(store.entries[("kong_db_cache", key)]).ttl == 12345678901234570.0  # type: ignore[union-attr]


async def test_a_hits_via_is_the_gateways_alone():
    """Kong (3.8+) extends $upstream_http_via, which a hit has none of: the stored Via is replaced by the gateway's
    own; with Via off it is left as stored."""
    store = Store()
    policy = cache(store)
    await miss(policy, Ex(), headers=JSON + [(b"via", b"1.1 origin-cache"), (b"server", b"origin")])
    ex = Ex()
    assert await policy.access(ex) is True  # type: ignore[arg-type]
    stored = ex.sent[1]  # type: ignore[index]
    ex.tries, ex.started = None, 0.0  # (what KongHeaders reads of an Exchange: no upstream try)
    for setting in (["server_tokens", "latency_tokens", "X-Kong-Request-Id"], ["Via", "X-Kong-Request-Id"]):
        headers = list(stored)
        lines = KongHeaders.from_setting(setting).add(ex, headers, 200)
        assert b"via" not in dict(headers) and (b"server", b"origin") in headers
        assert lines.count(b"Via: 1.1 " + SERVER_TOKEN + b"\r\n") == 1 and b"Server:" not in lines
    headers = list(stored)
    assert b"Via" not in KongHeaders.from_setting(["Server"]).add(ex, headers, 200)
    assert (b"via", b"1.1 origin-cache") in headers


async def test_a_zero_storage_ttl_stores_for_good():
    store = Store()
    await miss(cache(store, storage_ttl=0), Ex())
    assert store.stored[0][2] == 0


async def test_the_entry_keeps_the_request_body_nginx_kept_in_memory():
    """proxy-cache/handler.lua:280 `ctx.req_body = kong.request.get_raw_body()`: the body when nginx kept it in
    memory (a Content-Length body's buffer is what is left past the preread when under 8k + 25%,
    ngx_http_request_body.c:175-187: 9000 bytes are), nil for one it wrote to a file (20000 bytes)."""
    store = Store()
    policy = cache(store, request_method=["POST"])
    await miss(policy, Ex(b"POST", body=b"a=1"))
    await miss(policy, Ex(b"POST", b"/y", body=b"x" * 9000))
    await miss(policy, Ex(b"POST", b"/z", body=b"x" * 20000))
    first, second, third = (decode(store.entries[("kong_db_cache", key)]) for _, key, _ in store.stored)
    assert first.req_body == b"a=1" and second.req_body == b"x" * 9000  # type: ignore[union-attr]
    assert third.req_body is None  # type: ignore[union-attr]


async def test_the_gateways_own_204_and_304_are_never_stored():
    """nginx 1.27.1 makes a 204 or 304 without an upstream's status line header-only
    (src/http/ngx_http_header_filter_module.c:226-246): lua-nginx-module runs no body filter for it
    (ngx_http_lua_util.c ngx_http_lua_send_chain_link, `if (r->header_only)`), so Kong's body_filter never stores
    request-termination's 204."""
    store = Store()
    policy = cache(store, response_code=[204, 304])
    await miss(policy, Ex(), status=204, body=b"")
    await miss(policy, Ex(b"GET", b"/y"), status=304, body=b"")
    assert store.stored == []


async def test_a_proxied_204_and_304_are_stored_with_an_empty_body():
    """A proxied response keeps the upstream's status line (ngx_http_upstream.c:2945), so nginx does not make it
    header-only and its empty last buffer reaches the body filters (4645-4660); kong.response.get_raw_body gives ""
    at eof (kong/pdk/response.lua:577-578) and handler.lua:387 `if body then` stores it."""
    store = Store()
    policy = cache(store, response_code=[204, 304])
    for status, target in ((204, b"/x"), (304, b"/y")):
        ex = Ex(b"GET", target)
        ex.tries = [object()]
        await miss(policy, ex, status=status, body=b"")
    entries = [decode(store.entries[("kong_db_cache", key)]) for _, key, _ in store.stored]
    assert [(e.status, e.body) for e in entries] == [(204, b""), (304, b"")]  # type: ignore[union-attr]


async def test_a_204_hit_has_no_content_type_and_a_304_hit_keeps_it():
    """A hit is kong.response.exit(res.status, res.body, res.headers) (handler.lua:348), whose ngx.status clears the
    status line (lua-nginx-module ngx_http_lua_misc.c:118): nginx's header filter drops a 204's Content-Type
    (ngx_http_header_filter_module.c:226-228) and keeps a 304's."""
    store = Store()
    policy = cache(store, response_code=[204, 304])
    sent = []
    for status, target in ((204, b"/x"), (304, b"/y")):
        ex = Ex(b"GET", target)
        ex.tries = [object()]
        await miss(policy, ex, status=status, body=b"")
        hit = Ex(b"GET", target)
        assert await policy.access(hit) is True  # type: ignore[arg-type]
        sent.append(hit.sent)
    (s204, h204, b204), (s304, h304, b304) = sent  # type: ignore[misc]
    assert (s204, b204, dict(h204).get(b"content-type")) == (204, b"", None)
    assert (s304, b304, dict(h304).get(b"content-type")) == (304, b"", b"application/json")


async def test_an_entry_over_the_limit_is_not_stored_and_logged(caplog: pytest.LogCaptureFixture):
    store = Store()
    policy = cache(store)
    policy.entry_limit = 1000
    with caplog.at_level(logging.WARNING, "gateway.policies.proxy_cache"):
        headers = await miss(policy, Ex(), body=b"x" * 1000)
    assert store.stored == []
    assert (b"x-cache-status", b"Miss") in headers
    assert "no memory" in caplog.text


async def test_a_hit_sends_the_stored_response_without_hop_by_hop_headers():
    store = Store()
    policy = cache(store)
    stored = JSON + [(b"content-length", b"999"), (b"te", b"x"), (b"upgrade", b"y"), (b"x-ratelimit-remaining-minute",
                                                                                        b"4"),
                     (b"x-ratelimit-limit-minute", b"5"), (b"age", b"77"), (b"x-cache-status", b"Miss"),
                     (b"x-request-id", b"old"), (b"x-kept", b"1")]
    await miss(policy, Ex(), headers=stored, body=b'{"a":1}')
    ex = Ex()
    assert await policy.access(ex) is True  # type: ignore[arg-type]
    status, headers, body = ex.sent  # type: ignore[misc]
    names = [n for n, _ in headers]
    assert status == 200 and body == b'{"a":1}'
    assert (b"content-length", b"7") in headers and names.count(b"content-length") == 1
    assert b"te" not in names and b"upgrade" not in names and b"x-ratelimit-remaining-minute" not in names
    assert (b"x-ratelimit-limit-minute", b"5") in headers and (b"x-kept", b"1") in headers
    assert (b"age", b"0") in headers and (b"x-cache-status", b"Hit") in headers
    assert names.count(b"x-cache-status") == 1 and names.count(b"age") == 1
    assert (b"x-request-id", b"old") not in headers and names.count(b"x-request-id") == 1


async def test_a_hit_says_how_old_the_entry_is_in_whole_seconds(clock: list[int]):
    store = Store()
    policy = cache(store)
    await miss(policy, Ex())
    clock[0] += 42
    ex = Ex()
    await policy.access(ex)  # type: ignore[arg-type]
    assert (b"age", b"42") in ex.sent[1]  # type: ignore[index]


async def test_an_entry_of_another_version_is_purged_and_fetched_again_as_a_bypass():
    store = Store()
    policy = cache(store)
    key = policy.key_of(Ex())  # type: ignore[arg-type]
    store.entries[("kong_db_cache", key)] = encode(Entry(status=200, headers=JSON, body=b"{}", timestamp=NOW,
                                                         ttl=300, version=0))
    headers = await miss(policy, Ex())
    assert store.purged == [key]
    assert (b"x-cache-status", b"Bypass") in headers
    assert decode(store.entries[("kong_db_cache", key)]).version == 1  # type: ignore[union-attr]


async def test_an_entry_that_cannot_be_read_is_left_alone_without_a_cache_status(caplog: pytest.LogCaptureFixture):
    store = Store()
    policy = cache(store)
    key = policy.key_of(Ex())  # type: ignore[arg-type]
    store.entries[("kong_db_cache", key)] = b"\x00not an entry"
    with caplog.at_level(logging.ERROR, "gateway.policies.proxy_cache"):
        headers = await miss(policy, Ex())
    assert [n for n, _ in headers if n.startswith(b"x-cache")] == [b"x-cache-key"]
    assert store.stored == [] and "could not decode" in caplog.text


async def test_an_uncacheable_response_turns_miss_into_bypass_and_is_not_read_whole():
    store = Store()
    policy = cache(store)
    ex = Ex()
    await policy.access(ex)  # type: ignore[arg-type]
    xml = [(b"content-type", b"application/xml"), (b"x-cache-status", b"upstream's")]
    assert policy.wants_body(ex, 200, xml) is False  # type: ignore[arg-type]
    headers = policy.header_filter(ex, 200, with_headers_set(ex, xml))  # type: ignore[arg-type]
    assert [v for n, v in headers if n == b"x-cache-status"] == [b"Bypass"]
    assert policy.wants_body(ex, 200, headers) is False  # type: ignore[arg-type]


async def test_only_if_cached_without_an_entry_is_a_504():
    policy = cache(Store(), cache_control=True)
    ex = Ex(headers=[(b"cache-control", b"only-if-cached")])
    assert await policy.access(ex) is True  # type: ignore[arg-type]
    assert ex.sent[0] == 504  # type: ignore[index]


async def test_without_a_host_store_every_request_is_a_miss():
    policy = ProxyCache(msgspec.convert({"strategy": "memory"}, ProxyCacheConfig), None)
    headers = await miss(policy, Ex())
    assert (b"x-cache-status", b"Miss") in headers


async def test_an_answer_in_place_of_the_response_judged_is_never_stored():
    """The header filters run a second time when the gateway answers in place of a response they judged (its 502
    page for a body cut while read whole): a decision on the upstream's 200 is not applied to that page, which is
    not stored though its status and type are listed, and says Bypass."""
    store = Store()
    policy = cache(store, response_code=[200, 502], content_type=["application/json"])
    ex = Ex()
    await policy.access(ex)  # type: ignore[arg-type]
    policy.header_filter(ex, 200, with_headers_set(ex, list(JSON)))  # type: ignore[arg-type]
    page = policy.header_filter(ex, 502, list(JSON))  # type: ignore[arg-type]
    assert (b"x-cache-status", b"Bypass") in page
    assert policy.wants_body(ex, 502, page) is False  # type: ignore[arg-type]
    policy.body_filter(ex, 502, page, b'{"message": "An invalid response was received"}')  # type: ignore[arg-type]
    assert store.stored == []


async def test_a_hit_sends_a_stored_header_names_underscores_as_dashes():
    """A hit is kong.response.exit(res.status, res.body, res.headers) (handler.lua:348), which sets each stored
    header with ngx.header (pdk/response.lua:669); lua-nginx-module writes its "_" as "-"
    (lua_transform_underscores_in_response_headers, on by default: ngx_http_lua_headers.c 980-988). The miss, which
    nginx relays as the upstream sent it, and the stored entry (GET /proxy-cache) keep the upstream's name."""
    store = Store()
    policy = cache(store)
    missed = await miss(policy, Ex(), headers=JSON + [(b"x_foo", b"1"), (b"x-bar", b"2")])
    assert (b"x_foo", b"1") in missed
    [raw] = store.entries.values()
    assert (b"x_foo", b"1") in decode(raw).headers  # type: ignore[union-attr]
    ex = Ex()
    assert await policy.access(ex) is True  # type: ignore[arg-type]
    names = [n for n, _ in ex.sent[1]]  # type: ignore[index]
    assert (b"x-foo", b"1") in ex.sent[1] and b"x_foo" not in names  # type: ignore[index]
    assert (b"x-bar", b"2") in ex.sent[1]  # type: ignore[index]


async def test_a_stored_name_that_becomes_one_a_hit_does_not_send_is_dropped():
    """handler.lua's overwritable_header tests the stored name (lower-cased): `content_length` and
    `x-ratelimit_remaining` pass it, and ngx.header sends them as Content-Length (the stored value, in place of the
    body's length) and X-RateLimit-Remaining. The gateway frames the body itself: the Content-Length a hit sends is
    its body's, once; the rate-limiting header, tested by its stored name as Kong tests it, goes out."""
    store = Store()
    policy = cache(store)
    await miss(policy, Ex(), headers=JSON + [(b"content_length", b"99"), (b"x-ratelimit_remaining", b"3")],
               body=b'{"a":1}')
    ex = Ex()
    assert await policy.access(ex) is True  # type: ignore[arg-type]
    headers = ex.sent[1]  # type: ignore[index]
    assert [v for n, v in headers if n == b"content-length"] == [b"7"]
    assert (b"x-ratelimit-remaining", b"3") in headers
