"""Kong's redirect plugin (3.9) through the gateway, after spec/03-plugins/45-redirect/02-access_spec.lua: the
status, the Location as configured or with the request's path and query, the body "redirecting", and the upstream
never reached."""

from __future__ import annotations

import json

import pytest
from plugin_helpers import (
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    plugin,
    refused,
    start,
)

from gateway.config import parse_config
from gateway.runtime import compile_config


async def redirect_gateway(nursery, gateway, **config):  # noqa: ANN001,ANN003,ANN201
    return await start(nursery, gateway, plugins=[plugin("redirect", location="https://example.com", **config)])


async def test_the_default_status_is_301_with_the_location_and_the_upstream_is_not_reached(nursery, gateway):
    """default status code"""
    backend, port = await redirect_gateway(nursery, gateway)
    reply = await call(port, "/status/200")
    assert (reply.status, reply.header("location"), reply.body) == (301, "https://example.com", b"redirecting")
    assert backend.requests == []


async def test_a_custom_status(nursery, gateway):
    """custom status code"""
    _, port = await redirect_gateway(nursery, gateway, status_code=302)
    assert (await call(port, "/status/200")).status == 302


async def test_a_204_is_the_head_alone_without_content_length(nursery, gateway):
    """kong.response.exit(204, "redirecting") sets Content-Length: 11, but nginx's header filter makes a 204
    header-only and clears it (RFC 9110 8.6: no Content-Length in a 204)."""
    _, port = await redirect_gateway(nursery, gateway, status_code=204)
    reply = await call(port, "/")
    assert (reply.status, reply.header("location"), reply.body) == (204, "https://example.com", b"")
    assert reply.header("content-length") is None


async def test_the_location_keeps_its_own_path_and_query(nursery, gateway):
    """supports path and query params in location"""
    _, port = await start(nursery, gateway, plugins=[plugin("redirect", location="https://example.com/path?foo=bar")])
    reply = await call(port, "/status/200?x=1")
    assert reply.header("location") == "https://example.com/path?foo=bar"


async def test_keep_incoming_path_takes_the_requests_path_and_query(nursery, gateway):
    """keeps the existing redirect URL"""
    _, port = await start(nursery, gateway, plugins=[plugin(
        "redirect", location="https://example.com/some_path?foo=bar", keep_incoming_path=True)])
    assert (await call(port, "/status/200?keep=this")).header("location") == "https://example.com/status/200?keep=this"
    assert (await call(port, "/status/200")).header("location") == "https://example.com/status/200"


async def test_keep_incoming_path_keeps_the_port_and_fragment_and_normalizes_the_path(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin(
        "redirect", location="http://example.com:8080/x#top", keep_incoming_path=True)])
    reply = await call(port, "/a/../b%20c/%7e")
    assert reply.header("location") == "http://example.com:8080/b%20c/~#top"


@pytest.mark.parametrize(("config", "message"), [
    ({}, "config.location: required field is missing"),
    ({"location": "example.com/x"}, 'config.location: expected a URL with a scheme and a host, got "example.com/x"'),
    ({"location": "https://a.test", "status_code": 600}, "config.status_code: expected int >= 100 and <= 599"),
    ({"location": "https://a.test/\r\nX-Injected: 1"}, "config.location: expected text without control characters"),
    ({"location": ""}, "config.location: length must be at least 1"),  # Kong's len_min 1 of a string field
])
def test_config_errors_name_the_field(config, message):
    assert message in refused({"name": "redirect", "config": config})


SPACED = "https://example.com/some page"


def test_a_location_with_a_space_in_its_path_is_accepted_as_kong_accepts_it():
    """Kong: kong/db/schema/typedefs.lua:205-221 (validate_url: a scheme and a host are all it asks), the type of
    kong/plugins/redirect/schema.lua:22-27's `location`."""
    config = parse_config(json.dumps({
        "services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
        "plugins": [{"name": "redirect", "config": {"location": SPACED}}]}))
    compile_config(config)


@pytest.mark.parametrize("keep", [False, True])
async def test_a_location_with_a_space_is_sent_as_written_or_its_path_replaced(nursery, gateway, keep):
    """Kong: kong/plugins/redirect/handler.lua:14 (the location as written) or :20-23 (ada's href: the request's
    path and query in place of the location's), then :31 kong.response.exit(301, "redirecting", {Location=...})."""
    _, port = await start(nursery, gateway, plugins=[plugin("redirect", location=SPACED, keep_incoming_path=keep)])
    reply = await call(port, "/x?y=1")
    assert reply.status == 301
    assert reply.header("location") == ("https://example.com/x?y=1" if keep else SPACED)
