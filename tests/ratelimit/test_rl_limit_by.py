"""rate-limiting's `limit_by: path`, `limit_by: service` and `limit_by: header` as Kong's get_identifier
(kong/plugins/rate-limiting/handler.lua) has them, through the gateway (in-process, real sockets) and on the
compiled plugin:

- path: the identifier is the path only for a request whose kong.request.get_path() (normalized, without the query)
  equals `path`; every other request is counted by the client's (forwarded) IP;
- service: the identifier is the matched service's id (kong.router.get_service().id), so a global plugin counts
  each service apart; a route without a service falls back to the IP;
- header: the identifier is kong.request.get_header(header_name), nginx's $http_<name>; one past 128 characters is
  counted under its digest, so a client's identifiers cannot make keys long.

Two client addresses come from X-Forwarded-For, the peer (127.0.0.1) being a trusted balancer. Limits are per day
so that no window ends during a test."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from backends import Client, EchoBackend, Reply, service

from gateway.config import ConfigError, parse_config
from gateway.policies.rate_limiting.handler import EMPTY_UUID
from gateway.ratelimit.spec import counter_of
from gateway.runtime import compile_config

TIMEOUT = 10
TRUSTED = {"trusted_ips": ["127.0.0.1"], "real_ip_header": "X-Forwarded-For"}
A, B = "10.0.0.1", "10.0.0.2"  # two clients behind the balancer


@pytest.fixture
def http_codec() -> str:
    """One codec: what these tests check is above HTTP framing."""
    return "llhttp"


def limit(**config: Any) -> dict[str, Any]:
    return {"name": "rate-limiting", "config": {"day": 2, **config}}


async def call(port: int, target: str, client: str = A) -> Reply:
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as conn:
            return await conn.request("GET", target, headers=[("x-forwarded-for", client)])


def remaining(reply: Reply) -> tuple[int, str | None]:
    """(status, X-RateLimit-Remaining-Day): what the request's counter had left after it."""
    return reply.status, reply.header("x-ratelimit-remaining-day")


async def backend(nursery: trio.Nursery) -> str:
    echo = EchoBackend()
    await nursery.start(echo.serve)
    return f"http://127.0.0.1:{echo.port}"


async def by_path(nursery: trio.Nursery, gateway: Any, path: str = "/limited") -> int:
    """One service, every path routed; the plugin on the service, limit_by path for `path`."""
    url = await backend(nursery)
    svc = service("svc", url, [{"paths": ["/"]}], plugins=[limit(limit_by="path", path=path)])
    return int(await gateway({"services": [svc]}, **TRUSTED))


async def by_service(nursery: trio.Nursery, gateway: Any) -> int:
    """Two services (/one, /two; /one-bis a second route of the first), a route without a service (/bare), and a
    global plugin limiting by service."""
    url = await backend(nursery)
    doc = {"services": [service("one", url, [{"paths": ["/one"]}, {"paths": ["/one-bis"]}]),
                        service("two", url, [{"paths": ["/two"]}])],
           "routes": [{"name": "bare", "paths": ["/bare"]}],
           "plugins": [limit(limit_by="service")]}
    return int(await gateway(doc, **TRUSTED))


# --- limit_by: path -------------------------------------------------------------------------------------------------


async def test_path_mode_counts_every_client_of_the_configured_path_together(nursery, gateway):
    port = await by_path(nursery, gateway)
    assert remaining(await call(port, "/limited", A)) == (200, "1")
    assert remaining(await call(port, "/limited", B)) == (200, "0")
    assert remaining(await call(port, "/limited", A)) == (429, "0")


async def test_path_mode_counts_other_paths_per_client_ip(nursery, gateway):
    port = await by_path(nursery, gateway)
    assert remaining(await call(port, "/other", A)) == (200, "1")
    assert remaining(await call(port, "/elsewhere", A)) == (200, "0")  # any other path: A's one counter
    assert remaining(await call(port, "/other", A)) == (429, "0")
    assert remaining(await call(port, "/other", B)) == (200, "1")  # B has its own


