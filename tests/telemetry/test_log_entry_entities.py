"""The route, service and consumer in the log entry (Kong's kong.log.serialize copies the entities, kong/pdk/log.lua
:926-928) as DB-less Kong loads them: the router reads routes and services with show_ws_id (kong/runloop/handler.lua
:110, 259-261, 378), so they carry `ws_id` (kong/db/dao/init.lua:1482-1488); the declarative loader's
process_auto_fields(input, "insert") (kong/db/schema/others/declarative_config.lua:886) gives every entity its
timestamps (kong/db/schema/init.lua:1920-1939): created_at as the config gives it, else the load time, and updated_at
the load time whatever the config gives (an insert sets it)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import trio
from backends import EchoBackend, request, service
from e2e_helpers import GatewayNode, conns_per_worker

TIMEOUT = 10
WS = "0dc6f45b-8f8d-40d2-a504-473544ee190b"  # DB-less Kong's default workspace id (the entry's `workspace`)


async def _first_line(nursery: trio.Nursery, gateway: Any, tmp_path: Any, doc: dict[str, Any],
                      target: str = "/api/x") -> tuple[dict[str, Any], range]:
    """The file-log line of one request, and the seconds the config may have been loaded in."""
    log = tmp_path / "file.log"
    doc = {**doc, "plugins": [{"name": "file-log", "config": {"path": str(log)}}]}
    before = int(time.time())
    port = await gateway(doc)
    loaded = range(before, int(time.time()) + 1)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", target)).status == 200
        while not (log.exists() and log.read_text().endswith("\n")):
            await trio.sleep(0.01)
    return json.loads(log.read_text().splitlines()[0]), loaded


async def _backend(nursery: trio.Nursery) -> str:
    backend = EchoBackend()
    await nursery.start(backend.serve)
    return f"http://127.0.0.1:{backend.port}"


async def test_the_serialized_route_and_service_carry_the_default_workspaces_id(nursery, gateway, tmp_path):
    """kong/runloop/handler.lua:110 and :378 (routes:each with show_ws_id = true), :259-261 (the service selected
    with show_ws_id), kong/db/dao/init.lua:1482-1488 (entity.ws_id set): the serialized route and service have
    `ws_id`, the default workspace's id in DB-less Kong (the entry's `workspace`)."""
    url = await _backend(nursery)
    line, _ = await _first_line(nursery, gateway, tmp_path, {"services": [service("svc", url, [
        {"name": "api", "paths": ["/api"]}])]})
    assert line["route"]["ws_id"] == WS
    assert line["service"]["ws_id"] == WS
    assert line["workspace"] == WS


async def test_the_serialized_route_and_service_keep_the_configs_created_at_and_are_updated_at_load(
        nursery, gateway, tmp_path):
    """kong/db/schema/init.lua:1920-1939 (process_auto_fields, "insert"): a created_at the config gives is kept; an
    updated_at is set to the load time (ngx.time()) whatever the config gives."""
    url = await _backend(nursery)
    stamps = {"created_at": 1700000000, "updated_at": 1700000001}
    line, loaded = await _first_line(nursery, gateway, tmp_path, {"services": [service("svc", url, [
        {"name": "api", "paths": ["/api"], **stamps}], **stamps)]})
    assert line["route"]["created_at"] == 1700000000
    assert line["service"]["created_at"] == 1700000000
    assert line["route"]["updated_at"] in loaded
    assert line["service"]["updated_at"] in loaded


async def test_the_serialized_route_and_service_without_timestamps_have_the_load_time(nursery, gateway, tmp_path):
    """kong/db/schema/init.lua:1920-1939: a missing created_at is the load time, as updated_at (seconds)."""
    url = await _backend(nursery)
    line, loaded = await _first_line(nursery, gateway, tmp_path, {"services": [service("svc", url, [
        {"name": "api", "paths": ["/api"]}])]})
    for entity in (line["route"], line["service"]):
        assert entity["created_at"] in loaded and entity["updated_at"] == entity["created_at"], entity


async def test_the_serialized_consumer_keeps_its_created_at_and_has_no_ws_id(nursery, gateway, tmp_path):
    """kong/pdk/log.lua:928 copies ctx.authenticated_consumer, the consumer entity key-auth loaded through the DAO
    (kong/pdk/client.lua load_consumer: kong.db.consumers:select, without show_ws_id); consumers have created_at /
    updated_at (kong/db/schema/entities/consumers.lua:10-11), given them by the declarative loader as any entity."""
    url = await _backend(nursery)
    svc = service("svc", url, [{"name": "api", "paths": ["/api"], "plugins": [{"name": "key-auth"}]}])
    line, loaded = await _first_line(nursery, gateway, tmp_path, {
        "services": [svc], "consumers": [{"username": "bob", "created_at": 1700000000, "updated_at": 1700000001,
                                          "keyauth_credentials": [{"key": "kong"}]}]}, "/api/x?apikey=kong")
    consumer = line["consumer"]
    assert consumer["username"] == "bob"
    assert consumer["created_at"] == 1700000000
    assert consumer["updated_at"] in loaded
    assert "ws_id" not in consumer


async def test_every_worker_of_a_config_logs_the_roots_load_time_a_restarted_one_too_and_a_reload_stamps_anew(
        nursery, tmp_path):
    """Kong stamps the entities once per config, in the master: Kong.init() parses the declarative config
    (kong/init.lua:737-738, parse_declarative_config), whose process_auto_fields(input, "insert")
    (kong/db/schema/others/declarative_config.lua:886) sets created_at / updated_at to ngx_time()
    (kong/db/schema/init.lua:1920-1937); every worker reads those entities (load_declarative_config,
    kong/init.lua:580-603), one the master re-forks after a crash too, until a reload parses the file again. So a
    worker restarted seconds later logs the route, service and consumer with its sibling's timestamps, and the
    workers of a reload with the reload's."""
    log_file = tmp_path / "entries.json"
    svc = service("s", await _backend(nursery), [{"name": "r", "paths": ["/"], "plugins": [{"name": "key-auth"}]}])
    gw = GatewayNode(tmp_path / "gw", {
        "services": [svc], "consumers": [{"username": "bob", "keyauth_credentials": [{"key": "k"}]}],
        "plugins": [{"name": "file-log", "config": {"path": str(log_file)}}]})
    try:
        started = int(time.time())
        await gw.start(workers=2)
        first, sibling = await _workers(gw, 1)
        await trio.sleep(1.05 - time.time() % 1)  # the next second: a worker loading the config now stamps another
        killed = int(time.time())
        os.kill(first, signal.SIGKILL)
        with trio.fail_after(TIMEOUT):
            while first in (workers := await _workers(gw, 1)) or len(workers) != 2:
                await trio.sleep(0.05)
        assert sibling in workers
        restarted = await _logged_times(gw, log_file, workers)
        reloaded_from = int(time.time())
        generation = (await gw.admin("reload"))["generation"]
        reloaded = await _logged_times(gw, log_file, await _workers(gw, generation))
    finally:
        await trio.to_thread.run_sync(gw.cleanup)
    assert len(restarted) == 1, f"one config, but its workers log different entity timestamps: {sorted(restarted)}"
    assert started <= restarted.pop() < killed
    assert len(reloaded) == 1 and reloaded.pop() >= reloaded_from


async def _workers(gw: GatewayNode, generation: int) -> list[int]:
    """The pids of generation `generation`'s workers, as the root lists them."""
    tree = (await gw.status())["tree"]["children"]
    return [w["pid"] for g in tree if g["id"] == f"workers@{generation}" for w in g["children"] if w["pid"]]


async def _logged_times(gw: GatewayNode, log_file: Path, workers: list[int]) -> set[int]:
    """The created_at and updated_at of the route, service and consumer in the log entries of one request through
    each of `workers`."""
    seen = len(log_file.read_text().splitlines()) if log_file.exists() else 0
    for conns in (await conns_per_worker(gw.port, workers)).values():
        assert (await conns[0].request("GET", "/?apikey=k")).status == 200
        for conn in conns:
            await conn.aclose()
    with trio.fail_after(TIMEOUT):
        while len(lines := log_file.read_text().splitlines()) < seen + len(workers):
            await trio.sleep(0.02)
    return {entry[kind][field] for entry in map(json.loads, lines[seen:]) for kind in ("route", "service", "consumer")
            for field in ("created_at", "updated_at")}
