"""Kong's Status API on the status server (gateway.status.kong), over a real socket: GET /status as Kong's JSON (the
page for browsers), and the read-only upstream routes of kong/status/init.lua in DB-less mode
(spec/02-integration/08-status_api/01-core_routes_spec.lua and 02-targets_routes_spec.lua)."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from typing import Any

import pytest
import trio
from backends import request
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config.consumers import kong_consumer_id
from gateway.node.root import load_validated
from gateway.status import CheckResult, StatusApp, serve_status
from gateway.status.kong import EMPTY_CONFIG_HASH, KongUpstreamRoutes, bytes_to_str, kong_id, prefers_html

CONFIG = """\
_format_version: "3.0"
upstreams:
  - name: plain
    targets:
      - target: 127.0.0.1:9001
        weight: 10
      - target: 127.0.0.1:9002
        weight: 20
      - target: 127.0.0.1:9003
        weight: 30
  - name: hc
    healthchecks:
      passive:
        unhealthy: {http_failures: 1, tcp_failures: 1, timeouts: 1}
    targets:
      - target: 127.0.0.1:9101
        weight: 10
      - target: api.example:80
        weight: 20
      - target: nowhere.invalid:80
        weight: 30
  - name: empty
targets:
  - target: 10.0.0.9
    upstream: plain
    tags: [edge]
