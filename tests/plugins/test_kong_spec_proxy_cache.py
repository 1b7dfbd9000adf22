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

import h11
import msgspec
import pytest
import trio
from backends import _Backend, service
from plugin_helpers import TIMEOUT, http_codec, plugin, refused  # noqa: F401 - http_codec: the fixture
from test_plugin_proxy_cache import ROUTE_ID, Httpbin, cache, get, key_of, start, status_of

from gateway.config import parse_config
from gateway.policies.base import LuaError
from gateway.policies.proxy_cache.handler import ProxyCache
from gateway.policies.proxy_cache.rules import Rules, lua_number, parse_directives, resource_ttl
from gateway.policies.proxy_cache.schema import ProxyCacheConfig
from gateway.runtime import compile_config

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


def test_ignore_uri_case_null_is_accepted_and_off():
    """kong/plugins/proxy-cache/schema.lua:55-59: ignore_uri_case is `required = false`, so an explicit null
    validates (kong/db/schema/init.lua), is nil once loaded, and handler.lua:246 `if conf.ignore_uri_case` reads it
    as false."""
    compile_config(parse_config(_plugin_doc({"ignore_uri_case": None}), "<test>"))  # what check-config runs
    assert ProxyCache(_config(ignore_uri_case=None)).ignore_uri_case is False


def test_a_response_headers_field_set_to_null_is_accepted_and_off():
    """kong/plugins/proxy-cache/schema.lua:81-83: `age = {type = "boolean", default = true}` and the X-Cache-*
    fields are not required: null validates and is nil, so `conf.response_headers[header]` (handler.lua:55, 67)
    leaves the header out."""
    compile_config(parse_config(_plugin_doc({"response_headers": {"age": None}}), "<test>"))
    policy = ProxyCache(_config(response_headers={"age": None, "X-Cache-Status": None, "X-Cache-Key": None}))
    assert (policy.show_age, policy.show_status, policy.show_key) == (False, False, False)


def _plugin_doc(config: dict) -> str:
    return json.dumps({"_format_version": "3.0", "services": [{
        "name": "s", "url": "http://127.0.0.1:9",
        "routes": [{"name": "r", "paths": ["/"],
                    "plugins": [{"name": "proxy-cache", "config": {"strategy": "memory", **config}}]}]}]})


def _config(**config: object) -> ProxyCacheConfig:
    return msgspec.convert({"strategy": "memory", **config}, ProxyCacheConfig)


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



# --- Kong's Lua errors: a 500 in access (kong/init.lua:406-417), a failed header filter ------------------------------


async def test_a_request_cache_control_starting_with_an_equals_sign_is_kongs_500(nursery, gateway):
    """handler.lua:233 parses the request's Cache-Control first thing in access, whatever cache_control says.
    kong/tools/http.lua:588-602 (parse_directive_header): for the part "=5" the match `^\\s*([^=]+)(?:=(.+))?` fails,
    the fresh `res` table stays empty, and `t[lower(res[1])]` calls string.lower(nil): a Lua error in access, so
    Kong's 500 "An unexpected error occurred" and no upstream request."""
    backend, port = await start(nursery, gateway, cache())
    reply = await get(port, "/get", [("cache-control", "=5")])
    assert reply.status == 500, (reply.status, status_of(reply))
    assert reply.json()["message"] == "An unexpected error occurred"
    assert backend.requests == []


def test_a_nameless_directive_fails_only_before_any_other_was_read():
    """kong/tools/http.lua:588-602: ngx.re.match leaves the reused `res` as it was when it does not match, so "=3"
    after a read directive sets that directive again; only one before any read part calls string.lower(nil). A
    blank before "=" is a name (" ")."""
    assert parse_directives(b"max-age=5,=3") == {b"max-age": 5}
    assert parse_directives(b"max-age=5, =3") == {b"max-age": 5, b" ": 3}
    with pytest.raises(LuaError, match="'lower'"):
        parse_directives(b"=3, max-age=5")


def test_a_response_cache_control_starting_with_an_equals_sign_fails_the_header_filter():
    """handler.lua:362 (header_filter) parses the response's Cache-Control (res_cc) before anything else, whatever
    cache_control says: string.lower(nil) fails the header filter."""
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"=5")]
    with pytest.raises(LuaError):
        rules().cacheable_response(200, headers, NOW)


