"""Ids of routes and services with neither name nor id (gateway.telemetry.entities.derived_id).

Kong's declarative loader derives an entity's id from its endpoint key (a route's or service's name) and finds none
for an unnamed one (kong/db/schema/others/declarative_config.lua:559-613 get_key_for_uuid_gen, 617-646
generate_ids), so process_auto_fields gives it a new random UUID at each load (:813-817). That id is what its plugins'
counters are keyed by (rate-limiting: ratelimit:<route_id>:<service_id>:<identifier>:..., kong/plugins/
rate-limiting/policies/init.lua:67-72), proxy-cache's keys (kong/plugins/proxy-cache/handler.lua:252) and its logs
and labels (kong/plugins/prometheus/exporter.lua:261: route.name or route.id): an unnamed route's counters never
become another route's. The gateway's id is a UUID of the entity's definition and place: the same in every process
of a load, kept by a reload that changes nothing, never handed to the entity a reload moves into its place.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import msgspec
import trio
import yaml
from e2e_helpers import Backend, GatewayNode

from gateway.config import parse_config
from gateway.runtime import RouteRuntime, Runtime, compile_config

LIMITED = [{"name": "rate-limiting", "config": {"hour": 3}}]


def _compiled(doc: dict[str, Any]) -> Runtime:
    """A config loaded from `doc` (as a file is, with nothing shared with another load) and compiled."""
    return compile_config(parse_config(yaml.safe_dump({"_format_version": "3.0", **doc}, sort_keys=False),
                                       "<test config>", environ={}))


def _route(runtime: Runtime, path: str) -> RouteRuntime:
    """The compiled route whose first path is `path`."""
    return next(c.spec.payload for c in runtime.router._candidates if c.spec.paths[0] == path)


def _limit_prefix(route: RouteRuntime) -> str:
    """The counter-key prefix (the plugin's id) of the route's rate-limiting plugin."""
    return next(p.plugin_id for p in route.chain if p.name == "rate-limiting")  # type: ignore[attr-defined]


def _two_routes() -> dict[str, Any]:
    return {"services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [
        {"paths": ["/a"], "plugins": LIMITED}, {"paths": ["/b"], "plugins": LIMITED}]}]}


def _unnamed_services(urls: tuple[str, str], paths: tuple[str, str]) -> dict[str, Any]:
    return {"services": [{"url": url, "plugins": LIMITED, "routes": [{"paths": [path]}]}
                         for url, path in zip(urls, paths, strict=True)]}


def test_an_unchanged_file_gives_its_unnamed_routes_and_services_the_same_ids_at_every_load() -> None:
    """A reload that changes nothing keeps an unnamed entity's counters, as before: every worker of a generation and
    the keeper load the file apart and must key a counter alike (policies/init.lua:67-72 keys it by the ids)."""
    doc = _unnamed_services(("http://127.0.0.1:9", "http://127.0.0.1:8"), ("/x", "/y"))
    doc["services"][0]["routes"][0]["plugins"] = LIMITED
    first, second = _compiled(doc), _compiled(doc)
    for path in ("/x", "/y"):
        before, after = _route(first, path), _route(second, path)
        assert before.facts is not None and after.facts is not None
        assert (after.facts.route_id, after.facts.service_id) == (before.facts.route_id, before.facts.service_id)
        assert [getattr(p, "plugin_id", None) for p in after.chain] == [getattr(p, "plugin_id", None)
                                                                       for p in before.chain]
    assert _limit_prefix(_route(second, "/x")) == _limit_prefix(_route(first, "/x"))


def test_a_route_moved_into_a_removed_routes_place_does_not_take_its_id() -> None:
    """/a and /b unnamed; a reload removes /a: /b, now first, gets neither /a's id (its log and proxy-cache id) nor
    its rate-limiting counters (Kong: a new random route id at each load, declarative_config.lua:813-817, so
    ratelimit:<route_id>:... is never the removed route's)."""
    before = _compiled(_two_routes())
    moved = _two_routes()
    moved["services"][0]["routes"] = moved["services"][0]["routes"][1:]
    after = _compiled(moved)
    a, b = _route(before, "/a"), _route(after, "/b")
    assert a.facts is not None and b.facts is not None
    assert b.facts.route_id != a.facts.route_id
    assert _limit_prefix(b) != _limit_prefix(a)


def test_a_service_moved_into_a_removed_services_place_does_not_take_its_id() -> None:
    """Two unnamed services alike but for their routes; a reload removes the first: the second, now first, gets
    neither its id (limit_by service's identifier, the logs' service.id) nor its service plugin's counters (Kong:
    a new random service id, declarative_config.lua:813-817; policies/init.lua:67-72 keys by it)."""
    url = "http://127.0.0.1:9"
    before = _compiled(_unnamed_services((url, url), ("/x", "/y")))
    after = _compiled({"services": _unnamed_services((url, url), ("/x", "/y"))["services"][1:]})
    x, y = _route(before, "/x"), _route(after, "/y")
    assert x.facts is not None and y.facts is not None
    assert y.facts.service_id != x.facts.service_id
    assert _limit_prefix(y) != _limit_prefix(x)


def test_a_route_like_a_removed_one_under_another_service_does_not_take_its_id() -> None:
    """Two unnamed services with one unnamed route /x each; a reload removes the first service: the second's /x, in
    the removed route's place now, is another route (another service's) and gets another id (Kong: random)."""
    doc = _unnamed_services(("http://127.0.0.1:9", "http://127.0.0.1:8"), ("/x", "/x"))
    before = _compiled(doc)
    after = _compiled({"services": doc["services"][1:]})
    removed, moved = _route(before, "/x"), _route(after, "/x")  # (of two alike, the first in the file)
    assert removed.facts is not None and moved.facts is not None
    assert moved.facts.route_id != removed.facts.route_id


def test_two_alike_unnamed_routes_get_ids_of_their_own() -> None:
    """Routes alike in every field are still two entities (Kong gives each its own random UUID): their ids, and so
    their plugins' counters, differ."""
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [
        {"paths": ["/a"], "plugins": LIMITED}, {"paths": ["/a"], "plugins": LIMITED}]}]}
    first, second = [c.spec.payload for c in _compiled(doc).router._candidates]
    assert first.facts is not None and second.facts is not None
    assert first.facts.route_id != second.facts.route_id
    assert _limit_prefix(first) != _limit_prefix(second)


