"""ai-mcp-oauth2: where its RFC 9728 metadata document is answered. Kong runs a plugin only with the configuration
of the route the request was routed to, so the document is the plugin's answer on its route; a metadata path that no
route covers is routed as the resource's own path would be (same host and headers), never answered for another
host, another tenant or a disabled service. In-process gateway, echo backend and JWKS server on 127.0.0.1 in the
test's nursery (tests/conftest.py's `gateway` fixture stops them with the test)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from backends import EchoBackend, Reply, service
from conftest import build_config
from oauth_helpers import JwksServer, call, oauth_plugin

from gateway.runtime import compile_config

WELL_KNOWN = "/.well-known/oauth-protected-resource"


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


async def servers(nursery: trio.Nursery) -> tuple[JwksServer, EchoBackend]:
    jwks = JwksServer()
    await nursery.start(jwks.serve)
    echo = EchoBackend()
    await nursery.start(echo.serve)
    return jwks, echo


def proxied(reply: Reply) -> bool:
    """Did the echo backend answer (its JSON description of the request), rather than the gateway's document?"""
    if reply.status != 200:
        return False
    body: Any = reply.json()
    return isinstance(body, dict) and "headers" in body and "resource" not in body


def tenants(echo: EchoBackend, jwks: JwksServer) -> dict[str, Any]:
    """Two tenants' MCP servers, both at /mcp, told apart by host, each route with its own ai-mcp-oauth2."""
    return {"services": [service(t, f"http://127.0.0.1:{echo.port}", [{
        "name": t, "hosts": [f"{t}.test"], "paths": ["/mcp"], "strip_path": False,
        "plugins": [oauth_plugin(f"http://{t}.test/mcp", jwks.url)]}]) for t in ("a", "b")]}


async def test_metadata_paths_on_another_hosts_route_reach_that_routes_upstream(nursery, gateway):
    """kong/runloop/plugins_iterator.lua:282-290 (load_configuration_through_combos looks a plugin up by ctx.route.id,
    lookup_cfg :215-266 finds none for another route); Kong's ai-mcp-oauth2 schema: "make sure the configured
    metadata_endpoint is also covered by the same route". A request for b.test, routed to b's service, reaches b's
    upstream at the paths where a.test's plugin serves its document."""
    jwks, echo = await servers(nursery)
    port = await gateway({"services": [
        service("a", f"http://127.0.0.1:{echo.port}", [{"name": "a", "hosts": ["a.test"], "paths": ["/mcp"],
                                                       "strip_path": False,
                                                       "plugins": [oauth_plugin("http://a.test/mcp", jwks.url)]}]),
        service("b", f"http://127.0.0.1:{echo.port}", [{"name": "b", "hosts": ["b.test"], "paths": ["/"]}]),
    ]})
    for path in (WELL_KNOWN + "/mcp", "/mcp" + WELL_KNOWN):
        reply = await call(port, path, host="b.test")
        assert proxied(reply), (path, reply.status, reply.body[:200])
        assert (await call(port, path, host="a.test")).json()["resource"] == "http://a.test/mcp"


def test_two_hosts_with_their_own_resource_at_one_path_is_a_valid_config():
    """Each request runs only its own route's plugin instance (plugins_iterator.lua:282-290), so two tenants' plugins
    serving documents at the same path of their own hosts is a valid Kong config: check-config accepts it."""
    jwks_url = "http://127.0.0.1:9/jwks"
    doc = {"services": [service(t, "http://127.0.0.1:9", [{
        "name": t, "hosts": [f"{t}.test"], "paths": ["/mcp"],
        "plugins": [oauth_plugin(f"http://{t}.test/mcp", jwks_url)]}]) for t in ("a", "b")]}
    compile_config(build_config(doc, "llhttp"))