"""

KEEPER = [
    {"key": "plain|127.0.0.1:9001", "healthy": True, "weight": None, "drained": False},  # None: configured
    {"key": "plain|127.0.0.1:9002", "healthy": True, "weight": 20, "drained": False},
    {"key": "plain|127.0.0.1:9003", "healthy": True, "weight": 30, "drained": False},
    {"key": "plain|10.0.0.9:8000", "healthy": True, "weight": 100, "drained": False},
    {"key": "hc|127.0.0.1:9101", "healthy": True, "weight": 10, "drained": False},
    {"key": "hc|10.0.0.5:80", "name": "api.example:80", "healthy": False, "weight": 20, "drained": False},
    {"key": "hc|10.0.0.6:80", "name": "api.example:80", "healthy": False, "weight": 20, "drained": False},
    {"key": "hc|nowhere.invalid:80", "healthy": True, "weight": 30, "drained": False},  # did not resolve
]


class Source:
    """Workers report this process's pid; overview() gives the keeper's target states (None: not answering)."""

    def __init__(self) -> None:
        self.keeper: list[dict[str, Any]] | None = [dict(s) for s in KEEPER]

    async def workers(self) -> CheckResult:
        return CheckResult("healthy", {"expected": 1, "running": 1, "pids": [os.getpid()]})

    async def bus(self) -> CheckResult:
        return CheckResult("healthy")

    discovery = upstreams = memory = bus

    async def readiness(self) -> dict[str, bool]:
        return {"config": True}

    async def overview(self) -> dict[str, Any]:
        return {"status": {}, "targets": self.keeper, "breakers": {}, "upstreams": {}}


class Page:
    async def html(self) -> bytes:
        return b"<!DOCTYPE html><html>the page</html>"

    async def data(self) -> dict[str, Any]:
        return {"problems": []}


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    connections = Gauge("gateway_connections", "open connections", ["state", "worker"], registry=registry)
    for worker, counts in (("0", (3, 1, 1, 1)), ("1", (2, 0, 1, 1))):  # summed over the workers
        for state, n in zip(("active", "reading", "writing", "waiting"), counts, strict=True):
            connections.labels(state, worker).set(n)
    Counter("gateway_connections_accepted", "accepted", registry=registry).inc(42)
    requests = Counter("gateway_requests", "requests", ["route", "code"], registry=registry)
    requests.labels("r", "200").inc(90)
    requests.labels("r", "503").inc(10)
    Counter("gateway_requests_started", "begun", registry=registry).inc(101)  # (one still in progress)
    return registry


@pytest.fixture
def loaded(tmp_path: Any) -> tuple[str, Any]:
    path = tmp_path / "kong.yaml"
    path.write_text(CONFIG)
    return load_validated(str(path))


@pytest.fixture
async def served(nursery: trio.Nursery, loaded: tuple[str, Any]) -> tuple[Source, int]:
    text, config = loaded
    source = Source()
    app = StatusApp(source, _registry(), node="gateway@test", check_timeout=1.0, page=Page(),
                    families=lambda: list(_registry().collect()), config=lambda: config,
                    config_text=lambda: text, node_id=lambda: "7f3c1e1a-0000-4000-8000-000000000001")
    _, port = await nursery.start(serve_status, app, "127.0.0.1", 0)
    return source, port


# --- GET /status --------------------------------------------------------------------------------------------------


async def test_status_is_kongs_json_for_curl_and_agents(served: tuple[Source, int],
                                                      loaded: tuple[str, Any]) -> None:
    _, port = served
    for i, accept in enumerate(([], [("Accept", "*/*")], [("Accept", "application/json")])):
        reply = await request(port, "GET", "/status", headers=accept)
        assert reply.status == 200 and reply.header("content-type") == "application/json; charset=utf-8", accept
        doc = reply.json()
        assert sorted(doc) == ["configuration_hash", "memory", "server"]  # DB-less: no "database"
        if i == 0:  # the workers' counts and this request's, the status server's first (writing: it is answered)
            assert doc["server"] == {"connections_active": 6, "connections_reading": 1, "connections_writing": 3,
                                     "connections_waiting": 2, "connections_accepted": 43,
                                     "connections_handled": 43, "total_requests": 102}
        assert doc["configuration_hash"] == hashlib.md5(loaded[0].encode()).hexdigest()
        assert doc["memory"]["lua_shared_dicts"] == {}
        [worker] = doc["memory"]["workers_lua_vms"]
        assert worker["pid"] == os.getpid() and re.fullmatch(r"\d+\.\d\d MiB", worker["http_allocated_gc"])


async def test_status_memory_units_as_kongs(served: tuple[Source, int]) -> None:
    _, port = served

    async def gc(query: str) -> str | int:
        reply = await request(port, "GET", "/status?" + query)
        assert reply.status == 200
        value: str | int = reply.json()["memory"]["workers_lua_vms"][0]["http_allocated_gc"]
        return value

    assert re.fullmatch(r"\d+\.\d{3} KiB", await gc("unit=k&scale=3"))
    assert re.fullmatch(r"\d+ GiB", await gc("unit=G&scale=0"))
    # kong/pdk/node.lua convert_bytes: unit b is floor(bytes), a JSON number a check can compare
    assert isinstance(await gc("unit=b"), int) and isinstance(await gc("unit=B"), int)
    assert re.fullmatch(r"\d+\.\d\d MiB", await gc("scale=oops"))  # tonumber(): nil, the default scale
    bad = await request(port, "GET", "/status?unit=z")
    assert bad.status == 400 and bad.json() == {"message": "invalid unit 'z' (expected 'k/K', 'm/M', or 'g/G')"}
    bad = await request(port, "GET", "/status?unit=k&scale=-1")
    assert bad.status == 400 and bad.json() == {"message": "scale must be equal or greater than 0"}
    assert bytes_to_str(5497558) == "5497558" and bytes_to_str(5497558, "m") == "5.24 MiB"  # Kong's doc examples
    assert bytes_to_str(5497558, "G", 3) == "0.005 GiB"


async def test_status_page_for_browsers(served: tuple[Source, int]) -> None:
    _, port = served
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    reply = await request(port, "GET", "/status", headers=[("Accept", browser)])
    assert reply.status == 200 and reply.header("content-type").startswith("text/html")
    assert reply.body.startswith(b"<!DOCTYPE html>") and reply.header("vary") == "Accept"
    assert (await request(port, "GET", "/status.json")).json() == {"problems": []}  # as it was
    assert prefers_html("text/html") and not prefers_html("*/*") and not prefers_html("")
    assert not prefers_html("application/json, text/html") and not prefers_html("text/html;q=0, */*")
    assert prefers_html("text/*, application/json;q=0.5")
    post = await request(port, "POST", "/status", headers=[("Content-Type", "application/json")], body=b"{}")
    assert post.status == 405 and post.json() == {"message": "Method not allowed"}


async def test_status_without_a_page_or_config(nursery: trio.Nursery) -> None:
    app = StatusApp(Source(), CollectorRegistry())
    _, port = await nursery.start(serve_status, app, "127.0.0.1", 0)
    reply = await request(port, "GET", "/status", headers=[("Accept", "text/html")])  # no page: the JSON
    doc = reply.json()
    assert reply.status == 200 and doc["configuration_hash"] == EMPTY_CONFIG_HASH
    assert doc["server"]["total_requests"] == 1 and doc["server"]["connections_active"] == 1  # (this request)
    missing = await request(port, "GET", "/upstreams/plain/targets")
    assert missing.status == 404 and missing.json() == {"message": "Not found"}


# --- the upstream routes ------------------------------------------------------------------------------------------


def _ids(doc: dict[str, Any]) -> list[str]:
    return [t["target"] for t in doc["data"]]


async def test_targets_of_an_upstream(served: tuple[Source, int]) -> None:
    _, port = served
    up_id = kong_id("upstreams", "plain")
    for path in ("/upstreams/plain/targets", "/upstreams/plain/targets/", f"/upstreams/{up_id}/targets"):
        reply = await request(port, "GET", path)
        assert reply.status == 200, path
        doc = reply.json()
        assert _ids(doc) == ["10.0.0.9:8000", "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
        assert doc["next"] is None and "offset" not in doc
    first = doc["data"][1]
    assert first == {"id": kong_id("targets", f"targets:*:{up_id}:127.0.0.1:9001"), "upstream": {"id": up_id},
                     "target": "127.0.0.1:9001", "weight": 10, "tags": None}
    top = doc["data"][0]  # a top-level target's id: keyed by the upstream as the file names it
    assert top["id"] == kong_id("targets", "targets:*:plain:10.0.0.9") and top["tags"] == ["edge"]
    assert kong_id("consumers", "alice") == kong_consumer_id("alice")  # the same derivation as Kong's consumers
    empty = await request(port, "GET", "/upstreams/empty/targets")
    assert empty.status == 200 and empty.json() == {"data": [], "next": None} and b'"data":[]' in empty.body


async def test_targets_all_paginates(served: tuple[Source, int]) -> None:
    _, port = served
    pages, offset = [], ""
    for _ in range(2):
        reply = await request(port, "GET", f"/upstreams/plain/targets/all?size=2&offset={offset}")
        assert reply.status == 200
        doc = reply.json()
        pages.append(_ids(doc))
        offset = doc.get("offset", "")
    assert pages == [["10.0.0.9:8000", "127.0.0.1:9001"], ["127.0.0.1:9002", "127.0.0.1:9003"]]
    first = (await request(port, "GET", "/upstreams/plain/targets?size=2")).json()
    assert first["offset"] == "2" and first["next"] == "/upstreams/plain/targets?offset=2"
    assert (await request(port, "GET", "/upstreams/plain/targets/all?foo=bar")).status == 200  # filters ignored
    empty = await request(port, "GET", "/upstreams/empty/targets/all")
    assert empty.json() == {"data": [], "next": None}
    bad = await request(port, "GET", "/upstreams/plain/targets?size=many")
    assert bad.status == 400 and bad.json()["message"] == "size must be a number"


async def test_one_target(served: tuple[Source, int]) -> None:
    _, port = served
    by_name = await request(port, "GET", "/upstreams/plain/targets/127.0.0.1:9002")
    assert by_name.status == 200 and by_name.json()["weight"] == 20
    by_id = await request(port, "GET", f"/upstreams/plain/targets/{by_name.json()['id']}")
    assert by_id.json() == by_name.json()
    for path in ("/upstreams/plain/targets/127.0.0.1:9999", "/upstreams/hc/targets/127.0.0.1:9002",
                 f"/upstreams/plain/targets/{uuid.uuid4()}", "/upstreams/nope/targets/127.0.0.1:9002"):
        reply = await request(port, "GET", path)
        assert reply.status == 404 and reply.json() == {"message": "Not found"}, path


async def test_what_kongs_status_api_does_not_have(served: tuple[Source, int]) -> None:
    _, port = served
    for path in ("/upstreams", "/upstreams/plain", "/upstreams/nope/health", "/upstreams/nope/targets",
                 "/upstreams/plain/targets/127.0.0.1:9001/unhealthy"):
        reply = await request(port, "GET", path)
        assert reply.status == 404 and reply.json() == {"message": "Not found"}, path
    assert (await request(port, "POST", "/upstreams/plain/targets/127.0.0.1:9001/unhealthy")).status == 404
    for method, path in (("POST", "/upstreams/plain/targets"), ("PATCH", "/upstreams/plain/targets/127.0.0.1:9001"),
                         ("PUT", "/upstreams/plain/targets/127.0.0.1:9001"),
                         ("DELETE", "/upstreams/plain/targets/127.0.0.1:9001")):
        reply = await request(port, method, path, headers=[("Content-Type", "application/json")], body=b"{}")
        assert reply.status == 405 and reply.json() == {"message": "Method not allowed"}, (method, path)
    options = await request(port, "OPTIONS", "/upstreams/plain/health")
    assert options.status == 204 and options.header("allow") == "GET, HEAD, OPTIONS"
    head = await request(port, "HEAD", "/upstreams/plain/targets")
    assert head.status == 200 and head.body == b""


async def test_health_with_healthchecks_off(served: tuple[Source, int]) -> None:
    _, port = served
    for path in ("/upstreams/plain/health", "/upstreams/plain/health/"):
        doc = (await request(port, "GET", path)).json()
        assert doc["next"] is None and doc["node_id"] == "7f3c1e1a-0000-4000-8000-000000000001"
        assert len(doc["data"]) == 4 and {t["health"] for t in doc["data"]} == {"HEALTHCHECKS_OFF"}
    row = doc["data"][1]
    assert row["target"] == "127.0.0.1:9001" and row["data"] == {
        "host": "127.0.0.1", "port": 9001, "dns": "A", "nodeWeight": 10,
        "weight": {"total": 10, "unavailable": 0, "available": 10},
        "addresses": [{"ip": "127.0.0.1", "port": 9001, "weight": 10, "health": "HEALTHCHECKS_OFF"}]}


async def test_health_with_healthchecks_on(served: tuple[Source, int]) -> None:
    source, port = served
    doc = (await request(port, "GET", "/upstreams/hc/health")).json()
    health = {t["target"]: t["health"] for t in doc["data"]}
    assert health == {"127.0.0.1:9101": "HEALTHY", "api.example:80": "UNHEALTHY", "nowhere.invalid:80": "DNS_ERROR"}
    named = doc["data"][1]["data"]
    assert named["host"] == "api.example" and named["weight"] == {"total": 40, "unavailable": 40, "available": 0}
    assert [(a["ip"], a["health"]) for a in named["addresses"]] == [("10.0.0.5", "UNHEALTHY"),
                                                                   ("10.0.0.6", "UNHEALTHY")]
    assert "data" not in doc["data"][2]  # not in the balancer: no data, as Kong
    source.keeper[6]["healthy"] = True  # type: ignore[index]
    doc = (await request(port, "GET", "/upstreams/hc/health")).json()
    assert doc["data"][1]["health"] == "HEALTHY"  # one healthy address makes the target HEALTHY
    balancer = (await request(port, "GET", "/upstreams/hc/health?balancer_health=1")).json()
    assert balancer["next"] is None and balancer["node_id"]
    data = balancer["data"]
    assert data["health"] == "HEALTHY" and data["balancer_health"] == "HEALTHY"
    assert data["id"] == kong_id("upstreams", "hc") and data["details"]["healthy"] is True
    assert data["details"]["weight"] == {"total": 50, "unavailable": 20, "available": 30}
    assert [h["host"] for h in data["details"]["hosts"]] == ["127.0.0.1", "api.example", "nowhere.invalid"]
    off = (await request(port, "GET", "/upstreams/plain/health?balancer_health=1")).json()["data"]
    assert off["health"] == "HEALTHCHECKS_OFF" and off["balancer_health"] == "HEALTHY"


async def test_health_when_the_keeper_does_not_answer(served: tuple[Source, int]) -> None:
    source, port = served
    source.keeper = None
    reply = await request(port, "GET", "/upstreams/hc/health")
    assert reply.status == 200
    assert [sorted(t) for t in reply.json()["data"]] == [["id", "tags", "target", "upstream", "weight"]] * 3
    balancer = (await request(port, "GET", "/upstreams/hc/health?balancer_health=1")).json()
    assert "data" not in balancer



async def test_an_ipv6_target_is_spelt_as_kongs_targets_dao_formats_it(tmp_path: Any) -> None:
    """Kong lists an upstream's targets through its targets DAO, whose select_by_upstream_raw sets
    `target.target = format_target(target.target)` (kong/db/dao/targets.lua:160-164, :31-36; kong/tools/ip.lua
    normalize_ipv6, format_host): `[0000:0000:0000:0000:0000:0000:0000:0001]:9001` for `[::1]:9001`. GET
    .../targets/{target} compares that spelling (select_by_upstream_filter, :285-296), and the health route's host
    and address ip are the balancer's target.name and address.ip (balancers.lua:505-527), the same form. The gateway
    listed `[::1]:9001`."""
    path = tmp_path / "kong.yaml"
    path.write_text('_format_version: "3.0"\nupstreams:\n  - name: v6\n    targets:\n      - target: "[::1]:9001"\n')
    _, config = load_validated(str(path))

    async def overview() -> list[dict[str, Any]]:
        return [{"key": "v6|[::1]:9001", "healthy": True, "weight": None, "drained": False}]

    routes = KongUpstreamRoutes(lambda: config, overview, lambda: "node")
    kong = "[0000:0000:0000:0000:0000:0000:0000:0001]"
    status, listed = await routes.answer("v6", "targets", None, {})
    assert status == 200 and _ids(listed) == [f"{kong}:9001"]
    status, one = await routes.answer("v6", "target", f"{kong}:9001", {})
    assert status == 200 and one == listed["data"][0]
    assert (await routes.answer("v6", "target", "[::1]:9001", {}))[0] == 404  # Kong compares the DAO's spelling
    _, health = await routes.answer("v6", "health", None, {})
    data = health["data"][0]["data"]
    assert data["host"] == kong and data["dns"] == "AAAA"
    assert [(a["ip"], a["port"]) for a in data["addresses"]] == [(kong, 9001)]


# --- /status/ready: Kong's methods and its drain switch (kong/status/ready.lua, api_helpers.attach_routes) ---------


async def test_a_trailing_slash_on_kongs_status_routes_is_ignored_as_kongs_default_route_does(
        served: tuple[Source, int]) -> None:
    """kong/status/init.lua sets api_helpers.default_route, which resolves a path without its one trailing slash
    before answering 404: /status/ and /status/ready/ are /status and /status/ready."""
    _, port = served
    status = await request(port, "GET", "/status/")
    assert status.status == 200 and set(status.json()) == {"memory", "server", "configuration_hash"}
    ready = await request(port, "GET", "/status/ready/")
    assert (ready.status, ready.json()) == (200, {"message": "ready"})
    assert (await request(port, "GET", "/status//")).status == 404  # one slash only


async def test_status_ready_has_kongs_methods_get_head_post_and_options(served: tuple[Source, int]) -> None:
    """ready.lua defines GET and POST; attach_routes adds HEAD and an OPTIONS listing them (204); handle_error
    answers any other method 405 {"message": "Method not allowed"}, not the gateway's own 405 shape."""
    _, port = served
    options = await request(port, "OPTIONS", "/status/ready")
    assert options.status == 204 and options.header("allow") == "GET, HEAD, OPTIONS, POST"
    head = await request(port, "HEAD", "/status/ready")
    assert head.status == 200 and head.body == b""
    for method in ("DELETE", "PUT", "PATCH"):
        reply = await request(port, method, "/status/ready")
        assert (reply.status, reply.json()) == (405, {"message": "Method not allowed"}), method


