"""A route's fields as Kong's routes schema checks them: spec/01-unit/01-db/01-schema/06-routes_spec.lua, on
kong/db/schema/entities/routes.lua, routes_subschemas.lua and the typedefs they use (router_path, hosts, headers,
utf8_name, tags, wildcard_host for snis, under Kong's default router_flavor traditional_compatible)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_kong_forms import errors, load

SERVICE = {"name": "s", "url": "http://127.0.0.1:9000"}


def document(route: dict[str, Any], version: str = "3.0") -> str:
    return json.dumps({"_format_version": version, "services": [{**SERVICE, "routes": [route]}]}, ensure_ascii=False)


def refused(route: dict[str, Any]) -> list[str]:
    return [m.removeprefix("services[0].routes[0].") for m in errors(document(route))]


def loads(route: dict[str, Any]) -> bool:
    return bool(load(document(route)).routes)


# --- paths (typedefs.router_path) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["~foo", "~^/api"])
def test_a_regex_path_starts_with_tilde_slash(path):
    """"must start with /": Kong's match_any { "^/", "^~/" }."""
    assert refused({"paths": [path]}) == [f'paths[0]: a regex path starts with "~/", got "{path}"']


@pytest.mark.parametrize("path", ["/foo//bar", "/foo/bar//", "//foo/bar", "~/a//b"])
def test_a_path_must_not_have_empty_segments(path):
    """"must not have empty segments (/foo//bar)": regex paths too (the match_none is on the whole value)."""
    assert refused({"paths": [path]}) == [f'paths[0]: must not have empty segments, got "{path}"']


@pytest.mark.parametrize(("path", "bad"), [
    ("/some%2words", "%2w"), ("/some%0Xwords", "%0X"), ("/some%2Gwords", "%2G"), ("/some%20words%", "%"),
    ("/some%20words%a", "%a"), ("/some%20words%ax", "%ax")])
def test_a_badly_percent_encoded_prefix_is_refused(path, bad):
    """"rejects badly percent-encoded values"."""
    assert refused({"paths": [path]}) == [
        f'paths[0]: invalid url-encoded value "{bad}" (a literal "%" is %25), got "{path}"']


@pytest.mark.parametrize(("path", "normalized"), [
    ("/%c3%A4", "/ä"), ("/%20", "/ "), ("/%61pi", "/api"), ("/a/../b", "/b"), ("/a/./b", "/a/b"), ("/a%2f", "/a%2F")])
def test_a_prefix_path_must_be_normalized(path, normalized):
    """"errors for not-normalized prefix path" (validate_path_with_regexes: `normalize(path, true)` must give it
    back; the router compares a prefix with the normalized request path)."""
    assert refused({"paths": [path]}) == [
        f'paths[0]: non-normalized path, consider using "{normalized}" instead (Kong compares a prefix with the '
        f'normalized request path), got "{path}"']


@pytest.mark.parametrize("path", ["/", "/abcd~user~2", "/ovo/", "/%25", "/endel%2Fst", "~/some%2words",
                                  "~/\\/*/user$", "/a b%2"])
def test_kongs_accepted_paths_load(path):
    """"accepts an apex '/'", "accepts unreserved characters", "accepts trailing slash", "won't fail when
    rust.regex update to 1.8"; %XX triplets are checked in prefixes of RFC 3986 characters only, not in regexes."""
    assert loads({"paths": [path]})


def test_a_2x_files_plain_paths_are_normalized_as_kongs_migration_does():
    """kong/db/declarative/migrations/route_path.lua: a 1.1 or 2.1 file's plain path is normalized, so it loads."""
    config = load(document({"paths": ["/%61pi/./v1", "/users/\\d+"]}, "2.1"))
    assert config.routes[0].paths == ["/api/v1", "~/users/\\d+"]


# --- hosts (typedefs.hosts) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["/example", ".example", "example:", "mock;bin", "example.com/org", "example-.org",
                                  "example.org-", "hello..example.com", "hello-.example.com", "a b"])
def test_an_invalid_hostname_is_refused(host):
    """"rejects invalid hostnames"."""
    assert refused({"hosts": [host]}) == [f"hosts[0]: invalid hostname: {host}"]


def test_a_host_with_an_invalid_port_is_refused():
    """"rejects values with an invalid port"."""
    assert refused({"hosts": ["example.com:1000000"]}) == [
        'hosts[0]: invalid port number, got "example.com:1000000"']


@pytest.mark.parametrize(("host", "why"), [
    ("*example.com", "must be placed at leftmost or rightmost label"),
    ("www.example*", "must be placed at leftmost or rightmost label"),
    ("mock*bin.com", "must be placed at leftmost or rightmost label"),
    ("example.*:80", "must be placed at leftmost or rightmost label"),
    ("*.example.*", "must have at most one wildcard"),
    ("**.example.com", "must have at most one wildcard"),
    ("*.example*.*", "must have at most one wildcard")])
def test_a_wildcard_is_one_whole_leftmost_or_rightmost_label(host, why):
    """"rejects invalid wildcard placement", "rejects host with too many wildcards"."""
    assert refused({"hosts": [host]}) == [f'hosts[0]: invalid wildcard: {why}, got "{host}"']


