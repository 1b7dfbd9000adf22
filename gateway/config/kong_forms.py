"""The forms of Kong's declarative format that are not entity fields, handled on the raw document before decoding.

- `_comment` (a string) and `_ignore` (a list) at the top and on every entity, and Kong's `created_at` /
  `updated_at` timestamps (null, or Kong's type: whole seconds, a number of ms on targets; updated_at only on the
  entities that have one: not on credentials and acls), are annotations: checked and dropped, but for the
  created_at of services, routes and consumers, which Kong's log entry copies (`loaded_at()` stands for the others).
- A reference to another entity may be a mapping (`service: {id: ...}` or `{name: ...}`, as decK writes them): it
  becomes the plain id or name.
- Kong entities and fields the gateway does not build are refused with a message that says so (never "unknown
  key"); a field set to null (or to Kong's default) configures nothing and passes.
- A service's `url` shorthand names its host as written (`url_host`): case is kept, as in the `host` field.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import SplitResult

from gateway.balancing.registry import ALGORITHMS
from gateway.config.errors import inline, key_part
from gateway.config.vaults import Vaults, read_vaults, resolve_certificate, resolve_plugin
from gateway.routing.normalize import normalize_path

# Entities that may nest others, and where (Kong's declarative nesting).
NESTED = {
    "services": ("routes", "plugins"),
    "routes": ("plugins",),
    "upstreams": ("targets",),
    "consumers": ("plugins", "jwt_secrets", "keyauth_credentials", "basicauth_credentials", "hmacauth_credentials",
                  "acls"),
    "certificates": ("snis",),
}
# entity -> its reference fields and the entity each names
REFERENCES: dict[str, dict[str, tuple[str, ...]]] = {
    "routes": {"service": ("id", "name")},
    "plugins": {"service": ("id", "name"), "route": ("id", "name"), "consumer": ("id", "username")},
    "targets": {"upstream": ("id", "name")},
    "jwt_secrets": {"consumer": ("id", "username")},
    "keyauth_credentials": {"consumer": ("id", "username")},
    "basicauth_credentials": {"consumer": ("id", "username")},
    "hmacauth_credentials": {"consumer": ("id", "username")},
    "acls": {"consumer": ("id", "username")},
    "snis": {"certificate": ("id",)},
    "services": {"client_certificate": ("id",)},
    "upstreams": {"client_certificate": ("id",)},
}
ANNOTATIONS = ("_comment", "_ignore", "created_at", "updated_at")
# Kong's credentials and acls have a created_at and no updated_at (kong/plugins/*/daos.lua); targets' timestamps are
# typedefs.auto_timestamp_ms (a number), every other entity's auto_timestamp_s (an integer)
_NO_UPDATED_AT = frozenset({"jwt_secrets", "keyauth_credentials", "basicauth_credentials", "hmacauth_credentials",
                            "acls"})
_LOGGED = frozenset({"services", "routes", "consumers"})  # the entities whose timestamps Kong's log entry carries


# when this process last prepared a document: DB-less Kong's updated_at of every entity, and the created_at of one
# the file gives none (kong/db/schema/init.lua:1920-1939, process_auto_fields(input, "insert") at load)
_loaded_at = int(time.time())
_given_at: int | None = None  # the root's stamp of this worker's config generation (use_load_time)


def loaded_at() -> int:
    """The Unix time (seconds, as ngx.time()) of the config this process loaded last."""
    return _loaded_at


def use_load_time(stamp: int) -> None:
    """Stamp the documents this process prepares with `stamp` (the time the root loaded the config) instead of
    their own load time: Kong stamps once, in the master (kong/init.lua:737-738), and every worker of that config,
    one re-forked after a crash too, reads the same entities until the next reload."""
    global _given_at, _loaded_at
    _given_at = _loaded_at = stamp


_NOT_BUILT = "is not supported by the gateway"
UNSUPPORTED_SECTIONS = {
    "consumer_groups": f"Kong's consumer_groups {_NOT_BUILT} (Kong Enterprise)",
    "key_sets": f"Kong's key_sets {_NOT_BUILT}",
    "keys": f"Kong's keys {_NOT_BUILT}",
    "filter_chains": f"Kong's filter_chains (WebAssembly) {_NOT_BUILT}",
    "partials": f"Kong's partials {_NOT_BUILT} (Kong Enterprise)",
    "workspaces": f"Kong's workspaces {_NOT_BUILT}",
    "parameters": f"Kong's parameters {_NOT_BUILT}",
    "oauth2_credentials": f"oauth2 credentials: the oauth2 plugin {_NOT_BUILT}",
    "oauth2_tokens": f"oauth2 tokens: the oauth2 plugin {_NOT_BUILT}",
    "oauth2_authorization_codes": f"oauth2 codes: the oauth2 plugin {_NOT_BUILT}",
    "mtls_auth_credentials": f"mtls-auth credentials: the mtls-auth plugin {_NOT_BUILT} (Kong Enterprise)",
    "degraphql_routes": f"degraphql routes: the degraphql plugin {_NOT_BUILT} (Kong Enterprise)",
    "graphql_ratelimiting_advanced_cost_decoration":
        f"graphql-rate-limiting-advanced {_NOT_BUILT} (Kong Enterprise)",
    "custom_entities": f"custom entities {_NOT_BUILT}",
    "licenses": f"Kong's licenses {_NOT_BUILT} (Kong Enterprise)",
    "rbac_roles": f"Kong's RBAC {_NOT_BUILT} (Kong Enterprise)",
    "_workspace": f"Kong's workspaces {_NOT_BUILT}",
    "_konnect": f"Konnect settings {_NOT_BUILT}",
    "_info": "decK's _info (select_tags, defaults) is not supported by the gateway; remove it",
    "_plugin_configs": f"decK's _plugin_configs {_NOT_BUILT}",
}
# consumer-nested credentials of plugins the gateway does not build, by key
_UNSUPPORTED_NESTED_CREDENTIALS = {k: v for k, v in UNSUPPORTED_SECTIONS.items() if "credentials" in k or k.startswith(
    "oauth2")} | {"groups": f"consumer groups {_NOT_BUILT} (Kong Enterprise)"}
UNSUPPORTED_FIELDS: dict[str, dict[str, str]] = {
    "services": {"tls_sans": f"tls_sans (the names an upstream certificate may carry) {_NOT_BUILT}"},
    "routes": {"sources": f"sources (stream routes) {_NOT_BUILT}",
               "destinations": f"destinations (stream routes) {_NOT_BUILT}",
               "expression": f"expression routes (router_flavor expressions) {_NOT_BUILT}",
               "priority": f"priority (router_flavor expressions) {_NOT_BUILT}"},
    "upstreams": {},
    "consumers": _UNSUPPORTED_NESTED_CREDENTIALS,
    "plugins": {"consumer_group": f"consumer groups {_NOT_BUILT} (Kong Enterprise)",
                "partials": f"partials {_NOT_BUILT} (Kong Enterprise)",
                "ordering": f"dynamic plugin ordering {_NOT_BUILT} (Kong Enterprise)",
                "condition": f"conditional plugins {_NOT_BUILT}"},
    "targets": {"failover": f"failover targets {_NOT_BUILT}"},
}
for _section in ("services", "routes"):
    UNSUPPORTED_FIELDS[_section]["filter_chains"] = f"filter_chains (WebAssembly) {_NOT_BUILT}"
for _field in ("sticky_sessions_cookie", "sticky_sessions_cookie_path"):
    UNSUPPORTED_FIELDS["upstreams"][_field] = f"sticky sessions (algorithm sticky-sessions) {_NOT_BUILT}"
_ROUTE_PROTOCOLS = {"http", "https"}
# Kong's grpc and grpcs services, routes and health checks speak HTTP/2 to the upstream (nginx's grpc_pass)
GRPC_WHY = "gRPC needs HTTP/2 to the upstream, and the gateway forwards HTTP/1.1"


def url_host(parts: SplitResult) -> str:
    """The host of a url as Kong's services shorthand takes it (socket.url's parse, services.lua:97): without
    userinfo, port and IPv6 brackets, its case kept, so that it names an upstream as the `host` field does (Kong
    looks upstreams up by exact name, kong/runloop/balancer/upstreams.lua:131-146); urlsplit's `hostname` lower-cases
    it. "" when the url has none."""
    hostinfo = parts.netloc.rpartition("@")[2]
    if hostinfo.startswith("["):
        return hostinfo[1:].partition("]")[0]
    return hostinfo.partition(":")[0]


def prepare(raw: dict[str, Any], sections: tuple[str, ...], errors: list[str]) -> dict[str, Any]:
    """The document with annotations dropped, references made plain and unsupported Kong keys refused (removed, so
    what remains is still checked). Messages are appended to `errors` with their field paths."""
    global _loaded_at
    _loaded_at = int(time.time()) if _given_at is None else _given_at
    doc = _annotations(raw, "", errors)
    vault_items = doc.pop("vaults", None)
    if isinstance(vault_items, list):
        vault_items = [_annotations(v, f"vaults[{i}]", errors) if isinstance(v, dict) else v
                       for i, v in enumerate(vault_items)]
    vaults = read_vaults(vault_items, errors)
    for key, why in UNSUPPORTED_SECTIONS.items():
        if key in doc:
            value = doc.pop(key)
            if value not in (None, [], {}):
                errors.append(f"{key}: {why}")
    if doc.get("_format_version") in ("1.1", "2.1"):
        _migrate_route_paths(doc)
    for section in sections:
        items = doc.get(section)
        if isinstance(items, list):
            doc[section] = [_entity(section, item, f"{section}[{i}]", errors, vaults)
                            for i, item in enumerate(items)]
    return doc


# kong/db/migrations/migrate_path_280_300.lua: a 2.x path with a character outside these was a regex
_PLAIN_PATH = re.compile(r"[a-zA-Z0-9.\-_~/%]*")
_TRIPLET = re.compile(r"%([0-9A-Fa-f]{2})")
_RESERVED = frozenset("!#$%&'()*+,/:;=?@[]")
_META = {".": r"\.", "^": r"\^", "-": r"\-", "{": r"\{", "}": r"\}", "\\": r"\\", "|": r"\|"}


def _migrate_route_paths(doc: dict[str, Any]) -> None:
    """Kong 3.x reading a `_format_version` 1.1 or 2.1 file (kong/db/declarative/migrations/route_path.lua): a
    route path that is not plain (letters, digits, `.-_~/%`) was a regex in Kong 2.x and becomes `~` and the regex,
    its %XX triplets decoded as Kong decodes them; top-level routes and routes nested in services, as Kong."""
    routes = [doc.get("routes")]
    services = doc.get("services")
    routes += [s.get("routes") for s in (services if isinstance(services, list) else ()) if isinstance(s, dict)]
    for group in routes:
        for route in group if isinstance(group, list) else ():
            paths = route.get("paths") if isinstance(route, dict) else None
            if isinstance(paths, list):
                route["paths"] = [_migrated_path(p) if isinstance(p, str) else p for p in paths]


def _migrated_path(path: str) -> str:
    """A plain path normalized (kong/tools/uri.lua normalize, as Kong's migration does: Kong 3.x refuses a prefix
    path that is not), any other the regex it was."""
    if _PLAIN_PATH.fullmatch(path):
        normalized = normalize_path(path.encode())
        try:
            return normalized.decode()
        except UnicodeDecodeError:
            return path  # (%XX of octets that are not UTF-8: refused as not normalized)
    return "~" + _TRIPLET.sub(_decode_in_regex, path)


def _decode_in_regex(m: re.Match[str]) -> str:
    """Kong's normalize_regex: a reserved character stays a triplet (upper case), a regex metacharacter is escaped,
    any other character is decoded."""
    char = chr(int(m.group(1), 16))
    if char in _RESERVED:
        return m.group(0).upper()
    return _META.get(char, char)


def _annotations(obj: dict[str, Any], path: str, errors: list[str], section: str = "") -> dict[str, Any]:
    """`obj` without its annotations (`section`: the entity's kind, for its timestamps), each checked."""
    out = {}
    for key, value in obj.items():
        if key == "_comment":
            if not isinstance(value, str):
                errors.append(f"{_join(path, key)}: expected a string")
        elif key == "_ignore":
            if not isinstance(value, list):
                errors.append(f"{_join(path, key)}: expected a list")
        elif key in ("created_at", "updated_at") and path and not (key == "updated_at" and section in _NO_UPDATED_AT):
            if value is None:  # (Kong's auto field: set at load)
                continue
            if not isinstance(value, int | float) or isinstance(value, bool):
                errors.append(f"{_join(path, key)}: expected a number (a Unix time)")
            elif section != "targets" and value != int(value):  # Kong's integer: any number equal to its floor
                errors.append(f"{_join(path, key)}: expected an integer (a Unix time in seconds)")
            elif key == "created_at" and section in _LOGGED:
                out[key] = int(value)  # Kong's log entry copies it (updated_at is the load time whatever is given)
        else:
            out[key] = value
    return out


def _entity(section: str, item: Any, path: str, errors: list[str], vaults: Vaults) -> Any:
    if not isinstance(item, dict):
        return item
    item = _annotations(item, path, errors, section)
    for field, why in UNSUPPORTED_FIELDS.get(section, {}).items():
        if field in item:
            value = item.pop(field)
            if value not in (None, [], {}):
                errors.append(f"{path}.{field}: {why}")
    if section == "services" and isinstance(item.get("protocol"), str) and item["protocol"] not in ("http",
                                                                                                    "https"):
        protocol = item.pop("protocol")
        why = f"; {GRPC_WHY}" if protocol in ("grpc", "grpcs") else ""
        errors.append(f"{path}.protocol: a {inline(protocol)} service {_NOT_BUILT} (http and https only{why})")
    if section == "routes" and isinstance(item.get("protocols"), list):
        others = [p for p in item["protocols"] if isinstance(p, str) and p not in _ROUTE_PROTOCOLS]
        if others:
            why = f"; {GRPC_WHY}" if {"grpc", "grpcs"} & set(others) else ""
            verb = "is" if len(others) == 1 else "are"
            errors.append(f"{path}.protocols: {', '.join(map(inline, others))} {verb} not supported "
                          f"by the gateway (HTTP routes only: http, https{why})")
            item["protocols"] = [p for p in item["protocols"] if p not in others] or ["http", "https"]
    for field, keys in REFERENCES.get(section, {}).items():
        ref = item.get(field)
        if isinstance(ref, dict):
            named = [ref[k] for k in keys if ref.get(k) is not None]
            extra = [k for k in ref if k not in keys]
            if extra or len(named) != 1:
                errors.append(f"{path}.{field}: a reference is a {' or '.join(keys)} (a string, or a mapping with one "
                              f"of them), got keys {', '.join(sorted(map(key_part, ref)))}")
                item.pop(field)
            else:
                item[field] = named[0]
    for child in NESTED.get(section, ()):
        nested = item.get(child)
        if isinstance(nested, list):
            item[child] = [_entity(child, c, f"{path}.{child}[{j}]", errors, vaults) for j, c in enumerate(nested)]
    if section == "upstreams":
        _upstream_shorthands(item, path, errors)
        _grpc_healthchecks(item, path, errors)
    if section == "plugins":
        resolve_plugin(item, path, vaults, errors)
    elif section == "certificates":
        resolve_certificate(item, path, vaults, errors)
    return item


def _upstream_shorthands(item: dict[str, Any], path: str, errors: list[str]) -> None:
    """Kong's shorthand_fields of upstreams (kong/db/schema/entities/upstreams.lua), in its order: least-connections
    and latency drop hash_on; then a hash_on given sets the algorithm: none makes consistent-hashing round-robin,
    anything else makes the algorithm consistent-hashing. The gateway's own random and ip-hash do not hash on
    hash_on: with one, a hash_on is refused rather than silently changing the algorithm."""
    given = item.get("algorithm", "round-robin")
    algorithm = ALGORITHMS.get(given) if isinstance(given, str) else None
    if algorithm is None:
        return  # an unknown algorithm: the runtime says so
    if algorithm in ("least-connections", "latency"):
        if item.get("hash_on") is not None:
            item["hash_on"] = "none"
        return
    hash_on = item.get("hash_on")
    if hash_on is None or not isinstance(hash_on, str):
        return
    if hash_on == "none":
        if algorithm == "consistent-hashing":
            item["algorithm"] = "round-robin"
    elif algorithm in ("round-robin", "consistent-hashing"):
        item["algorithm"] = "consistent-hashing"
    else:
        errors.append(f"{path}.hash_on: {given} does not hash on hash_on (use algorithm consistent-hashing, which "
                      "Kong sets for any hash_on)")
        item.pop("hash_on")


def _grpc_healthchecks(item: dict[str, Any], path: str, errors: list[str]) -> None:
    """Kong's active health checks of type grpc or grpcs (the gRPC health protocol, over HTTP/2): refused by name,
    not as a value outside http, https and tcp."""
    checks = item.get("healthchecks")
    active = checks.get("active") if isinstance(checks, dict) else None
    if not isinstance(active, dict):
        return
    kind = active.get("type")
    if kind in ("grpc", "grpcs"):
        errors.append(f"{path}.healthchecks.active.type: {kind} health checks are not supported by the gateway "
                      f"({GRPC_WHY}; http, https or tcp)")
        del active["type"]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
