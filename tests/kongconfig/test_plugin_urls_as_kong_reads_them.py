"""The plugins' url fields as Kong 3.9.3 reads them. Its schema checks each with typedefs.url (kong/db/schema/
typedefs.lua:205-221): LuaSocket 3.0-rc1's socket.url parse (src/url.lua:126-175 at v3.0-rc1, the version
kong-3.9.3-0.rockspec:17 pins) must give a host and a scheme, nothing more. Then http-log sends to socket.url's parts
written again for lua-resty-http (kong/plugins/http-log/handler.lua:60-80, 108-129), opentelemetry and zipkin hand the
url to lua-resty-http 0.17.2's request_uri, which reads it with its own pattern (lib/resty/http.lua:255-307), and
redirect sends the location as written. The gateway read them all with urllib's urlsplit, which differs on a `?` or a
second `@` before the path, an empty or hexadecimal port, a user info, a fragment, the case of a scheme or host.
Load/compile tests but one, which sends a batch to a collector on 127.0.0.1."""

from __future__ import annotations

import base64

import msgspec
import pytest
import trio
from backends import EchoBackend

from gateway.config import ConfigError, parse_config
from gateway.policies.http_log.handler import kong_endpoint
from gateway.policies.opentelemetry.handler import OpenTelemetry
from gateway.policies.opentelemetry.schema import OpenTelemetryConfig
from gateway.policies.redirect.handler import Redirect
from gateway.policies.redirect.schema import RedirectConfig
from gateway.runtime import compile_config
from gateway.telemetry.batch import Queues
from gateway.telemetry.sender import Endpoint, request_uri_endpoint
from gateway.telemetry.tracing import TracingSettings

SERVICE = "services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/]}]}]\n"
COLLECTORS = [("opentelemetry", "traces_endpoint"), ("zipkin", "http_endpoint")]


def _errors(plugin: str, config: str) -> list[str]:
    """check-config's messages for one global plugin with `config` (YAML flow mapping items)."""
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(f"{SERVICE}plugins: [{{name: {plugin}, config: {{{config}}}}}]", "t.yml"), "t.yml")
    return [m.removeprefix("t.yml: ") for m in info.value.messages]


def _read(endpoint: Endpoint) -> tuple[str, str, int, str, bytes, bytes | None]:
    """Where a sender goes: scheme, host it connects to, port, request target, Host header, Authorization."""
    return (endpoint.scheme, endpoint.host, endpoint.port, endpoint.target, endpoint.host_header,
            endpoint.authorization)


def _basic(credentials: str) -> bytes:
    return b"Basic " + base64.b64encode(credentials.encode())


# --- http-log's http_endpoint ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "read"), [
    # url.lua:143: the host runs to the first "/"; handler.lua:127 writes "http://example.com?x:80/", which
    # lua-resty-http reads as host example.com, path "/" and query "x:80/"
    ("http://example.com?x", ("http", "example.com", 80, "/?x:80/", b"example.com", None)),
    # url.lua:161: the user info ends at the first "@", the host is the rest (resty takes "ss@h" as a host name)
    ("http://u:p@ss@h/x", ("http", "ss@h", 80, "/x", b"ss@h", _basic("u:p"))),
    # handler.lua:110, 127: tonumber of the port, written with %d (LuaJIT truncates)
    ("http://h:0x50/x", ("http", "h", 80, "/x", b"h", None)),
    ("http://h: 8080/x", ("http", "h", 8080, "/x", b"h:8080", None)),
    ("http://h:80.9/x", ("http", "h", 80, "/x", b"h", None)),
    # the host as written (resty's Host header is its host), not lower-cased
    ("http://Example.COM/x", ("http", "Example.COM", 80, "/x", b"Example.COM", None)),
])
def test_http_log_sends_where_kongs_http_log_sends(url: str, read: tuple):
    """handler.lua:60-80: socket.url's parts, the scheme's port and "/" for none; :127-129 writes them as
    scheme://host:%d/path for request_uri, whose parse_uri (http.lua:258-262) gives the host, port, path and query
    it connects to and requests; :119 the user info, as written, is Basic credentials."""
    assert _read(kong_endpoint(url)) == read