def test_an_unnamed_route_and_service_are_known_by_their_ids_in_logs_and_labels() -> None:
    """Kong logs an unnamed route and service with their ids and no name, and its prometheus labels name the route
    by its id (kong/plugins/prometheus/exporter.lua:261: route.name or route.id): the gateway's own route label too,
    never a place in the file that another route takes after a reload."""
    route = _route(_compiled(_unnamed_services(("http://127.0.0.1:9", "http://127.0.0.1:8"), ("/x", "/y"))), "/x")
    facts = route.facts
    assert facts is not None and facts.service_json is not None
    logged = msgspec.json.decode(facts.route_json)
    service = msgspec.json.decode(facts.service_json)
    assert (logged["id"], logged["service"]["id"], service["id"]) == (facts.route_id, facts.service_id,
                                                                     facts.service_id)
    assert "name" not in logged and "name" not in service
    assert route.name == facts.route == facts.obs.route == facts.obs.name == facts.route_id


def _get(port: int, path: str) -> int:
    """One GET on a new connection (Connection: close): its status."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


async def test_a_reload_does_not_hand_a_removed_unnamed_routes_counters_to_the_next_route(nursery, tmp_path: Path
                                                                                        ) -> None:
    """/a's hour used up, a reload removes /a: /b, now first, keeps counting its own (Kong: its id is random at each
    load, declarative_config.lua:813-817, and its counter ratelimit:<route_id>:..., policies/init.lua:67-72, never
    the removed route's)."""
    backend = Backend("b")
    await nursery.start(backend.serve)
    doc = _two_routes()
    doc["services"][0]["url"] = f"http://{backend.target}"
    gw = GatewayNode(tmp_path / "gw", doc, status_listen=None)
    try:
        await gw.start(workers=1)
        a = [await trio.to_thread.run_sync(_get, gw.port, "/a") for _ in range(4)]
        assert a == [200, 200, 200, 429], a
        assert await trio.to_thread.run_sync(_get, gw.port, "/b") == 200
        gw.doc["services"][0]["routes"] = gw.doc["services"][0]["routes"][1:]  # /a removed
        gw.config.write_text(json.dumps(gw.doc))
        await gw.admin("reload")
        with trio.fail_after(8):
            while (await gw.status())["retiring"]:  # (only the new generation's workers take connections)
                await trio.sleep(0.05)
        b = [await trio.to_thread.run_sync(_get, gw.port, "/b") for _ in range(2)]
        assert b == [200, 200], f"/b after /a was removed: {b} (it took over /a's exhausted counter)"
    finally:
        gw.cleanup()
