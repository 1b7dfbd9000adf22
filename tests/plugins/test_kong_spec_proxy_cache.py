"""proxy-cache against Kong's own source and spec (kong/plugins/proxy-cache, spec/03-plugins/31-proxy-cache): the
divergences an audit found, each stated as Kong behaves.

The tests marked xfail need changes outside the plugin's folder (the gateway's response headers, the pipeline, the
request line): they state Kong's behaviour and turn into failures (strict) once the change is made."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from urllib.parse import quote

import msgspec
import pytest
import trio
from backends import service
from plugin_helpers import TIMEOUT, http_codec, plugin, refused  # noqa: F401 - http_codec: the fixture
from test_plugin_proxy_cache import ROUTE_ID, Httpbin, cache, get, key_of, start, status_of

from gateway.policies.proxy_cache.rules import Rules, lua_number, parse_directives, resource_ttl
from gateway.policies.proxy_cache.schema import ProxyCacheConfig

NOW = 1_700_000_000


def rules(**config: object) -> Rules:
    return Rules(msgspec.convert({"strategy": "memory", **config}, ProxyCacheConfig))


# --- config: Kong's strings are never empty (kong/db/schema/init.lua: "empty strings are not accepted by default") ---


def test_an_empty_content_type_entry_is_refused():
    assert "config.content_type[1]" in refused(plugin("proxy-cache", strategy="memory",
                                                      content_type=["text/plain", ""]))


def test_an_empty_vary_header_name_is_refused():
    assert "config.vary_headers[0]" in refused(plugin("proxy-cache", strategy="memory", vary_headers=[""]))


def test_an_empty_vary_query_param_is_refused():
    assert "config.vary_query_params[0]" in refused(plugin("proxy-cache", strategy="memory",
                                                           vary_query_params=[""]))


def test_an_empty_dictionary_name_is_refused_for_its_length():
    """Kong's field check (len_min 1) fails before its entity check would look for the shared dict."""
    error = refused(plugin("proxy-cache", strategy="memory", memory={"dictionary_name": ""}))
    assert "config.memory.dictionary_name" in error and "missing shared dict" not in error


# --- numbers in Cache-Control: LuaJIT's tonumber (kong/tools/http.lua parse_directive_header) -----------------------


@pytest.mark.parametrize(("text", "value"), [("inf", math.inf), ("-Infinity", -math.inf), (" INF ", math.inf),
                                             ("0x1p4", 16.0), ("0x1.8", 1.5), ("0X.8", 0.5)])
def test_infinities_and_hex_floats_are_numbers_as_luajit_reads_them(text, value):
    assert lua_number(text) == value


@pytest.mark.parametrize("text", ["nan", "NaN"])
def test_nan_is_a_number_as_luajit_reads_it(text):
    number = lua_number(text)
    assert isinstance(number, float) and math.isnan(number)


@pytest.mark.parametrize("text", ["infinit", "in", "0x", "0x1p", "0xg", "1e", "nan1"])
def test_what_luajit_does_not_read_is_not_a_number(text):
    assert lua_number(text) is None


def test_a_nan_max_age_gives_no_ttl():
    """LuaJIT's math.max(nan, 0) is 0 (SSE maxsd): the response is not cacheable."""
    assert resource_ttl(parse_directives(b"max-age=nan"), None, NOW) == 0


def test_an_infinite_min_fresh_always_refreshes():
    """handler.lua: `res.ttl - (time() - res.timestamp) < cc["min-fresh"]`, true for any entry when it is inf."""
    assert rules(cache_control=True).freshness(NOW, 3600, NOW, parse_directives(b"min-fresh=inf")) == "Refresh"


@pytest.mark.parametrize("max_age", ["inf", "Infinity", "1e999"])
async def test_an_infinite_max_age_is_a_miss_never_stored(nursery, gateway, caplog, max_age):
    """An infinite TTL makes the response cacheable (calculate_resource_ttl > 0), but strategies/memory.lua's
    cjson.encode refuses the entry (its ttl is not a JSON number): "could not encode request object", logged, and
    every request is a Miss."""
    backend, port = await start(nursery, gateway, cache(cache_control=True))
    target = "/response-headers?Cache-Control=" + quote(f"max-age={max_age}")
    with caplog.at_level(logging.WARNING, "gateway.policies.proxy_cache"):
        assert status_of(await get(port, target)) == "Miss"
        assert status_of(await get(port, target)) == "Miss"
    assert len(backend.requests) == 2
    assert "could not encode request object" in caplog.text