@pytest.mark.parametrize(("url", "problem"), [
    # url.lua:163: the port after the last ":" is "" or "80?x": tonumber is nil and %d fails on every send
    ("http://h:", "invalid port: Kong's http-log writes tonumber of it with %d"),
    ("http://h:80?x", "invalid port: Kong's http-log writes tonumber of it with %d"),
    # url.lua:167 takes the brackets off, handler.lua:127 writes none: resty's pattern refuses "http://::1:9/x"
    ("http://[::1]:9/x", "lua-resty-http refuses the url Kong's http-log writes from it"),
    # handler.lua:68-75 gives no port to another scheme, and resty's pattern is case-sensitive
    ("HTTP://h/x", "expected an http:// or https:// URL, in lower case"),
    # url.lua:140: a scheme only at the very start, so no "//" authority either: typedefs.url's "missing host"
    (" http://h/x", "missing host in url"),
])
def test_http_log_refuses_what_kong_refuses_or_can_never_send_to(url: str, problem: str):
    """typedefs.lua:205-221 refuses a url without host or scheme; a url whose port tonumber cannot read, with an
    IPv6 host or another scheme loads in Kong, but every send fails before connecting (handler.lua:110-129: %d of
    nil, or lua-resty-http's "bad uri"), so check-config says so. urlsplit read all of them as a collector."""
    [message] = _errors("http-log", f"http_endpoint: '{url}'")
    assert message.startswith(f"plugins[0].config.http_endpoint: {problem}")


# --- opentelemetry's traces_endpoint and zipkin's http_endpoint ----------------------------------------------------

@pytest.mark.parametrize(("url", "read"), [
    # http.lua:260: the host is what precedes ":", "/" or "?": a user info's name; the rest is the path, no
    # credentials sent
    ("http://u:p@collector/x", ("http", "u", 80, ":p@collector/x", b"u", None)),
    # no fragment is taken off: it is sent in the path or the query
    ("http://h/v1/traces#f", ("http", "h", 80, "/v1/traces#f", b"h", None)),
    ("http://h/v1?a=1#f", ("http", "h", 80, "/v1?a=1#f", b"h", None)),
    # a ":" without digits is no port: it starts the path
    ("http://h:/x", ("http", "h", 80, ":/x", b"h", None)),
    ("http://Example.COM:8080/x", ("http", "Example.COM", 8080, "/x", b"Example.COM:8080", None)),
    # the common urls, read as before
    ("https://h", ("https", "h", 443, "/", b"h", None)),
    ("http://[::1]:4318/v1/traces", ("http", "::1", 4318, "/v1/traces", b"[::1]:4318", None)),
    ("http://h:4318/v1/traces?x=1", ("http", "h", 4318, "/v1/traces?x=1", b"h:4318", None)),
])
@pytest.mark.parametrize(("plugin", "field"), COLLECTORS)
def test_a_collector_url_is_read_as_lua_resty_http_reads_it(plugin: str, field: str, url: str, read: tuple):
    """kong/plugins/opentelemetry/utils.lua:19 and kong/plugins/zipkin/reporter.lua:34 call
    request_uri(conf.<endpoint>): lua-resty-http's parse_uri (http.lua:255-307) reads the url, its
    _format_request (:314-329) makes the target, send_request (:717-733) the Host header. urlsplit sent a user info
    as Basic credentials to the host after it, dropped the fragment and read `h:` as port 80."""
    config = parse_config(f"{SERVICE}plugins: [{{name: {plugin}, config: {{{field}: '{url}'}}}}]", "t.yml")
    [policy] = compile_config(config, "t.yml").global_loggers
    assert policy.sender is not None and _read(policy.sender.endpoint) == read


