"""Routes' `snis`, as Kong 3.x matches them (kong/router/transform.lua: `(net.protocol != "https" || tls.sni ...)`):
an https request matches when its connection's SNI is one of the route's (exact, `*.domain`, `name.*`), a plain
HTTP request is not asked, and snis count as one more category in the precedence. End to end over real TLS."""

from __future__ import annotations

import json

import pytest
import trio
from backends import EchoBackend, free_port, request, service
from tls_helpers import Pki, https_get

from gateway.config import ConfigError, parse_config
from gateway.routing import Router, RouteSpec

HTTPS_ONLY = {"protocols": ["https"]}


@pytest.mark.parametrize(("snis", "sni", "matches"), [
    (["api.test"], b"api.test", True),
    (["api.test"], b"web.test", False),
    (["API.Test"], b"api.test", False),  # names are compared as sent, case-sensitively, as Kong's tls.sni
    (["api.test."], b"api.test", True),  # Kong: a final dot is not used for routing
    (["*.api.test"], b"eu.api.test", True),
    (["*.api.test"], b"a.eu.api.test", True),  # Kong's postfix match: any depth
    (["*.api.test"], b"api.test", False),
    (["*api.test"], b"api.test", True),  # typedefs.wildcard_host: a `*` first or last, not a whole label ...
    (["*api.test"], b"myapi.test", True),  # ... is a postfix match all the same
    (["api*"], b"api2.test", True),
    (["api.*"], b"api.internal", True),
    (["api.*"], b"web.internal", False),
    (["api.test"], b"", False),  # a TLS client that sent no SNI matches no route with snis
    (["*"], b"any.test", True),  # Kong's wildcard_host `*`: a postfix match of "", any server name ...
    (["*"], b"", False),  # ... that was sent
    (["api.test"], None, True),  # a plain HTTP request: snis are not asked
])
def test_a_route_with_snis_matches_the_connections_server_name(snis, sni, matches):
    router = Router([RouteSpec("r", paths=["/"], snis=snis)])
    assert router.needs_sni and router.needs_conn
    assert (router.match(b"GET", b"/", b"any.test", [], None, None, sni) is not None) == matches


def test_snis_are_one_more_category_in_precedence():
    router = Router([RouteSpec("paths", paths=["/v1"]), RouteSpec("paths+snis", paths=["/"], snis=["api.test"])])
    assert router.match(b"GET", b"/v1", None, [], None, None, b"api.test").payload == "paths+snis"  # type: ignore[union-attr]
    assert router.match(b"GET", b"/v1", None, [], None, None, b"web.test").payload == "paths"  # type: ignore[union-attr]


def test_remembered_answers_are_kept_apart_by_server_name():
    router = Router([RouteSpec("api", paths=["/"], snis=["api.test"]), RouteSpec("any", paths=["/"])])
    for _ in range(2):  # the second round is answered from memory
        assert router.match(b"GET", b"/", b"h", [], None, None, b"api.test").payload == "api"  # type: ignore[union-attr]
        assert router.match(b"GET", b"/", b"h", [], None, None, b"web.test").payload == "any"  # type: ignore[union-attr]
        assert router.match(b"GET", b"/", b"h", [], None, None, None).payload == "api"  # type: ignore[union-attr]


def test_a_router_without_snis_does_not_ask_for_the_server_name():
    router = Router([RouteSpec("r", paths=["/"])])
    assert not router.needs_sni and not router.needs_conn


def load(route: dict) -> object:
    return parse_config(json.dumps({"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [route]}]}),
                        "kong.yml")


def refused(route: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(route)
    return [m.removeprefix("kong.yml: ") for m in e.value.messages]


def test_a_route_may_match_on_snis_alone():
    load({"snis": ["api.test"], **HTTPS_ONLY})


def test_snis_need_https_among_the_protocols():
    assert refused({"paths": ["/"], "snis": ["api.test"], "protocols": ["http"]}) == [
        "services[0].routes[0].snis: can only be set when protocols includes https (Kong's rule: a plain HTTP "
        "request has no SNI)"]


def test_an_sni_that_is_not_a_host_name_is_refused():
    assert refused({"paths": ["/"], "snis": ["a b"]}) == [
        'services[0].routes[0].snis[0]: invalid value: a b, got "a b"']
    assert refused({"paths": ["/"], "snis": ["a*b.test"]}) == [
        'services[0].routes[0].snis[0]: wildcard must be leftmost or rightmost character, got "a*b.test"']
    assert refused({"paths": ["/"], "snis": ["*.api.*"]}) == [
        'services[0].routes[0].snis[0]: only one wildcard must be specified, got "*.api.*"']


def test_the_sni_star_is_accepted_as_kongs_wildcard_host():
    load({"snis": ["*"], **HTTPS_ONLY})


async def test_https_requests_are_routed_by_their_sni_and_plain_ones_ignore_it(gateway, nursery, tmp_path):
    pki = Pki()
    api, web = EchoBackend("api"), EchoBackend("web")
    await nursery.start(api.serve)
    await nursery.start(web.serve)
    cert, key = pki.issue("api.test", "web.test")
    http_port, tls_port = free_port(), free_port()
    doc = {"services": [
        service("api", f"http://127.0.0.1:{api.port}", routes=[{"paths": ["/"], "snis": ["api.test"]}]),
        service("web", f"http://127.0.0.1:{web.port}", routes=[{"paths": ["/"]}])],
        "certificates": [{"cert": cert, "key": key, "snis": ["api.test", "web.test"]}]}
    await gateway(doc, listen=[f"127.0.0.1:{http_port}", f"127.0.0.1:{tls_port} ssl"])
    ctx = pki.client_context()
    answered = {}
    with trio.fail_after(10):
        for name in ("api.test", "web.test"):
            status, _, body, _ = await trio.to_thread.run_sync(lambda n=name: https_get(tls_port, ctx, n))
            answered[name] = (status, json.loads(body)["name"])
        plain = await request(http_port, "GET", "/x")
    # paths + snis outrank paths alone: api.test goes to api, web.test to web; plain HTTP skips the snis check
    assert answered == {"api.test": (200, "api"), "web.test": (200, "web")}
    assert (plain.status, json.loads(plain.body)["name"]) == (200, "api")
