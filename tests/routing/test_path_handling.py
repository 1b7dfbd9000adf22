"""Kong's path join (service path + route path + request path), row by row from Kong's own table
(spec/fixtures/router_path_handling_tests.lua, expanded), through the router as a request sees it: every row, those
whose request path carries percent-encoded dots (%2E) too (the router normalizes the path as Kong). The table's v1 rows
are the traditional router's; Kong's default router (traditional_compatible) joins a v1 route as v0, as this one
does, and Kong's own spec runs them for the traditional flavor only."""

from __future__ import annotations

import json
import logging

import pytest

from gateway.config.loader import parse_config
from gateway.routing import Router, RouteSpec
from gateway.runtime import compile_config

KONG_TABLE = [
    # service_path, route_path, strip_path, path_handling, request_path, expected upstream path
    ('/', '/', False, 'v0', '/', '/'),
    ('/', '/', False, 'v1', '/', '/'),
    ('/', '/', True, 'v0', '/', '/'),
    ('/', '/', True, 'v1', '/', '/'),
    ('/', '/', False, 'v0', '/route', '/route'),
    ('/', '/', False, 'v1', '/route', '/route'),
    ('/', '/', True, 'v0', '/route', '/route'),
    ('/', '/', True, 'v1', '/route', '/route'),
    ('/', '/', False, 'v0', '/route/', '/route/'),
    ('/', '/', False, 'v1', '/route/', '/route/'),
    ('/', '/', True, 'v0', '/route/', '/route/'),
    ('/', '/', True, 'v1', '/route/', '/route/'),
    ('/', '/', False, 'v0', '/routereq', '/routereq'),
    ('/', '/', False, 'v1', '/routereq', '/routereq'),
    ('/', '/', True, 'v0', '/routereq', '/routereq'),
    ('/', '/', True, 'v1', '/routereq', '/routereq'),
    ('/', '/', False, 'v0', '/route/req', '/route/req'),
    ('/', '/', False, 'v1', '/route/req', '/route/req'),
    ('/', '/', True, 'v0', '/route/req', '/route/req'),
    ('/', '/', True, 'v1', '/route/req', '/route/req'),
    ('/', '/route', False, 'v0', '/route', '/route'),
    ('/', '/route', False, 'v1', '/route', '/route'),
    ('/', '/route', False, 'v0', '/route/', '/route/'),
    ('/', '/route', False, 'v1', '/route/', '/route/'),
    ('/', '/route', False, 'v0', '/routereq', '/routereq'),
    ('/', '/route', False, 'v1', '/routereq', '/routereq'),
    ('/', '/route', True, 'v0', '/route', '/'),
    ('/', '/route', True, 'v1', '/route', '/'),
    ('/', '/route', True, 'v0', '/route/', '/'),
    ('/', '/route', True, 'v1', '/route/', '/'),
    ('/', '/route', True, 'v0', '/routereq', '/req'),
    ('/', '/route', True, 'v1', '/routereq', '/req'),
    ('/', '/route/', False, 'v0', '/route/', '/route/'),
    ('/', '/route/', False, 'v1', '/route/', '/route/'),
    ('/', '/route/', False, 'v0', '/route/req', '/route/req'),
    ('/', '/route/', False, 'v1', '/route/req', '/route/req'),
    ('/', '/route/', True, 'v0', '/route/', '/'),
    ('/', '/route/', True, 'v1', '/route/', '/'),
    ('/', '/route/', True, 'v0', '/route/req', '/req'),
    ('/', '/route/', True, 'v1', '/route/req', '/req'),
    ('/srv', '/rou', False, 'v0', '/roureq', '/srv/roureq'),
    ('/srv', '/rou', False, 'v1', '/roureq', '/srvroureq'),
    ('/srv', '/rou', True, 'v0', '/roureq', '/srv/req'),
    ('/srv', '/rou', True, 'v1', '/roureq', '/srvreq'),
    ('/srv/', '/rou', False, 'v0', '/rou', '/srv/rou'),
    ('/srv/', '/rou', False, 'v1', '/rou', '/srv/rou'),
    ('/srv/', '/rou', True, 'v0', '/rou', '/srv'),
    ('/srv/', '/rou', True, 'v1', '/rou', '/srv/'),
    ('/service', '/', False, 'v0', '/', '/service'),
    ('/service', '/', False, 'v1', '/', '/service'),
    ('/service', '/', True, 'v0', '/', '/service'),
    ('/service', '/', True, 'v1', '/', '/service'),
    ('/service', '/', False, 'v0', '/route', '/service/route'),
    ('/service', '/', True, 'v0', '/route', '/service/route'),
    ('/service', '/', False, 'v1', '/route', '/serviceroute'),
    ('/service', '/', True, 'v1', '/route', '/serviceroute'),
    ('/service', '/', False, 'v0', '/route/', '/service/route/'),
    ('/service', '/', True, 'v0', '/route/', '/service/route/'),
    ('/service', '/', False, 'v1', '/route/', '/serviceroute/'),
    ('/service', '/', True, 'v1', '/route/', '/serviceroute/'),
    ('/service', '/', False, 'v0', '/routereq', '/service/routereq'),
    ('/service', '/', True, 'v0', '/routereq', '/service/routereq'),
    ('/service', '/', False, 'v1', '/routereq', '/serviceroutereq'),
    ('/service', '/', True, 'v1', '/routereq', '/serviceroutereq'),
    ('/service', '/', False, 'v0', '/route/req', '/service/route/req'),
    ('/service', '/', True, 'v0', '/route/req', '/service/route/req'),
    ('/service', '/', False, 'v1', '/route/req', '/serviceroute/req'),
    ('/service', '/', True, 'v1', '/route/req', '/serviceroute/req'),
    ('/service', '/route', False, 'v0', '/route', '/service/route'),
    ('/service', '/route', False, 'v1', '/route', '/serviceroute'),
    ('/service', '/route', False, 'v0', '/route/', '/service/route/'),
    ('/service', '/route', False, 'v1', '/route/', '/serviceroute/'),
    ('/service', '/route', False, 'v0', '/routereq', '/service/routereq'),
    ('/service', '/route', False, 'v1', '/routereq', '/serviceroutereq'),
    ('/service', '/route', True, 'v0', '/route', '/service'),
    ('/service', '/route', True, 'v1', '/route', '/service'),
    ('/service', '/route', True, 'v0', '/route/', '/service/'),
    ('/service', '/route', True, 'v1', '/route/', '/service/'),
    ('/service', '/route', True, 'v0', '/routereq', '/service/req'),
    ('/service', '/route', True, 'v1', '/routereq', '/servicereq'),
    ('/service', '/route/', False, 'v0', '/route/', '/service/route/'),
    ('/service', '/route/', False, 'v1', '/route/', '/serviceroute/'),
    ('/service', '/route/', False, 'v0', '/route/req', '/service/route/req'),
    ('/service', '/route/', False, 'v1', '/route/req', '/serviceroute/req'),
    ('/service', '/route/', True, 'v0', '/route/', '/service/'),
    ('/service', '/route/', True, 'v1', '/route/', '/service'),
    ('/service', '/route/', True, 'v0', '/route/req', '/service/req'),
    ('/service', '/route/', True, 'v1', '/route/req', '/servicereq'),
    ('/service/', '/', False, 'v0', '/route/', '/service/route/'),
    ('/service/', '/', True, 'v0', '/route/', '/service/route/'),
    ('/service/', '/', False, 'v1', '/route/', '/service/route/'),
    ('/service/', '/', True, 'v1', '/route/', '/service/route/'),
    ('/service/', '/', False, 'v0', '/', '/service/'),
    ('/service/', '/', False, 'v1', '/', '/service/'),
    ('/service/', '/', True, 'v0', '/', '/service/'),
    ('/service/', '/', True, 'v1', '/', '/service/'),
    ('/service/', '/', False, 'v0', '/route', '/service/route'),
    ('/service/', '/', False, 'v1', '/route', '/service/route'),
    ('/service/', '/', True, 'v0', '/route', '/service/route'),
    ('/service/', '/', True, 'v1', '/route', '/service/route'),
    ('/service/', '/', False, 'v0', '/routereq', '/service/routereq'),
    ('/service/', '/', False, 'v1', '/routereq', '/service/routereq'),
    ('/service/', '/', True, 'v0', '/routereq', '/service/routereq'),
    ('/service/', '/', True, 'v1', '/routereq', '/service/routereq'),
    ('/service/', '/', False, 'v0', '/route/req', '/service/route/req'),
    ('/service/', '/', False, 'v1', '/route/req', '/service/route/req'),
    ('/service/', '/', True, 'v0', '/route/req', '/service/route/req'),
    ('/service/', '/', True, 'v1', '/route/req', '/service/route/req'),
    ('/service/', '/route', False, 'v0', '/route', '/service/route'),
    ('/service/', '/route', False, 'v1', '/route', '/service/route'),
    ('/service/', '/route', False, 'v0', '/route/', '/service/route/'),
    ('/service/', '/route', False, 'v1', '/route/', '/service/route/'),
    ('/service/', '/route', False, 'v0', '/routereq', '/service/routereq'),
    ('/service/', '/route', False, 'v1', '/routereq', '/service/routereq'),
    ('/service/', '/route', True, 'v0', '/route', '/service'),
    ('/service/', '/route', True, 'v1', '/route', '/service/'),
    ('/service/', '/route', True, 'v0', '/route/', '/service/'),
    ('/service/', '/route', True, 'v1', '/route/', '/service/'),
    ('/service/', '/route', True, 'v0', '/routereq', '/service/req'),
    ('/service/', '/route', True, 'v1', '/routereq', '/service/req'),
    ('/service/', '/route/', False, 'v0', '/route/', '/service/route/'),
    ('/service/', '/route/', False, 'v1', '/route/', '/service/route/'),
    ('/service/', '/route/', False, 'v0', '/route/req', '/service/route/req'),
    ('/service/', '/route/', False, 'v1', '/route/req', '/service/route/req'),
    ('/service/', '/route/', True, 'v0', '/route/', '/service/'),
    ('/service/', '/route/', True, 'v1', '/route/', '/service/'),
    ('/service/', '/route/', True, 'v0', '/route/req', '/service/req'),
    ('/service/', '/route/', True, 'v1', '/route/req', '/service/req'),
    ('/', None, False, 'v0', '/', '/'),
    ('/', None, False, 'v1', '/', '/'),
    ('/', None, True, 'v0', '/', '/'),
    ('/', None, True, 'v1', '/', '/'),
    ('/', None, False, 'v0', '/route', '/route'),
    ('/', None, False, 'v1', '/route', '/route'),
    ('/', None, True, 'v0', '/route', '/route'),
    ('/', None, True, 'v1', '/route', '/route'),
    ('/', None, False, 'v0', '/route/', '/route/'),
    ('/', None, False, 'v1', '/route/', '/route/'),
    ('/', None, True, 'v0', '/route/', '/route/'),
    ('/', None, True, 'v1', '/route/', '/route/'),
    ('/service', None, False, 'v0', '/', '/service'),
    ('/service', None, False, 'v1', '/', '/service'),
    ('/service', None, True, 'v0', '/', '/service'),
    ('/service', None, True, 'v1', '/', '/service'),
    ('/service', None, False, 'v0', '/route', '/service/route'),
    ('/service', None, True, 'v0', '/route', '/service/route'),
    ('/service', None, False, 'v1', '/route', '/serviceroute'),
    ('/service', None, True, 'v1', '/route', '/serviceroute'),
    ('/service', None, False, 'v0', '/route/', '/service/route/'),
    ('/service', None, True, 'v0', '/route/', '/service/route/'),
    ('/service', None, False, 'v1', '/route/', '/serviceroute/'),
    ('/service', None, True, 'v1', '/route/', '/serviceroute/'),
    ('/service/', None, False, 'v0', '/', '/service/'),
    ('/service/', None, False, 'v1', '/', '/service/'),
    ('/service/', None, True, 'v0', '/', '/service/'),
    ('/service/', None, True, 'v1', '/', '/service/'),
    ('/service/', None, False, 'v0', '/route', '/service/route'),
    ('/service/', None, False, 'v1', '/route', '/service/route'),
    ('/service/', None, True, 'v0', '/route', '/service/route'),
    ('/service/', None, True, 'v1', '/route', '/service/route'),
    ('/service/', None, False, 'v0', '/route/', '/service/route/'),
    ('/service/', None, False, 'v1', '/route/', '/service/route/'),
    ('/service/', None, True, 'v0', '/route/', '/service/route/'),
    ('/service/', None, True, 'v1', '/route/', '/service/route/'),
    ('/service', '/route', True, 'v0', '/route./req', '/service/req'),
    ('/service', '/route', True, 'v1', '/route./req', '/servicereq'),
    ('/service/', '/route', True, 'v0', '/route./req', '/service/req'),
    ('/service/', '/route', True, 'v1', '/route./req', '/service/req'),
    ('/service', '/route', True, 'v0', '/route%2E/req', '/service/req'),
    ('/service', '/route', True, 'v1', '/route%2E/req', '/servicereq'),
    ('/service/', '/route', True, 'v0', '/route%2E/req', '/service/req'),
    ('/service/', '/route', True, 'v1', '/route%2E/req', '/service/req'),
    ('/service', '/route', True, 'v0', '/route%2e/req', '/service/req'),
    ('/service', '/route', True, 'v1', '/route%2e/req', '/servicereq'),
    ('/service/', '/route', True, 'v0', '/route%2e/req', '/service/req'),
    ('/service/', '/route', True, 'v1', '/route%2e/req', '/service/req'),
    ('/service', '/route', True, 'v0', '/route../req', '/service/req'),
    ('/service', '/route', True, 'v1', '/route../req', '/servicereq'),
    ('/service/', '/route', True, 'v0', '/route../req', '/service/req'),
    ('/service/', '/route', True, 'v1', '/route../req', '/service/req'),
    ('/service', '/route', True, 'v0', '/route%2E%2E/req', '/service/req'),
    ('/service', '/route', True, 'v1', '/route%2E%2E/req', '/servicereq'),
    ('/service/', '/route', True, 'v0', '/route%2E%2E/req', '/service/req'),
    ('/service/', '/route', True, 'v1', '/route%2E%2E/req', '/service/req'),
    ('/service', '/route', True, 'v0', '/route%2e%2E/req', '/service/req'),
    ('/service', '/route', True, 'v1', '/route%2e%2E/req', '/servicereq'),
    ('/service/', '/route', True, 'v0', '/route%2e%2E/req', '/service/req'),
    ('/service/', '/route', True, 'v1', '/route%2e%2E/req', '/service/req'),
    ('/service', '/route', False, 'v0', '/route./req', '/service/route./req'),
    ('/service', '/route', False, 'v1', '/route./req', '/serviceroute./req'),
    ('/service/', '/route', False, 'v0', '/route./req', '/service/route./req'),
    ('/service/', '/route', False, 'v1', '/route./req', '/service/route./req'),
    ('/service', '/route', False, 'v0', '/route%2E/req', '/service/route./req'),
    ('/service', '/route', False, 'v1', '/route%2E/req', '/serviceroute./req'),
    ('/service/', '/route', False, 'v0', '/route%2E/req', '/service/route./req'),
    ('/service/', '/route', False, 'v1', '/route%2E/req', '/service/route./req'),
    ('/service', '/route', False, 'v0', '/route%2e/req', '/service/route./req'),
    ('/service', '/route', False, 'v1', '/route%2e/req', '/serviceroute./req'),
    ('/service/', '/route', False, 'v0', '/route%2e/req', '/service/route./req'),
    ('/service/', '/route', False, 'v1', '/route%2e/req', '/service/route./req'),
    ('/service', '/route', False, 'v0', '/route../req', '/service/route../req'),
    ('/service', '/route', False, 'v1', '/route../req', '/serviceroute../req'),
    ('/service/', '/route', False, 'v0', '/route../req', '/service/route../req'),
    ('/service/', '/route', False, 'v1', '/route../req', '/service/route../req'),
    ('/service', '/route', False, 'v0', '/route%2E%2E/req', '/service/route../req'),
    ('/service', '/route', False, 'v1', '/route%2E%2E/req', '/serviceroute../req'),
    ('/service/', '/route', False, 'v0', '/route%2E%2E/req', '/service/route../req'),
    ('/service/', '/route', False, 'v1', '/route%2E%2E/req', '/service/route../req'),
    ('/service', '/route', False, 'v0', '/route%2e%2E/req', '/service/route../req'),
    ('/service', '/route', False, 'v1', '/route%2e%2E/req', '/serviceroute../req'),
    ('/service/', '/route', False, 'v0', '/route%2e%2E/req', '/service/route../req'),
    ('/service/', '/route', False, 'v1', '/route%2e%2E/req', '/service/route../req'),
]
ROWS = [row for row in KONG_TABLE if row[3] == "v0"]
V0 = {(service, route, strip, req): expected for service, route, strip, _, req, expected in ROWS}
V1_ROWS = [row for row in KONG_TABLE if row[3] == "v1"]