async def test_path_mode_keeps_the_path_counter_apart_from_the_ip_counters(nursery, gateway):
    port = await by_path(nursery, gateway)
    for _ in range(2):
        assert (await call(port, "/limited", A)).status == 200
    assert (await call(port, "/limited", A)).status == 429
    assert remaining(await call(port, "/other", A)) == (200, "1")  # A's IP counter is untouched


async def test_path_mode_matches_the_normalized_path_without_its_query(nursery, gateway):
    port = await by_path(nursery, gateway)
    assert remaining(await call(port, "/limited?page=2", A)) == (200, "1")
    assert remaining(await call(port, "/x/../%6cimited", B)) == (200, "0")  # get_path() is "/limited"
    assert remaining(await call(port, "//limited", "10.0.0.3")) == (429, "0")
    assert remaining(await call(port, "/other", A)) == (200, "1")  # none of them went to A's IP counter


async def test_path_mode_does_not_match_a_longer_path(nursery, gateway):
    port = await by_path(nursery, gateway)
    assert remaining(await call(port, "/limited", A)) == (200, "1")
    assert remaining(await call(port, "/limited/more", A)) == (200, "1")  # A's IP counter, not the path's
    assert remaining(await call(port, "/limited/", A)) == (200, "0")  # nor a trailing slash


@pytest.mark.parametrize("path", ["/a%41", "/a%2fb", "/a/./b"])
async def test_path_mode_a_path_not_in_normalized_form_is_never_the_identifier(nursery, gateway, path):
    """Kong compares kong.request.get_path(), normalized (kong/pdk/request.lua get_path; kong/tools/uri.lua
    normalize: %41 decoded, %2f upper-cased, dot segments removed), with `path` (handler.lua get_identifier): a
    request for the configured path itself is "/aA", "/a%2Fb" or "/a/b" there, so it counts by the client's IP."""
    port = await by_path(nursery, gateway, path)
    assert remaining(await call(port, path, A)) == (200, "1")
    assert remaining(await call(port, "/other", A)) == (200, "0")  # the same counter: A's IP


# --- limit_by: service ----------------------------------------------------------------------------------------------


async def test_service_mode_global_plugin_counts_each_service_apart(nursery, gateway):
    port = await by_service(nursery, gateway)
    assert remaining(await call(port, "/one")) == (200, "1")
    assert remaining(await call(port, "/one")) == (200, "0")
    assert remaining(await call(port, "/one")) == (429, "0")
    assert remaining(await call(port, "/two")) == (200, "1")


async def test_service_mode_counts_every_client_and_route_of_a_service_together(nursery, gateway):
    port = await by_service(nursery, gateway)
    assert remaining(await call(port, "/one", A)) == (200, "1")
    assert remaining(await call(port, "/one-bis", B)) == (200, "0")
    assert remaining(await call(port, "/one", "10.0.0.3")) == (429, "0")


async def test_service_mode_route_without_service_falls_back_to_the_client_ip(nursery, gateway):
    port = await by_service(nursery, gateway)
    assert remaining(await call(port, "/bare", A)) == (503, "1")  # Kong's 503 after the plugins ran
    assert remaining(await call(port, "/bare", A)) == (503, "0")
    assert remaining(await call(port, "/bare", A)) == (429, "0")
    assert remaining(await call(port, "/bare", B)) == (503, "1")  # B's own counter
    assert remaining(await call(port, "/one", A)) == (200, "1")  # and the services' counters are apart


# --- the identifier itself ------------------------------------------------------------------------------------------


def compiled_key(doc: dict[str, Any], target: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()) -> str:
    """The counter (the key past its spec's tag) the first rate-limiting plugin on the route `target` matches makes
    for a request with `headers` (lower-case names, as the codecs give them) from client A, from a fresh compile."""
    runtime = compile_config(parse_config(json.dumps(doc)))
    route = runtime.router.match(b"GET", target, None, []).payload
    (policy,) = [p for p in route.policies if p.name == "rate-limiting"]
    return counter_of(policy.key(SimpleNamespace(route=route, client_ip=A,
                                                 request=SimpleNamespace(headers=list(headers)))))


