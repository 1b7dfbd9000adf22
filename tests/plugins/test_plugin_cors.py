"""Kong's cors over the real gateway: preflights answered, Access-Control-* on every response of the request
(proxied or the gateway's own), origins plain, listed and by regex, credentials."""

from __future__ import annotations

import logging

import msgspec
import pytest
from plugin_helpers import (
    call,
    headers_of,
    http_codec,  # noqa: F401 - the fixture: one codec
    start,
)

from gateway.config import ConfigError, parse_config
from gateway.policies.cors.handler import Cors
from gateway.policies.cors.schema import CorsConfig
from gateway.runtime import compile_config

PREFLIGHT = [("origin", "http://app.example.com"), ("access-control-request-method", "POST"),
             ("access-control-request-headers", "x-custom, content-type")]


def cors(**config: object) -> dict:
    return {"name": "cors", "config": config}


async def test_a_preflight_is_answered_200_with_kongs_defaults_and_never_proxied(nursery, gateway):
    backend, port = await start(nursery, gateway, plugins=[cors()])
    reply = await call(port, "/x", PREFLIGHT, method="OPTIONS")
    assert reply.status == 200 and reply.body == b""
    assert reply.header("access-control-allow-origin") == "*"
    assert reply.header("access-control-allow-methods") == "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
    assert reply.header("access-control-allow-headers") == "x-custom, content-type"
    assert reply.header("access-control-max-age") is None
    assert backend.requests == []


async def test_a_preflight_gets_the_configured_headers_methods_and_max_age(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[cors(origins=["http://app.example.com"], headers=["x-a", "x-b"],
                                                          methods=["GET", "POST"], max_age=3600, credentials=True)])
    reply = await call(port, "/x", PREFLIGHT, method="OPTIONS")
    assert reply.header("access-control-allow-origin") == "http://app.example.com"
    assert reply.header("access-control-allow-headers") == "x-a,x-b"
    assert reply.header("access-control-allow-methods") == "GET,POST"
    assert reply.header("access-control-max-age") == "3600"
    assert reply.header("access-control-allow-credentials") == "true"
    assert reply.header("vary") == "Origin"


async def test_preflight_continue_proxies_the_options_request(nursery, gateway):
    backend, port = await start(nursery, gateway, plugins=[cors(preflight_continue=True)])
    reply = await call(port, "/x", PREFLIGHT, method="OPTIONS")
    assert reply.status == 200 and len(backend.requests) == 1
    assert reply.header("access-control-allow-origin") is None  # Kong adds nothing to a preflight it passed on


async def test_a_listed_origin_is_echoed_with_vary_and_another_gets_no_allow_origin(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[cors(origins=["http://a.example", "https://b.example:8443"],
                                                          exposed_headers=["x-total"])])
    ok = await call(port, "/x", [("origin", "https://b.example:8443")])
    assert ok.header("access-control-allow-origin") == "https://b.example:8443"
    assert headers_of(ok, "vary") == ["Origin"]
    assert ok.header("access-control-expose-headers") == "x-total"
    default_port = await call(port, "/x", [("origin", "http://a.example:80")])
    assert default_port.header("access-control-allow-origin") == "http://a.example"
    other = await call(port, "/x", [("origin", "http://evil.example")])
    assert other.status == 200 and other.header("access-control-allow-origin") is None


async def test_a_single_plain_origin_is_always_sent(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[cors(origins=["http://only.example"])])
    reply = await call(port, "/x", [("origin", "http://other.example")])
    assert reply.header("access-control-allow-origin") == "http://only.example"


@pytest.mark.parametrize(("origin", "allowed"), [
    ("http://api.example.com", True), ("https://x.y.example.com", True), ("http://example.com.evil", False),
    ("http://exampleXcom", False)])
async def test_a_regex_origin_matches_the_whole_host(nursery, gateway, origin, allowed):
    _, port = await start(nursery, gateway, plugins=[cors(origins=[r".*\.example\.com", "http://other.test"])])
    reply = await call(port, "/x", [("origin", origin)])
    assert reply.header("access-control-allow-origin") == (origin if allowed else None)


async def test_credentials_with_every_origin_allowed_echo_the_request_origin(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[cors(credentials=True)])
    reply = await call(port, "/x", [("origin", "http://app.example")])
    assert reply.header("access-control-allow-origin") == "http://app.example"
    assert reply.header("access-control-allow-credentials") == "true"
    assert reply.header("vary") == "Origin"