async def test_two_hosts_at_one_path_each_get_their_own_document(nursery, gateway):
    """Kong's default metadata path (the resource path + /.well-known/oauth-protected-resource), covered by each
    tenant's route, and RFC 9728's (no route covers it: routed as the resource /mcp is, with the request's host)
    each answer the document of the host's own plugin."""
    jwks, echo = await servers(nursery)
    port = await gateway(tenants(echo, jwks))
    for tenant in ("a", "b"):
        for path in ("/mcp" + WELL_KNOWN, WELL_KNOWN + "/mcp"):
            reply = await call(port, path, host=f"{tenant}.test")
            assert reply.status == 200, (tenant, path, reply.status)
            assert reply.json()["resource"] == f"http://{tenant}.test/mcp"
    assert (await call(port, WELL_KNOWN + "/mcp", host="c.test")).status == 404  # no tenant's route for c.test


async def test_a_disabled_services_plugin_does_not_answer_for_the_routes_that_remain(nursery, gateway):
    """kong/runloop/handler.lua:405-406: "routes where the services.enabled == false are not put in router", so
    their plugins never run: the metadata path is routed by the routes left (a catch-all to another service), and
    with none left it is Kong's 404."""
    jwks, echo = await servers(nursery)
    disabled = service("old", f"http://127.0.0.1:{echo.port}", [{
        "name": "old", "paths": ["/mcp"], "strip_path": False,
        "plugins": [oauth_plugin("http://gateway.test/mcp", jwks.url)]}], enabled=False)
    port = await gateway({"services": [disabled, service("web", f"http://127.0.0.1:{echo.port}", [
        {"name": "web", "paths": ["/web"]}, {"name": "rest", "paths": ["/"], "hosts": ["web.test"]}])]})
    assert proxied(await call(port, WELL_KNOWN + "/mcp", host="web.test"))
    assert (await call(port, WELL_KNOWN + "/mcp")).status == 404


async def test_the_rfc_9728_metadata_url_of_a_resource_with_a_trailing_slash_keeps_it(nursery, gateway):
    """RFC 9728 section 3.1: the well-known string goes "between the host component and the path and/or query
    components" (only a slash right after the host is removed), so https://gateway.test/mcp/ has its document at
    /.well-known/oauth-protected-resource/mcp/, which the challenge names and the MCP SDK's fallback
    (build_protected_resource_metadata_discovery_urls) asks for; the form without the slash (the TypeScript SDK's
    buildWellKnownPath strips it) is served too."""
    jwks, echo = await servers(nursery)
    port = await gateway({"services": [
        service("mcp", f"http://127.0.0.1:{echo.port}", [{"name": "mcp", "paths": ["/mcp/"], "strip_path": False,
                                                         "plugins": [oauth_plugin("http://gateway.test/mcp/",
                                                                                  jwks.url)]}])]})
    challenge = (await call(port, "/mcp/", method="POST", body=b"{}")).header("www-authenticate")
    assert f'resource_metadata="http://gateway.test{WELL_KNOWN}/mcp/"' in challenge
    for path in (WELL_KNOWN + "/mcp/", WELL_KNOWN + "/mcp", "/mcp" + WELL_KNOWN):
        reply = await call(port, path)
        assert reply.status == 200, (path, reply.status, reply.body[:200])
        assert reply.json()["resource"] == "http://gateway.test/mcp/"


async def test_a_routes_own_instance_answers_its_metadata_not_the_global_one(nursery, gateway):
    """Kong runs one instance of a plugin per request, the most specific (a route's over a global one:
    plugins_iterator.lua lookup_cfg's order), so at a path both serve, the route's document is the answer."""
    jwks, echo = await servers(nursery)
    port = await gateway({
        "services": [service("mcp", f"http://127.0.0.1:{echo.port}", [{
            "name": "mcp", "paths": ["/mcp"], "strip_path": False,
            "plugins": [oauth_plugin("http://gateway.test/mcp", jwks.url, scopes_supported=["route"])]}])],
        "plugins": [oauth_plugin("http://gateway.test/mcp", jwks.url, scopes_supported=["global"])]})
    for path in (WELL_KNOWN + "/mcp", "/mcp" + WELL_KNOWN):
        assert (await call(port, path)).json()["scopes_supported"] == ["route"], path