@pytest.mark.parametrize(("url", "problem"), [
    # the pattern is case-sensitive: Kong loads it, every export is a "bad uri"
    ("HTTPS://h/x", "expected an http:// or https:// URL, in lower case"),
    # no host before the ":" (socket.url's host is h, after the user info)
    ("http://:x@h/x", 'lua-resty-http, which Kong sends with, refuses it ("bad uri")'),
    # typedefs.url: no scheme at the very start
    (" http://h/x", "missing host in url"),
])
@pytest.mark.parametrize(("plugin", "field"), COLLECTORS)
def test_a_collector_url_kong_refuses_or_can_never_send_to_is_refused(plugin: str, field: str, url: str,
                                                                       problem: str):
    """typedefs.lua:205-221 for " http://h/x"; for the others Kong loads the plugin and lua-resty-http's parse_uri
    returns "bad uri" on every send (http.lua:258-270). urlsplit took all three."""
    [message] = _errors(plugin, f"{field}: '{url}'")
    assert message.startswith(f"plugins[0].config.{field}: {problem}")


def test_the_deprecated_opentelemetry_endpoint_is_named_in_its_message():
    """opentelemetry/schema.lua:104: `endpoint` is a typedefs.url of its own, which Kong checks under its name."""
    [message] = _errors("opentelemetry", "endpoint: 'HTTPS://h/x'")
    assert message.startswith("plugins[0].config.endpoint: expected an http:// or https:// URL")


async def test_an_export_requests_the_urls_fragment_as_lua_resty_http_does(nursery: trio.Nursery):
    """http.lua:258-262: the path runs to the "?" (none here), so "#part" goes in the request line, and the
    collector sees it; urlsplit dropped it."""
    collector = EchoBackend("collector")
    await nursery.start(collector.serve)
    config = msgspec.convert({"traces_endpoint": f"http://127.0.0.1:{collector.port}/v1/traces#part"},
                             OpenTelemetryConfig)
    plugin = OpenTelemetry(config, "t", queues=Queues(), tracing=TracingSettings("all", 1.0))
    with trio.fail_after(10):
        await plugin.sender.send(b"x", b"application/x-protobuf")
    [seen] = collector.requests
    assert seen.target == "/v1/traces#part"


def test_request_uri_endpoint_keeps_a_user_info_out_of_its_messages():
    """The path lua-resty-http makes of `http://u:secret@h/x` holds the password: an error naming the endpoint
    does not show it."""
    assert "secret" not in str(request_uri_endpoint("http://u:secret@h/x"))


# --- redirect's location -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("location", ["http://?x", "http://[]/x", "http://u@h@/x", "1a://h/x", "http://a b/x"])
def test_a_location_in_which_socket_url_finds_a_scheme_and_host_is_sent_as_written(location: str):
    """typedefs.lua:205-221: socket.url's host (`?x`, `[]`, `h@`, `a b`) and scheme (`1a`: a digit may start it,
    url.lua:140) are all Kong asks; handler.lua:14, 26 send the location as written. urlsplit found no host (or
    refused the brackets, or a space in the host) and the gateway refused them."""
    policy = Redirect(msgspec.convert({"location": location}, RedirectConfig))
    assert policy.location == location.encode()


def test_a_location_with_a_space_before_its_scheme_is_refused():
    """url.lua:140: the scheme only at the very start, so socket.url finds neither scheme nor host: typedefs.url's
    "missing host in url". urlsplit took the leading space off and the gateway sent it."""
    [message] = _errors("redirect", "location: ' https://example.com/x'")
    assert message.startswith('plugins[0].config.location: expected a URL with a scheme and a host, got " https://'
                              'example.com/x": missing host in url')


def test_keep_incoming_path_with_a_location_ada_cannot_read_is_refused():
    """handler.lua:19-22: with keep_incoming_path Kong parses the location with ada (WHATWG), which has no host in
    `http://a b/x`, and indexes the nil it returns: every request fails. The schema takes the location (socket.url
    reads host "a b"), so check-config names the pair."""
    [message] = _errors("redirect", "location: 'http://a b/x', keep_incoming_path: true")
    assert message.startswith('plugins[0].config.location: with keep_incoming_path, Kong parses "http://a b/x" with '
                              "ada")