async def test_allow_origin_absent_false_adds_nothing_without_an_origin(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[cors(allow_origin_absent=False)])
    assert (await call(port, "/x")).header("access-control-allow-origin") is None
    _, port2 = await start(nursery, gateway, plugins=[cors()])
    assert (await call(port2, "/x")).header("access-control-allow-origin") == "*"


async def test_the_gateways_own_401_gets_cors_headers(nursery, gateway):
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth"}, cors(origins=["http://app.example"])]}]
    backend, port = await start(nursery, gateway, routes, consumers=[{"username": "u"}])
    reply = await call(port, "/x", [("origin", "http://app.example")])
    assert reply.status == 401
    assert reply.header("access-control-allow-origin") == "http://app.example"
    assert reply.header("www-authenticate") == "Key"
    assert backend.requests == []


async def test_a_404_gets_the_global_cors_headers(nursery, gateway):
    _, port = await start(nursery, gateway, [{"paths": ["/api"]}], plugins=[cors()])
    reply = await call(port, "/elsewhere", [("origin", "http://app.example")])
    assert reply.status == 404 and reply.json()["message"] == "no Route matched with those values"
    assert reply.header("access-control-allow-origin") == "*"


def test_an_invalid_origin_regex_is_refused_naming_the_field():
    config = parse_config('services: [{name: s, url: "http://127.0.0.1:1", routes: [{paths: [/]}]}]\n'
                          'plugins: [{name: cors, config: {origins: ["http://(a"]}}]\n')
    with pytest.raises(ConfigError) as err:
        compile_config(config)
    assert "plugins[0].config.origins[0]: \"http://(a\" is not a valid regex" in str(err.value)


def test_cors_cannot_be_configured_for_a_consumer():
    config = parse_config('services: [{name: s, url: "http://127.0.0.1:1", routes: [{paths: [/]}]}]\n'
                          'consumers: [{username: u, plugins: [{name: cors}]}]\n')
    with pytest.raises(ConfigError, match="cors plugin cannot be configured for a consumer"):
        compile_config(config)


def cors_of(*origins: str) -> Cors:
    return Cors(msgspec.convert({"origins": list(origins)}, CorsConfig))


def test_a_regex_origin_runs_as_kongs_pcre_without_utf():
    """Kong matches a regex entry with ngx.re.find(subject, regex, "ajo") (handler.lua): PCRE over the bytes, no
    UTF. `[[:alpha:]]` is a POSIX class, named groups compile, and \\w is ASCII: b"caf\\xe9" is no word, where
    Python's re on the latin-1 text took "é" for a letter."""
    posix = cors_of(r"http://[[:alpha:]]+\.test", "x.test")  # (with its ":", an entry matches the whole origin)
    assert posix._allowed(b"http://ab.test") == b"http://ab.test" and posix._allowed(b"http://a1.test") is None
    assert cors_of(r"(?<sub>api)\.test", "x.test")._allowed(b"https://api.test:8443") == b"https://api.test:8443"
    assert cors_of(r"\w+\.test", "x.test")._allowed(b"http://caf\xe9.test") is None
    assert cors_of(r"\w+\.test", "x.test")._allowed(b"http://cafe.test") == b"http://cafe.test"


def test_a_regex_origin_that_fails_is_logged_and_allows_nothing_the_next_entry_still_tried(caplog):
    """At PCRE's match limit ngx.re.find returns an error: Kong logs "could not search for domain" and goes on."""
    origin = b"http://" + b"a" * 40 + b"!"
    with caplog.at_level(logging.ERROR, "gateway.policies"):
        assert cors_of(r"(\w+\s?)+$", "x.test")._allowed(origin) is None
        assert cors_of(r"(\w+\s?)+$", r".*!")._allowed(origin) == origin
    assert "cors: could not search for domain: pcre2_match() failed: -47: match limit exceeded" in caplog.text


def test_an_invalid_origin_regex_is_refused_in_pcres_words():
    with pytest.raises(msgspec.ValidationError, match=r'origins\[1\]: "\[\[:alpha:\]" is not a valid regex '
                                                      r"\(missing terminating \] for character class at offset 10\)"):
        cors_of("x.test", "[[:alpha:]")
