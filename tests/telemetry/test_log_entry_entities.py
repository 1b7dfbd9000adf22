"""The route, service and consumer in the log entry (Kong's kong.log.serialize copies the entities, kong/pdk/log.lua
:926-928) as DB-less Kong loads them: the router reads routes and services with show_ws_id (kong/runloop/handler.lua
:110, 259-261, 378), so they carry `ws_id` (kong/db/dao/init.lua:1482-1488); the declarative loader's
process_auto_fields(input, "insert") (kong/db/schema/others/declarative_config.lua:886) gives every entity its
timestamps (kong/db/schema/init.lua:1920-1939): created_at as the config gives it, else the load time, and updated_at
the load time whatever the config gives (an insert sets it)."""

from __future__ import annotations

import json
import time
from typing import Any

import trio
from backends import EchoBackend, request, service

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
