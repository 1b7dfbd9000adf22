"""What logs, metrics and traces say about a route and its service, computed once per config load.

Kong's serializer copies the route and service entities into every log line, and its prometheus plugin labels by
service name (or host) and route name (or id). Entities without an id get the one Kong's declarative loader would
give them (a UUIDv5 of the name), so log lines and labels agree across workers, reloads and with Kong; an unnamed one,
whose id Kong makes random at each load, one derived from its definition and place (`derived_id`). As DB-less
Kong's router loads them, they carry their workspace's id and the timestamps of the load (see `RouteFacts`).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

import msgspec

from gateway.config.kong_forms import loaded_at, url_host
from gateway.config.loader import path_of
from gateway.config.schema import Config, Route, Service
from gateway.config.tls import ref_id
from gateway.metrics import RouteObservations

# Kong's declarative config derives entity ids from this namespace (kong/db/schema/others/declarative_config.lua).
_KONG_NAMESPACE = uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5")
_OWN_NAMESPACE = uuid.uuid5(_KONG_NAMESPACE, "mcp-gateway")  # for what Kong would make random
WORKSPACE_ID = "0dc6f45b-8f8d-40d2-a504-473544ee190b"  # DB-less Kong's default workspace (DECLARATIVE_DEFAULT_...)
WORKSPACE_NAME = "default"  # its name
# Kong's fields of each entity the gateway builds (kong/db/schema/entities/services.lua, routes.lua): the serializer
# copies every one that is set (kong/pdk/log.lua:927-928); the gateway's own (a route's query, mcp...) are not Kong's
_ENTITY_FIELDS = {
    "services": ("id", "name", "protocol", "host", "port", "path", "retries", "connect_timeout", "write_timeout",
                 "read_timeout", "enabled", "tags", "client_certificate", "tls_verify", "tls_verify_depth",
                 "ca_certificates"),
    "routes": ("id", "name", "protocols", "methods", "hosts", "paths", "headers", "snis", "strip_path",
               "preserve_host", "regex_priority", "path_handling", "https_redirect_status_code", "request_buffering",
               "response_buffering", "tags"),
}


def kong_id(kind: str, name: str) -> str:
    """Kong's declarative id for a named entity without one: a UUIDv5 of the name in the kind's namespace
    (declarative_config.lua generate_uuid on its endpoint_key)."""
    return str(uuid.uuid5(uuid.uuid5(_KONG_NAMESPACE, kind), name))


def derived_id(kind: str, place: str, definition: dict[str, Any]) -> str:
    """The id of an entity with neither name nor id, which Kong makes random at each load (declarative_config.lua
    generates none for it: process_auto_fields gives it a new UUID): a UUIDv5 of its place in the file and its
    definition. An unchanged file keeps it (its counters and cached responses outlive a reload that changes nothing);
    an entity that a reload moves into another's place gets a new one, never the other's (as Kong's fresh UUID)."""
    canonical = msgspec.json.encode(definition, order="sorted").decode()
    return str(uuid.uuid5(_OWN_NAMESPACE, f"{kind}:{place}:{canonical}"))


def assign_ids(config: Config) -> None:
    """Note on every service and route the id logs, labels, plugin ids and counter keys know it by (`entity_id`),
    once per load (compile_config): the same in every worker of a generation and in the keeper, which read one file.
    An unnamed service's definition takes in the routes nested under it, which only the whole config lists."""
    nested: dict[int, list[dict[str, Any]]] = {}
    for route in config.routes:
        parent = getattr(route, "_service", None)
        if parent is not None and is_anonymous(parent):
            nested.setdefault(id(parent), []).append(_definition(route, "routes"))
    for svc in config.services:
        svc._entity_id = _own_id(svc, "services", routes=nested.get(id(svc), []))  # type: ignore[attr-defined]
    by_name = {svc.name: svc for svc in config.services}
    for route in config.routes:
        service = getattr(route, "_service", None) or by_name.get(route.service or "")
        route._entity_id = _own_id(  # type: ignore[attr-defined]
            route, "routes", service=entity_id(service, "services") if service is not None else route.service)


def entity_id(entity: Route | Service, kind: str) -> str:
    """A route's or service's id as assign_ids noted it; of one never compiled (built by hand), its own, Kong's of
    its name, or one derived from its own fields alone."""
    found: str | None = getattr(entity, "_entity_id", None)
    return found if found is not None else _own_id(entity, kind)


def is_anonymous(entity: Route | Service) -> bool:
    """Has the entity neither id nor name (an unnamed service's `name` is only the loader's label for it)?"""
    return entity.id is None and (entity.name is None or getattr(entity, "_unnamed", False))


def _own_id(entity: Route | Service, kind: str, **context: Any) -> str:
    """Its id, else Kong's of its name, else derived from its fields and `context` (its service, its nested routes)
    at its place in the file."""
    if entity.id:
        return entity.id
    if not is_anonymous(entity):
        return kong_id(kind, entity.name or "")
    return derived_id(kind, path_of(entity), {**_definition(entity, kind), **context})


def _definition(entity: Route | Service, kind: str) -> dict[str, Any]:
    """The fields the file set on the entity, without the references the loader wrote into it (a nested route's
    service, an unnamed service's label): its service, its nested routes are given apart (assign_ids). Plugins are
    left out: their configs hold resolved secrets."""
    fields: dict[str, Any] = msgspec.to_builtins(entity)
    for name in ("service", "plugins") if kind == "routes" else ("name", "plugins", "routes"):
        fields.pop(name, None)
    return fields


class RouteFacts:
    """A route's names for labels and its entity JSON for log lines: the route and its service as Kong's router
    loads them (kong/runloop/handler.lua:110, 259-261, 378: show_ws_id, so kong/db/dao/init.lua:1482-1488 sets
    ws_id), with the created_at the file gives (else the load time) and the load's updated_at
    (gateway.config.kong_forms.loaded_at)."""

    __slots__ = ("service", "route", "labels", "route_json", "service_json", "http_route", "route_id", "service_id",
                 "obs")

    def __init__(self, route: Route, route_name: str, service: Service | None) -> None:
        self.route_id = entity_id(route, "routes")
        self.service_id = entity_id(service, "services") if service is not None else ""
        loaded = loaded_at()
        sdoc: dict[str, Any] | None = None
        if service is not None:
            sdoc = _entity(service, "services")
            sdoc["id"] = self.service_id
            sdoc["ws_id"] = WORKSPACE_ID
            sdoc["created_at"], sdoc["updated_at"] = service.created_at or loaded, loaded
            if getattr(service, "_unnamed", False):  # the loader's name for it (its id or path): Kong's has none
                sdoc.pop("name", None)
        # Kong's labels: service name (or host), route name (or id)
        self.service = (sdoc.get("name") or sdoc.get("host") or "") if sdoc is not None else ""
        self.route = route.name or self.route_id
        self.labels = (self.service, self.route, WORKSPACE_NAME)  # the latency histograms' (service, route, workspace)
        self.http_route = route.paths[0] if route.paths else ""  # OpenTelemetry's http.route (Kong's: paths[1])
        # what the log phase and the prometheus plugin observe of the route, flushed by gateway.metrics
        self.obs = RouteObservations(route_name, self.service, self.route)
        doc = _entity(route, "routes")
        doc["id"] = self.route_id
        doc["ws_id"] = WORKSPACE_ID
        doc["created_at"], doc["updated_at"] = route.created_at or loaded, loaded
        if service is not None:
            doc["service"] = {"id": self.service_id}
        self.route_json = msgspec.Raw(msgspec.json.encode(doc))
        self.service_json: msgspec.Raw | None = msgspec.Raw(msgspec.json.encode(sdoc)) if sdoc is not None else None


def _entity(entity: Any, kind: str) -> dict[str, Any]:
    """The fields of `entity` that are set, in Kong's shapes: a service's client_certificate, a foreign key, is
    {"id": ...} (its id however the config named it)."""
    out = {}
    for name in _ENTITY_FIELDS[kind]:
        value = getattr(entity, name, None)
        if value is not None and value != [] and value != {}:
            out[name] = value
    if "client_certificate" in out:
        out["client_certificate"] = {"id": ref_id(out["client_certificate"])}
    url = getattr(entity, "url", None)
    if url:  # Kong stores a service's url as its parts
        parts = urlsplit(url)
        port = parts.port if parts.port is not None else 443 if parts.scheme == "https" else 80  # (0 is Kong's too)
        out.update(protocol=parts.scheme, host=url_host(parts), port=port)  # (the host as written, as Kong's)
        if parts.path:
            out["path"] = parts.path
    elif kind == "services" and "port" not in out:
        out["port"] = 80  # Kong's default whatever the protocol (services.lua: port required, default 80)
    return msgspec.to_builtins(out)  # type: ignore[no-any-return]
