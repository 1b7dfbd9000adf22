"""What logs, metrics and traces say about a route and its service, computed once per config load.

Kong's serializer copies the route and service entities into every log line, and its prometheus plugin labels by
service name (or host) and route name (or id). Entities without an id get the one Kong's declarative loader would
give them (a UUIDv5 of the name), so log lines and labels agree across workers, reloads and with Kong. As DB-less
Kong's router loads them, they carry their workspace's id and the timestamps of the load (see `RouteFacts`).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

import msgspec

from gateway.config.kong_forms import loaded_at, url_host
from gateway.config.schema import Route, Service
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


def entity_id(kind: str, name: str | None, fallback: str) -> str:
    """Kong's declarative id for a named entity (uuid5 of the name in the kind's namespace); ours otherwise."""
    if name:
        return str(uuid.uuid5(uuid.uuid5(_KONG_NAMESPACE, kind), name))
    return str(uuid.uuid5(_OWN_NAMESPACE, f"{kind}:{fallback}"))


class RouteFacts:
    """A route's names for labels and its entity JSON for log lines: the route and its service as Kong's router
    loads them (kong/runloop/handler.lua:110, 259-261, 378: show_ws_id, so kong/db/dao/init.lua:1482-1488 sets
    ws_id), with the created_at the file gives (else the load time) and the load's updated_at
    (gateway.config.kong_forms.loaded_at)."""

    __slots__ = ("service", "route", "labels", "route_json", "service_json", "http_route", "route_id", "service_id",
                 "obs")

    def __init__(self, route: Route, route_name: str, service: Service | None) -> None:
        self.route_id = route.id or entity_id("routes", route.name, route_name)
        self.service_id = (service.id or entity_id("services", service.name, service.name or "")) if service else ""
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
        port = parts.port or (443 if parts.scheme == "https" else 80)
        out.update(protocol=parts.scheme, host=url_host(parts), port=port)  # (the host as written, as Kong's)
        if parts.path:
            out["path"] = parts.path
    elif kind == "services" and "port" not in out:
        out["port"] = 80  # Kong's default whatever the protocol (services.lua: port required, default 80)
    return msgspec.to_builtins(out)  # type: ignore[no-any-return]