@pytest.mark.parametrize("host", [
    "hello.COM", "1991.io", "example.123", "example_api.com", "localhost", "example.com:80", "example.com:8080",
    "-with-SUPER-MONKEYS-pc58ag80a8qai00g7n9n", "example.*", "*.example.org", "*.example.org:321", "127.0.0.1:80",
    "[::1]:8000"])
def test_kongs_accepted_hosts_load(host):
    """"accepts valid hosts", "accepts hosts with valid wildcard"."""
    assert loads({"hosts": [host]})


# --- headers, snis, name, protocols, tags -----------------------------------------------------------------------


def test_a_header_name_is_letters_digits_dashes_and_underscores():
    """typedefs.header_name (kong/tools/http.lua validate_header_name)."""
    assert refused({"headers": {"x version": ["v1"]}}) == [
        "headers: bad header name 'x version', allowed characters are A-Z, a-z, 0-9, '_', and '-'"]


def test_a_header_value_must_not_be_empty():
    """"values must be non-empty string"."""
    assert refused({"headers": {"location": [""]}}) == [
        "headers.location[0]: must not be empty (a header's value to match)"]


def test_an_sni_must_not_be_an_ip_address():
    """"rejects invalid SNIs" (typedefs.wildcard_host: "must not be an IP")."""
    assert refused({"protocols": ["https"], "snis": ["127.0.0.1"]}) == [
        'snis[0]: must not be an IP, got "127.0.0.1"']


@pytest.mark.parametrize("name", ["examp:le", "examp;le", "examp/le", "examp le"])
def test_a_name_is_refused_with_an_ascii_character_other_than_alphanumerics_and_dot_dash_underscore_tilde(name):
    """name attribute, "rejects invalid names" (typedefs.utf8_name)."""
    assert refused({"paths": ["/"], "name": name}) == [
        f"name: invalid value '{name}': the only accepted ascii characters are alphanumerics or ., -, _, and ~"]


def test_an_empty_name_is_refused():
    assert refused({"paths": ["/"], "name": ""}) == ["name: length must be at least 1"]


def test_a_name_that_is_not_utf8_is_refused():
    """A YAML escape of half a surrogate pair is no UTF-8 text (it made the loader crash computing the route's id):
    refused where the document is read, as any string of one (Kong's utf8_name says "invalid utf-8 character
    sequence")."""
    assert errors('services: [{name: s, url: "http://h", routes: [{name: "\\ud83e", paths: [/]}]}]') == [
        "services[0].routes[0].name: a \\u escape of a surrogate is not a character (write the character itself, "
        "or its \\U escape: \\U0001F600)"]


@pytest.mark.parametrize("name", ["~3..x4~.M-p~1__3_", "孔", "Конг", "🦍"])
def test_kongs_accepted_names_load(name):
    """"accepts valid names"."""
    assert loads({"paths": ["/"], "name": name})


def test_protocols_must_not_be_empty():
    """"invalid protocols produces error": protocols is a set of at least one."""
    assert "protocols: expected at least one of http, https" in refused({"paths": ["/"], "protocols": []})


def test_a_tag_is_printable_without_commas_and_slashes():
    """typedefs.tags, a field of the routes schema."""
    assert refused({"paths": ["/"], "tags": ["team/a"]}) == [
        "tags[0]: invalid tag 'team/a': expected printable ascii (except `,` and `/`) or valid utf-8 sequences"]


# --- what Kong refuses and the gateway refused already ---------------------------------------------------------


@pytest.mark.parametrize(("route", "expected"), [
    ({"paths": ["~/users/(foo/profile"]},
     "paths[0]: invalid regex: '/users/(foo/profile' (PCRE returned: pcre2_compile() failed: missing closing "
     'parenthesis in "/users/(foo/profile")'),
    ({"paths": ["/"], "https_redirect_status_code": 404},
     "https_redirect_status_code: expected one of 301, 302, 307, 308, 426, got 404"),
    ({"paths": ["/"], "path_handling": "v2"}, 'path_handling: expected one of "v0", "v1", got "v2"'),
    ({"methods": ["HELLO WORLD"]}, 'methods[0]: expected an upper-case HTTP method, got "HELLO WORLD"'),
    ({"paths": ["/"], "headers": {"HoSt": ["example.com"]}}, "headers.HoSt: match hosts with the route's hosts field"),
    ({"paths": ["/"], "protocols": ["http", "tcp"]},
     "protocols: tcp is not supported by the gateway (HTTP routes only: http, https)"),
    ({"hosts": ["example.com"], "expression": 'http.method == "GET"'},
     "expression: expression routes (router_flavor expressions) is not supported by the gateway"),
    ({"paths": ["/"], "priority": 100},
     "priority: priority (router_flavor expressions) is not supported by the gateway"),
])
def test_what_kong_refuses_is_refused_at_its_field(route, expected):
    """"invalid https_redirect_status_code", "rejects invalid values" (methods), "cannot contain 'host' key",
    "conflicting protocols", the expressions flavor's fields (Kong's traditional_compatible: "unknown field")."""
    assert refused(route) == [expected]
