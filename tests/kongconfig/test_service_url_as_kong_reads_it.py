"""A service's `url` as Kong 3.9.3 reads it: LuaSocket 3.0-rc1's socket.url parse (src/url.lua:126-175 at tag
v3.0-rc1, the version kong-3.9.3-0.rockspec:17 pins) and the services shorthand (kong/db/schema/entities/
services.lua:75-101), then the service schema's typedefs (host, port, path, protocol). The gateway read it with
urllib's urlsplit, which differs: no scheme, a `?` or second `@` before the path, an empty port. Pure load/compile
tests: no process, no socket."""

from __future__ import annotations

import json

import pytest

from gateway.config import Config, parse_config
from gateway.config.errors import ConfigError
from gateway.runtime import Runtime, compile_config
from gateway.telemetry.entities import RouteFacts


def _load(url: str, extra: str = "") -> tuple[Config, Runtime]:
    config = parse_config(f'_format_version: "3.0"\nservices:\n- {{name: s, url: "{url}"{extra},'
                          " routes: [{name: r, paths: [/]}]}\n", "kong.yml")
    return config, compile_config(config, "kong.yml")


def _read(url: str) -> tuple[str, str, int, bytes]:
    """The service's protocol, its one target (host, port) and its path, as the gateway proxies to it."""
    config, runtime = _load(url)
    service = runtime.services["s"]
    [target] = service.group.targets
    protocol = "https" if service.tls is not None else "http"
    assert protocol == config.services[0].protocol
    return protocol, target.host, target.port, service.path


def _errors(url: str, extra: str = "") -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(url, extra)
    return [m.removeprefix("kong.yml: ") for m in info.value.messages]


# --- a url without a scheme -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "read"), [
    ("//example.com:443/x", ("https", "example.com", 443, b"/x")),
    ("//127.0.0.1:9000/x", ("http", "127.0.0.1", 9000, b"/x")),
    ("//example.com", ("http", "example.com", 80, b"")),
    ("//example.com:80/", ("http", "example.com", 80, b"/")),
])
def test_a_scheme_relative_service_url_loads_as_kongs_shorthand_reads_it(url: str, read: tuple[str, str, int, bytes]):
    """url.lua:140-146: without a scheme, `//` still starts the authority. services.lua:85-93: the protocol is then
    https for port 443, http for 80, else the default "http"; :97-101: the port the url's, else the protocol's. The
    gateway refused it as "expected an absolute URL"."""
    assert _read(url) == read


def test_the_log_entry_of_a_scheme_relative_service_url_carries_kongs_protocol_and_port():
    """services.lua:85-101 store protocol https and port 443 for `//example.com:443/x`, and kong/pdk/log.lua copies
    the service entity into every log entry."""
    config, _ = _load("//example.com:443/x")
    facts = RouteFacts(config.routes[0], "r", config.services[0])
    assert facts.service_json is not None
    entry = json.loads(bytes(facts.service_json))
    assert (entry["protocol"], entry["host"], entry["port"], entry["path"]) == ("https", "example.com", 443, "/x")


def test_tls_verify_is_taken_on_a_scheme_relative_service_url_on_port_443():
    """services.lua:62-65: tls_verify needs protocol https, which the shorthand gives `//h:443` (:88-93). The
    gateway looked for an `https://` prefix and refused it."""
    _, runtime = _load("//example.com:443/x", ", tls_verify: true")
    assert runtime.services["s"].tls is not None and runtime.services["s"].tls.verify


def test_tls_verify_is_refused_on_a_scheme_relative_service_url_on_another_port():
    """services.lua:93: `//h:8443` is protocol http (the default), so tls_verify is refused (:62-65)."""
    assert _errors("//example.com:8443/x", ", tls_verify: true") == [
        "services[0].tls_verify: only for protocol https (the service's protocol is http)"]


# --- where socket.url's parse and urlsplit differ ---------------------------------------------------------------