# --- the log of a hit ------------------------------------------------------------------------------------------------


async def test_a_hit_is_logged_with_an_empty_list_of_tries(nursery, gateway, tmp_path):
    """kong/runloop/handler.lua's access.before runs balancer_prepare (ctx.balancer_data.tries = {}) before the
    plugins' access: the log of a Hit (kong.log.serialize) has `tries: []`, and its source is "kong" (get_source's
    "exit")."""
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
    hit = json.loads(lines[1])
    assert hit["source"] == "kong" and hit["tries"] == [] and hit["upstream_status"] == ""
    assert hit["response"]["headers"]["x-cache-status"] == "Hit"

# --- needing changes outside gateway/policies/proxy_cache ------------------------------------------------------------


async def test_a_hit_carries_kongs_headers_of_a_proxied_response(nursery, gateway):
    """02-access_spec.lua "displays Kong core headers": a Hit has X-Kong-Proxy-Latency and X-Kong-Upstream-Latency
    (the handler sets ngx.ctx.KONG_PROXIED, so runloop's header_filter treats the answer as proxied: Via too, and no
    X-Kong-Response-Latency)."""
    _, port = await start(nursery, gateway, cache())
    await get(port, "/get?show-me=proxy-latency")
    hit = await get(port, "/get?show-me=proxy-latency")
    assert status_of(hit) == "Hit"
    assert (hit.header("x-kong-proxy-latency") or "").isdigit()
    assert (hit.header("x-kong-upstream-latency") or "").isdigit()
    assert hit.header("via") is not None and hit.header("x-kong-response-latency") is None


async def test_a_hit_keeps_the_upstreams_server_header(nursery, gateway):
    """Kong stores the upstream's Server header (proxy_pass_header Server) and, the hit being proxied, runloop adds
    its own only when there is none."""
    _, port = await start(nursery, gateway, cache())
    await get(port, "/response-headers?Server=gunicorn")
    hit = await get(port, "/response-headers?Server=gunicorn")
    assert status_of(hit) == "Hit" and hit.header("server") == "gunicorn"


async def test_the_key_hashes_the_request_line_as_the_client_sent_it(nursery, gateway):
    """cache_key.lua hashes ngx.var.request (the client's request line, whatever request-transformer's http_method
    made of the method) next to kong.request.get_method() (the method now)."""
    _, port = await start(nursery, gateway, plugin("request-transformer", http_method="POST"),
                          cache(request_method=["POST"]))
    reply = await get(port, "/get")
    assert key_of(reply) == hashlib.sha256(f"{ROUTE_ID}|POST|GET /get HTTP/1.1||".encode()).hexdigest()


async def test_the_cache_headers_set_in_access_reach_earlier_header_filters(nursery, gateway):
    """handler.lua sets X-Cache-Key and X-Cache-Status in access (kong.response.set_header), so the header filters
    of plugins of higher priority see them: response-transformer (800) removes them from a Miss as from a Hit."""
    _, port = await start(nursery, gateway, cache(),
                          plugin("response-transformer", remove={"headers": ["x-cache-key"]}))
    miss = await get(port)
    assert status_of(miss) == "Miss" and key_of(miss) is None



async def test_a_response_made_cacheable_by_an_earlier_header_filter_is_stored(nursery, gateway):
    """handler.lua decides in header_filter, after the header filters of plugins of higher priority, and its
    body_filter then buffers the body (kong.response.get_raw_body): a streamed response that response-transformer
    (800) gives a cacheable Content-Type is stored, and the next request is a Hit."""
    _, port = await start(nursery, gateway, cache(content_type=["text/plain"]),
                          plugin("response-transformer", replace={"headers": ["content-type:text/plain"]}))
    assert status_of(await get(port, "/stream/3")) == "Miss"
    assert status_of(await get(port, "/stream/3")) == "Hit"


async def test_a_cache_hit_passes_nginxs_conditional_checks_and_a_miss_does_not(nursery, gateway):
    """A hit is kong.response.exit's 200, which nginx's not_modified filter sees (a proxied miss skips it): the same
    `If-None-Match: *` gets the upstream's 200 on the miss and a 304 without a body on the hit."""
    _, port = await start(nursery, gateway, cache())
    miss = await get(port, headers=[("if-none-match", "*")])
    hit = await get(port, headers=[("if-none-match", "*")])
    assert (miss.status, status_of(miss), bool(miss.body)) == (200, "Miss", True)
    assert (hit.status, status_of(hit), hit.body) == (304, "Hit", b"")
    assert hit.header("content-type") is None