async def test_a_repeated_bare_query_argument_is_kongs_500(nursery, gateway):
    """kong/plugins/proxy-cache/cache_key.lua:37-40: ngx.req.get_uri_args reads `?a&a` as a = {true, true};
    generate_key_from calls table.sort on it, and LuaJIT's auxsort compares a[2] with a[1] even for two elements,
    which Lua cannot do for booleans: a Lua error in access (the key is built before any lookup), so Kong's 500 and
    the upstream is not reached. A single bare `?a` is its name in the key."""
    backend, port = await start(nursery, gateway, cache())
    reply = await get(port, "/get?a&a")
    assert reply.status == 500, (reply.status, status_of(reply))
    assert reply.json()["message"] == "An unexpected error occurred"
    assert backend.requests == []
    assert status_of(await get(port, "/get?a")) == "Miss"


async def test_a_non_numeric_request_max_age_on_a_stored_entry_is_kongs_500(nursery, gateway):
    """handler.lua:299-300: with cache_control and an entry found, `time() - res.timestamp > cc["max-age"]` compares
    a number with the string "abc" (kong/tools/http.lua:602 keeps a value tonumber refuses as a string): a Lua error
    in access, so Kong's 500."""
    _, port = await start(nursery, gateway, cache(cache_control=True))
    assert status_of(await get(port, "/cache/60")) == "Miss"
    reply = await get(port, "/cache/60", [("cache-control", "max-age=abc")])
    assert reply.status == 500, (reply.status, status_of(reply))
    assert reply.json()["message"] == "An unexpected error occurred"


async def test_a_bare_request_min_fresh_on_a_stored_entry_is_kongs_500(nursery, gateway):
    """handler.lua:309: `res.ttl - (time() - res.timestamp) < cc["min-fresh"]` with a bare `min-fresh`
    (kong/tools/http.lua:602 stores true) compares a number with a boolean: a Lua error in access, Kong's 500."""
    _, port = await start(nursery, gateway, cache(cache_control=True))
    assert status_of(await get(port, "/cache/60")) == "Miss"
    reply = await get(port, "/cache/60", [("cache-control", "min-fresh")])
    assert reply.status == 500, (reply.status, status_of(reply))
    assert reply.json()["message"] == "An unexpected error occurred"


def test_a_bare_response_max_age_fails_the_header_filter_as_kongs_math_max_does():
    """handler.lua:171 calls kong/tools/http.lua:613-629 calculate_resource_ttl, where `max_age = res_cc["s-maxage"]
    or res_cc["max-age"]` is true for a bare `max-age` and `max(true, 0)` raises ("bad argument #1 to 'max' (number
    expected, got boolean)"): Kong's header_filter fails."""
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"public, max-age")]
    with pytest.raises(LuaError, match="'max'"):
        rules(cache_control=True).cacheable_response(200, headers, NOW)


class _OneWriteBackend(_Backend):
    """Answers every request with `head` and its body in one write (so they reach the gateway together), or with
    the body `pause` seconds after the head."""

    def __init__(self, head: bytes, body: bytes, pause: float = 0.0) -> None:
        super().__init__("one-write")
        self.head = head + b"content-length: %d\r\n\r\n" % len(body)
        self.body = body
        self.pause = pause

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        if await self._read_request(stream, conn) is not None:
            if self.pause:
                await stream.send_all(self.head)
                await trio.sleep(self.pause)
                await stream.send_all(self.body)
            else:
                await stream.send_all(self.head + self.body)


async def _raw_get(port: int, target: bytes) -> bytes:
    """All the gateway sends back to one request before it closes the connection (b"" for none, or a reset)."""
    data = b""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET %b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" % target)
            try:
                while chunk := await stream.receive_some(65536):
                    data += chunk
            except trio.BrokenResourceError:
                pass
    return data


async def test_a_bare_response_max_age_ends_the_request_with_no_answer_and_stores_nothing(nursery, gateway):
    """The header filter's Lua error: Kong's header_filter runs its plugins unprotected, so nginx's header filter
    fails and the client gets no answer (as the gateway's pipeline ends a request whose header filter raised); the
    body filter never runs, so nothing is stored and the next request goes upstream again."""
    backend = _OneWriteBackend(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                               b"cache-control: public, max-age\r\n", b"{}")
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [
        {"paths": ["/"], "plugins": [cache(cache_control=True)]}])]})
    assert await _raw_get(port, b"/x") == b""
    assert await _raw_get(port, b"/x") == b""
    assert len(backend.requests) == 2


async def test_a_failed_header_filter_gives_no_answer_when_the_body_comes_after_the_head(nursery, gateway):
    """Whether the body is read whole (to be stored) is asked of the upstream's headers before the header filters
    run: that question fails as the header filter does, and the answer is the same as with the body in the head's
    packet, none (it was the gateway's 500 page)."""
    backend = _OneWriteBackend(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                               b"cache-control: public, max-age\r\n", b"{}", pause=0.1)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [
        {"paths": ["/"], "plugins": [cache(cache_control=True)]}])]})
    assert await _raw_get(port, b"/x") == b""
    assert len(backend.requests) == 1


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