@pytest.mark.parametrize(("headers", "body", "query"), [
    ([("content-type", "application/x-www-form-urlencoded")], b"status=draining", ""),
    ([("content-type", "application/json")], b'{"status": "draining"}', ""),
    ([], b"", "?status=draining"),
], ids=["form", "json", "query"])
async def test_post_status_draining_makes_status_ready_answer_503_draining(
        nursery: trio.Nursery, loaded: tuple[str, Any], headers: list[tuple[str, str]], body: bytes,
        query: str) -> None:
    """POST /status/ready with status=draining (Kong's self.params: the query, a form or a JSON body) answers 204
    and from then on GET /status/ready is 503 {"message": "draining"}, so a load balancer takes the node out while
    it keeps serving (until a reload: tests/test_reload_start_only_keys.py)."""
    app = StatusApp(Source(), _registry(), config=lambda: loaded[1])
    _, port = await nursery.start(serve_status, app, "127.0.0.1", 0)
    drained = await request(port, "POST", f"/status/ready{query}", headers=headers, body=body)
    assert drained.status == 204 and drained.body == b""
    ready = await request(port, "GET", "/status/ready")
    assert (ready.status, ready.json()) == (503, {"message": "draining"})
    assert app.draining is True


async def test_any_other_post_to_status_ready_is_400_and_changes_nothing(served: tuple[Source, int]) -> None:
    """ready.lua: a POST without status=draining is 400; a JSON body that does not parse is Kong's 400 "Cannot
    parse JSON body" (api_helpers.parse_params); /status/ready stays ready."""
    _, port = served
    json_type = [("content-type", "application/json")]
    for headers, body in (([], b""), ([("content-type", "application/x-www-form-urlencoded")], b"status=ready"),
                          (json_type, b'{"status": ["draining"]}'), (json_type, b'["status", "draining"]')):
        reply = await request(port, "POST", "/status/ready", headers=headers, body=body)
        assert (reply.status, reply.json()) == (400, {"message": "Bad request"}), body
    broken = await request(port, "POST", "/status/ready", headers=json_type, body=b'{"status": ')
    assert (broken.status, broken.json()) == (400, {"message": "Cannot parse JSON body"})
    ready = await request(port, "GET", "/status/ready")
    assert (ready.status, ready.json()) == (200, {"message": "ready"})