@pytest.mark.parametrize(("url", "problem"), [
    ("http://example.com?x", 'invalid host in "http://example.com?x": invalid value: example.com?x (Kong\'s url '
                             "reads the host up to the first /: write the / before the ?)"),
    ("http://u:p@ss@h/x", 'invalid host in "http://u:p@ss@h/x": invalid value: ss@h (Kong\'s url ends the user info '
                          "at its first @: write a @ within it as %40)"),
])
def test_a_service_url_whose_host_socket_url_reads_otherwise_is_refused(url: str, problem: str):
    """url.lua:143: the authority runs to the first `/` (a `?` is in it); :161: the user info ends at the first `@`.
    The host is then `example.com?x` or `ss@h`, which typedefs.host refuses (typedefs.lua:24-28). urlsplit ended
    the host at the `?` or took it after the last `@`, so the gateway proxied to example.com or h."""
    assert _errors(url) == [f"services[0].url: {problem}"]


@pytest.mark.parametrize(("url", "problem"), [
    ("http://example.com:", "expected an integer"),
    ("http://example.com:80?x", "expected an integer"),
    ("http://example.com:80.5", "expected an integer"),
    ("http://example.com:65536", "value should be between 0 and 65535"),
])
def test_a_service_url_whose_port_is_no_kong_port_is_refused(url: str, problem: str):
    """url.lua:163-164 take the port after the last `:` (maybe empty, or `80?x`); services.lua:83, 97-98 keep
    tonumber's number, else the port as written, and typedefs.port takes an integer from 0 to 65535
    (kong/db/schema/init.lua:978-984, 216). urlsplit read an empty port as none, so the gateway took port 80."""
    assert _errors(url) == [f'services[0].url: invalid port in "{url}": {problem}; give a port from 0 to 65535 after '
                            "the host's colon, or no colon"]


@pytest.mark.parametrize(("url", "read"), [
    ("http://example.com#f", ("http", "example.com", 80, b"")),
    ("http://example.com#f/x", ("http", "example.com", 80, b"")),
    ("http://example.com/p?q#f", ("http", "example.com", 80, b"/p")),
])
def test_a_service_urls_fragment_is_dropped_first(url: str, read: tuple[str, str, int, bytes]):
    """url.lua:135-138 (v3.0-rc1): the fragment, from the first `#`, goes before the authority is read, so
    `http://example.com#f` names host example.com."""
    assert _read(url) == read


@pytest.mark.parametrize(("url", "read"), [
    ("http://example.com: 8080/x", ("http", "example.com", 8080, b"/x")),
    ("http://example.com:08080/x", ("http", "example.com", 8080, b"/x")),
    ("http://example.com:1e3", ("http", "example.com", 1000, b"")),
    ("//example.com:0x1bb/x", ("https", "example.com", 443, b"/x")),
])
def test_a_service_urls_port_is_read_as_luas_tonumber_reads_it(url: str, read: tuple[str, str, int, bytes]):
    """services.lua:83: `tonumber(parsed_url.port)`, LuaJIT's (lj_strscan.c: spaces around, a decimal exponent, 0x
    hex); 443 then makes a url without a scheme https (:88-93). urlsplit refused a space, an exponent or hex."""
    assert _read(url) == read


def test_a_tab_in_what_kongs_url_shorthand_drops_is_dropped_with_it():
    """url.lua:153-156, 161-162: the params and the user info are taken off, and services.lua keeps neither, so a
    tab in them does not matter. The gateway refused any tab before the query."""
    assert _read("http://u\\tp@example.com/x;a\\tb") == ("http", "example.com", 80, b"/x")


# --- the common urls, as before ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "read"), [
    ("http://h", ("http", "h", 80, b"")),
    ("https://h", ("https", "h", 443, b"")),
    ("https://h:8443/p", ("https", "h", 8443, b"/p")),
    ("http://[::1]:80/", ("http", "::1", 80, b"/")),
    ("http://[::1]/", ("http", "::1", 80, b"/")),
    ("http://user:pw@example.com:81/p;x=1?q=2#f", ("http", "example.com", 81, b"/p")),
    ("http://h:0", ("http", "h", 0, b"")),
])
def test_a_common_service_url_reads_as_before(url: str, read: tuple[str, str, int, bytes]):
    """services.lua:79-101 on what socket.url's parse and urlsplit read alike: scheme, host (an IPv6 address without
    its brackets, url.lua:167), port (0 is Kong's), path; user info, params, query and fragment dropped."""
    assert _read(url) == read