PLUGIN = "0b6f3c52-8d2e-4f4a-a1c9-7e5d3b2a1f00"
GLOBAL = f"{EMPTY_UUID}:{EMPTY_UUID}"  # the scope of a plugin on no route and no service
SERVICES = {"services": [{"id": "6f7c0c8e-3a55-4b0e-9f6b-2f1c1a7d2e10", "url": "http://127.0.0.1:1",
                          "routes": [{"paths": ["/with-id"]}]},
                         {"url": "http://127.0.0.2:1", "routes": [{"paths": ["/unnamed"]}]}],
            "plugins": [{"name": "rate-limiting", "id": PLUGIN, "config": {"day": 2, "limit_by": "service"}}]}


def test_service_mode_identifier_is_the_services_configured_id():
    assert compiled_key(SERVICES, b"/with-id") == GLOBAL + "|6f7c0c8e-3a55-4b0e-9f6b-2f1c1a7d2e10"


def test_service_mode_identifier_of_a_service_without_id_is_the_same_in_every_compile():
    first, again = compiled_key(SERVICES, b"/unnamed"), compiled_key(SERVICES, b"/unnamed")
    assert first == again and first.startswith(GLOBAL + "|") and first != GLOBAL + "|" + A


def by_header(name: str) -> dict[str, Any]:
    return {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
            "plugins": [{"name": "rate-limiting", "id": PLUGIN,
                         "config": {"day": 2, "limit_by": "header", "header_name": name}}]}


def test_header_mode_identifier_of_cookie_is_every_cookie_line_joined_as_nginx_http_cookie():
    """handler.lua: `identifier = kong.request.get_header(conf.header_name)`, which is kong/tools/http.lua
    `ngx.var["http_" .. replace_dashes(name)]`, returned as it is when it holds no ", ". For Cookie that variable is
    nginx's ngx_http_variable_cookies (src/http/ngx_http_variables.c:185, :819-822 at release-1.27.1): every Cookie
    line joined by "; ". So "a=1" + "b=2" and "a=1" + "c=3" are two counters, not both "a=1"."""
    doc = by_header("Cookie")
    assert compiled_key(doc, b"/", ((b"cookie", b"a=1"), (b"cookie", b"b=2"))) == GLOBAL + "|a=1; b=2"
    assert compiled_key(doc, b"/", ((b"cookie", b"a=1"), (b"cookie", b"c=3"))) == GLOBAL + "|a=1; c=3"


def test_header_mode_identifier_of_up_to_128_characters_is_the_header_value_as_it_is():
    """The identifier is the header's value (handler.lua get_identifier); up to 128 characters it is the key's own."""
    value = b"k" * 128
    assert compiled_key(by_header("X-Client"), b"/", ((b"x-client", value),)) == GLOBAL + "|" + "k" * 128


def test_header_mode_a_longer_identifier_is_counted_under_its_digest_apart_from_every_short_one():
    """Kong's counters live in a shared dict bounded in bytes (kong_rate_limiting_counters 12m, kong/templates/
    nginx_kong.lua); the gateway bounds the number of keys, so a key's size must not grow with a client's 8 KB header
    value: past 128 characters the identifier is its SHA-256 digest (as gateway/mcp/ratekeys.py MAX_NAME), after
    "#" where a short identifier's key has "|", so no header value, not even the digest's text, makes the same key."""
    value = b"v" * 129
    digest = hashlib.sha256(value).hexdigest()
    doc = by_header("X-Client")
    assert compiled_key(doc, b"/", ((b"x-client", value),)) == GLOBAL + "#" + digest
    assert compiled_key(doc, b"/", ((b"x-client", b"v" * 8000),)) != GLOBAL + "#" + digest
    for short in (digest, "#" + digest):  # the digest's own text is a short identifier, kept under "|"
        assert compiled_key(doc, b"/", ((b"x-client", short.encode()),)) == GLOBAL + "|" + short


def test_path_must_be_a_kong_path():
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
           "plugins": [{"name": "rate-limiting", "config": {"day": 2, "limit_by": "path", "path": "/a//b"}}]}
    with pytest.raises(ConfigError) as err:
        compile_config(parse_config(json.dumps(doc)))
    assert "plugins[0].config.path: must not have empty segments" in str(err.value)