@pytest.mark.parametrize(("service_path", "route_path", "strip", "handling", "req_path", "expected"), ROWS)
def test_the_upstream_path_is_kongs_join(service_path, route_path, strip, handling, req_path, expected):
    spec = RouteSpec("r", paths=[route_path] if route_path else [], hosts=[] if route_path else ["a.test"],
                     strip_path=strip, service_path=service_path)
    match = Router([spec]).match(b"GET", req_path.encode(), b"a.test", [])
    assert match is not None and match.path == expected.encode()


@pytest.mark.parametrize(("service_path", "route_path", "strip", "handling", "req_path", "expected"),
                         [row for row in ROWS if row[1] is not None])
def test_a_regex_route_joins_like_a_prefix(service_path, route_path, strip, handling, req_path, expected):
    """Kong's second pass over the same table: the route path as a regex (~/[0]?rest)."""
    spec = RouteSpec("r", paths=["~/[0]?" + route_path[1:]], strip_path=strip, service_path=service_path)
    match = Router([spec]).match(b"GET", req_path.encode(), b"a.test", [])
    assert match is not None and match.path == expected.encode()


@pytest.mark.parametrize(("service_path", "route_path", "strip", "handling", "req_path", "v1_expected"), V1_ROWS)
def test_a_v1_route_joins_as_v0_as_kongs_default_router_does(service_path, route_path, strip, handling, req_path,
                                                              v1_expected, caplog):
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:9" + service_path, "routes": [
        {"name": "old", "path_handling": handling, "strip_path": strip,
         **({"paths": [route_path]} if route_path else {"hosts": ["a.test"]})}]}]}
    with caplog.at_level(logging.WARNING, "gateway.runtime"):
        runtime = compile_config(parse_config(json.dumps(doc)))
    match = runtime.router.match(b"GET", req_path.encode(), b"a.test", [])
    assert match is not None and match.path == V0[(service_path, route_path, strip, req_path)].encode()
    assert any(r.getMessage().startswith("old: path_handling='v1' is deprecated") for r in caplog.records)


def test_the_query_string_stays_apart_from_the_join():
    spec = RouteSpec("r", paths=["/api"], service_path="/svc")
    match = Router([spec]).match(b"GET", b"/api/x?a=1", None, [])
    assert (match.path, match.query) == (b"/svc/x", b"a=1")
