"""Kong's Status API (status_listen) in DB-less mode: GET /status, and the read-only upstream routes Kong's
kong/status/init.lua attaches from kong/api/routes/upstreams.lua (their GET handlers only).

    GET /status                                  {"memory": {...}, "server": {...}, "configuration_hash": md5 hex}
    GET /upstreams/{name|id}/targets             {"data": [target], "next": null | "/upstreams/{u}/targets?offset=N"}
    GET /upstreams/{name|id}/targets/all         {"data": [target], "next": null | ...}
    GET /upstreams/{name|id}/targets/{target|id} target
    GET /upstreams/{name|id}/health              {"data": [target + "health" + "data"], "next", "node_id"}
    GET /upstreams/{name|id}/health?balancer_health=1  {"data": {"health", "balancer_health", "id", "details"},
                                                        "next": null, "node_id"}

Kong's status API has no GET /upstreams nor GET /upstreams/{name}: those are the admin API's generated CRUD routes,
which the status API does not attach; here, as there, they are 404 {"message": "Not found"}. Another method on a
route that exists is 405 {"message": "Method not allowed"}; OPTIONS answers 204 with the methods.

A target is {"id", "upstream": {"id"}, "target" (host:port, Kong's default port 8000 added), "weight", "tags"}
without Kong's created_at / updated_at: the gateway does not keep when its config was loaded. Ids the config does
not give are derived as Kong's declarative loader derives them (a UUIDv5 of the upstream's name; of
"targets:*:<upstream id>:<target>" for a target nested in its upstream, of "targets:*:<upstream name>:<target>"
for a top-level one).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import ipaddress
import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from gateway.balancing.continuum import kong_address
from gateway.discovery.service import target_address
from gateway.discovery.types import key_address
from gateway.health.threshold import upstream_healthy
from gateway.telemetry.health_metrics import has_checks, target_health

EMPTY_CONFIG_HASH = "0" * 32  # Kong's DECLARATIVE_EMPTY_CONFIG_HASH: no config, or one without entities
NOT_FOUND = {"message": "Not found"}
METHOD_NOT_ALLOWED = {"message": "Method not allowed"}
BAD_REQUEST = {"message": "Bad request"}  # (Kong's exit(400) has no body: nginx's page; Kong's own words for a 400)
PAGE_SIZE = 100  # Kong's DAO pagination: page_size, max_page_size
MAX_PAGE_SIZE = 1000

_KONG_NAMESPACE = uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5")  # declarative_config.lua's uuid_generators

Answer = tuple[int, Any]  # status, JSON document (None: no body)


def kong_id(entity: str, key: str) -> str:
    """The id Kong's declarative loader gives an `entity` (schema name) without one: generate_uuid(schema, key)."""
    return str(uuid.uuid5(uuid.uuid5(_KONG_NAMESPACE, entity), key))


def ready_post(content_type: str, body: bytes, query: dict[str, str]) -> tuple[int, Any]:
    """Kong's POST /status/ready (kong/status/ready.lua) on its `self.params` (api_helpers.parse_params: the query's
    arguments, a form or multipart body's over them (lapis params_post), a JSON object body's over those): (204,
    None) for status=draining, which the caller applies; a JSON body that does not parse is 400 "Cannot parse JSON
    body"; anything else 400."""
    params: dict[str, Any] = dict(query)
    ctype = content_type.lower()
    if "application/json" in ctype:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return 400, {"message": "Cannot parse JSON body"}
        if isinstance(doc, dict):
            params.update(doc)
    elif "application/x-www-form-urlencode" in ctype:  # (Kong's test, spelled so)
        form = parse_qs(body.decode("latin-1"), keep_blank_values=True)
        params.update({k: v[0] for k, v in form.items()})
    elif "multipart/form-data" in ctype:
        params.update(multipart_fields(content_type, body))
    if params.get("status") == "draining":
        return 204, None
    return 400, BAD_REQUEST


def multipart_fields(content_type: str, body: bytes) -> dict[str, str]:
    """A multipart/form-data body's named parts, each part's content as text (a file part's too: Kong's
    normalize_nested_params takes its content); none when it does not parse (lapis: no params)."""
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    if not message.is_multipart():
        return {}
    fields = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]  # (an EmailMessage under the HTTP policy)
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            content = part.get_payload(decode=True)
            fields[name] = content.decode("utf-8", "replace") if isinstance(content, bytes) else ""
    return fields


def query_args(scope: dict[str, Any]) -> dict[str, str]:
    """The query string's arguments, the first value of each."""
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}


# --- content negotiation for /status --------------------------------------------------------------------------------


def _accept_q(accept: str, main: str, sub: str) -> float:
    """The q the Accept header gives main/sub: that of its most specific matching range (0: none matches)."""
    best, best_rank = 0.0, -1
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        if "/" not in media:
            continue
        m, _, s = media.lower().partition("/")
        rank = 2 if (m, s) == (main, sub) else 1 if (m == main and s == "*") else 0 if (m, s) == ("*", "*") else -1
        if rank < 0 or rank < best_rank:
            continue
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best, best_rank = q, rank
    return best


def prefers_html(accept: str) -> bool:
    """Whether the request's Accept prefers text/html to application/json (a browser's does; curl's */*, a
    monitoring agent's application/json and no Accept at all do not: they get Kong's JSON)."""
    if not accept.strip():
        return False
    html = _accept_q(accept, "text", "html")
    return html > 0 and html > _accept_q(accept, "application", "json")


# --- GET /status ----------------------------------------------------------------------------------------------------


def bytes_to_str(n: int, unit: str = "", scale: int = 2) -> str:
    """kong.tools.string.bytes_to_str; ValueError with Kong's message for a bad unit or scale."""
    u = unit.lower()
    if u in ("", "b"):
        return f"{int(n)}"
    if scale < 0:
        raise ValueError("scale must be equal or greater than 0")
    for letter, power, suffix in (("k", 10, "KiB"), ("m", 20, "MiB"), ("g", 30, "GiB")):
        if u == letter:
            return f"{n / 2 ** power:.{scale}f} {suffix}"
    raise ValueError(f"invalid unit '{unit}' (expected 'k/K', 'm/M', or 'g/G')")


def convert_bytes(n: int, unit: str, scale: int) -> int | str:
    """kong/pdk/node.lua convert_bytes: unit b (any case) is the number of bytes, others bytes_to_str's text."""
    return int(n) if unit.lower() == "b" else bytes_to_str(n, unit, scale)


def memory_args(args: dict[str, str]) -> tuple[str, int] | str:
    """/status's unit (default "m") and scale (default 2) as Kong's health.lua reads them, or the 400's message.
    A scale that is not a number is ignored (Kong's tonumber gives nil, so the default)."""
    unit = args.get("unit", "m")
    scale = 2
    if "scale" in args:
        try:
            value = float(args["scale"])
        except ValueError:
            value = None
        if value is not None and value == value and abs(value) != float("inf"):
            scale = int(value)
    try:
        bytes_to_str(0, unit, scale)
    except ValueError as e:
        return str(e)
    return unit, scale


def rss_bytes(pid: int) -> int | None:
    """A process's resident set size, from /proc (None: gone, or not Linux)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_stats(pids: list[int], unit: str, scale: int) -> dict[str, Any]:
    """Kong's kong.node.get_memory_stats() shape: each worker's memory (its RSS here: a Python process has no
    separate Lua VM heap) by pid ascending; lua_shared_dicts is empty (the gateway has no nginx shared dicts)."""
    workers = []
    for pid in sorted(pids):
        rss = rss_bytes(pid)
        if rss is None:
            workers.append({"pid": pid, "err": f"could not get worker's memory (pid: {pid}): not running"})
        else:
            workers.append({"pid": pid, "http_allocated_gc": convert_bytes(rss, unit, scale)})
    return {"workers_lua_vms": workers, "lua_shared_dicts": {}}


_ENTITY_LISTS = ("services", "routes", "upstreams", "targets", "plugins", "consumers", "jwt_secrets",
                 "keyauth_credentials", "basicauth_credentials", "hmacauth_credentials", "acls", "certificates",
                 "snis", "ca_certificates")


def config_hash(text: str | None, config: Any) -> str:
    """Kong's declarative hash of a config file: md5 of its contents (declarative/init.lua:97,149), `text` being the
    file's UTF-8 as read (its line ends untranslated); all zeros when nothing is loaded or the config has no entities
    (import.lua load_into_cache)."""
    if text is None or config is None or not has_entities(config):
        return EMPTY_CONFIG_HASH
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def has_entities(config: Any) -> bool:
    """Whether a loaded config has any entity: without one, Kong's hash is the empty config's (all zeros) and its
    /status/ready is 503 (ready.lua is_dbless_ready)."""
    return any(getattr(config, name, None) for name in _ENTITY_LISTS)


# --- the upstream routes --------------------------------------------------------------------------------------------


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


class KongTarget:
    """One configured target as Kong's entity, and what its addresses are for the health routes (`key`: its
    address as the keeper names it, `[::1]:9001`)."""

    def __init__(self, entity: dict[str, Any], host: str, port: int, key: str) -> None:
        self.entity = entity
        self.host = host
        self.port = port
        self.key = key

    @property
    def name(self) -> str:
        """The target as Kong's targets DAO spells it, what GET .../targets/{target} matches."""
        return str(self.entity["target"])


def upstream_entities(config: Any) -> list[tuple[Any, str, list[KongTarget]]]:
    """Each configured upstream, its id, and its targets as Kong's entities (config order)."""
    out: list[tuple[Any, str, list[KongTarget]]] = []
    by_name: dict[str, list[KongTarget]] = {}
    ids: dict[str, str] = {}
    for up in getattr(config, "upstreams", None) or ():
        up_id = up.id or kong_id("upstreams", up.name)
        ids[up.name] = up_id
        targets: list[KongTarget] = []
        by_name[up.name] = targets
        out.append((up, up_id, targets))
    for t in getattr(config, "targets", None) or ():
        if t.upstream not in by_name:
            continue
        hostport = target_address(t.target)
        if hostport is None:
            continue
        host, port = hostport
        up_id = ids[t.upstream]
        nested = getattr(t, "_path", "").startswith("upstreams[")
        target_id = t.id or kong_id("targets", f"targets:*:{up_id if nested else t.upstream}:{t.target}")
        # Kong's format_target (dao/targets.lua:31-36, applied as it reads targets, :160-164): an IPv6 address
        # bracketed and expanded (kong/tools/ip.lua normalize_ipv6), `[0000:...:0001]:9001`
        entity = {"id": target_id, "upstream": {"id": up_id}, "target": f"{kong_address(host, host)}:{port}",
                  "weight": t.weight, "tags": list(t.tags) or None}
        key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        by_name[t.upstream].append(KongTarget(entity, host, port, key))
    return out


def _page(args: dict[str, str], rows: list[Any], full_means_more: bool = False) \
        -> tuple[list[Any], str | None, Answer | None]:
    """Kong's targets paging (dao/targets.lua page_for_upstream): size (default 100, at most 1000) and a numeric
    offset: the page, the next offset (None on the last page), and the 400 to answer instead. `full_means_more`:
    a full page always has a next offset, as /targets/all's lmdb paging (lua-resty-lmdb 1.6.0 prefix.page: more
    when the page is full), whose last offset then gives an empty page."""
    size = PAGE_SIZE
    if "size" in args:
        try:
            size = int(float(args["size"]))
        except ValueError:
            return [], None, (400, {"code": 9, "name": "invalid size", "message": "size must be a number"})
        size = max(1, min(size, MAX_PAGE_SIZE))
    offset = 0
    if args.get("offset"):
        if not args["offset"].isdigit():
            return [], None, (400, {"code": 7, "name": "invalid offset",
                                    "message": f"'{args['offset']}' is not a valid offset"})
        offset = int(args["offset"])
    page = rows[offset:offset + size]
    more = len(page) == size if full_means_more else len(rows) > offset + size
    return page, str(offset + size) if more else None, None


class KongUpstreamRoutes:
    """The upstream routes over the loaded config and the keeper's target states (overview()["targets"])."""

    def __init__(self, config: Callable[[], Any], overview: Callable[[], Any], node_id: Callable[[], str]) -> None:
        self.config = config
        self.overview = overview  # async: the keeper's targets list ({"key", "name"?, "healthy", "weight"}) or None
        self.node_id = node_id

    @staticmethod
    def match(path: str) -> tuple[str, str, str | None] | None:
        """(upstream, route, target) for a path of one of the routes ("targets", "all", "target", "health"), else
        None. One trailing slash is ignored (Kong's default_route)."""
        if path.endswith("/") and len(path) > 1:
            path = path[:-1]
        parts = path.split("/")
        if len(parts) < 4 or parts[0] != "" or parts[1] != "upstreams" or not parts[2]:
            return None
        rest = parts[3:]
        if rest == ["health"]:
            return parts[2], "health", None
        if rest == ["targets"]:
            return parts[2], "targets", None
        if rest == ["targets", "all"]:
            return parts[2], "all", None
        if len(rest) == 2 and rest[0] == "targets" and rest[1]:
            return parts[2], "target", rest[1]
        return None

    def find(self, ref: str) -> tuple[Any, str, list[KongTarget]] | None:
        by_id = _is_uuid(ref)
        for up, up_id, targets in upstream_entities(self.config()):
            if (up_id == ref.lower()) if by_id else (up.name == ref):
                return up, up_id, targets
        return None

    async def answer(self, ref: str, route: str, target: str | None, args: dict[str, str]) -> Answer:
        found = self.find(ref)
        if found is None:
            return 404, NOT_FOUND
        up, up_id, targets = found
        if route == "target":
            assert target is not None
            by_id = _is_uuid(target)
            for t in reversed(targets):
                if (t.entity["id"] == target.lower()) if by_id else (t.name == target):
                    return 200, t.entity
            return 404, NOT_FOUND
        if route == "health":
            return await self.health(ref, up, up_id, targets, args)
        data, offset, error = _page(args, [t.entity for t in targets], full_means_more=route == "all")
        if error is not None:
            return error
        doc: dict[str, Any] = {"data": data}
        if offset is not None:
            doc["offset"] = offset
        suffix = "targets/all" if route == "all" else "targets"
        doc["next"] = f"/upstreams/{ref}/{suffix}?offset={offset}" if offset is not None else None
        return 200, doc

    async def health(self, ref: str, up: Any, up_id: str, targets: list[KongTarget], args: dict[str, str]) -> Answer:
        states = await self.overview()
        node_id = self.node_id()
        checked = has_checks(up)
        statuses = None if states is None else [self.target_status(up.name, t, states, checked) for t in targets]
        if str(args.get("balancer_health")) == "1":
            doc: dict[str, Any] = {"next": None, "node_id": node_id}
            if statuses is not None:
                addresses = [a for s in statuses for a in s["addresses"]]  # Kong weighs addresses
                unhealthy = {i for i, a in enumerate(addresses) if a["health"] == "UNHEALTHY"}
                healthy = upstream_healthy([a["weight"] for a in addresses], unhealthy, set(),
                                           up.healthchecks.threshold)
                weights = [s["weight"]["total"] for s in statuses]
                total = sum(weights)
                available = sum(s["weight"]["available"] for s in statuses)
                balancer = "HEALTHY" if healthy else "UNHEALTHY"
                doc["data"] = {"health": balancer if checked else "HEALTHCHECKS_OFF", "balancer_health": balancer,
                               "id": up_id, "details": {"healthy": healthy, "weight": {
                                   "total": total, "unavailable": total - available, "available": available},
                                   "hosts": statuses}}
            return 200, doc
        indexes, offset, error = _page(args, list(range(len(targets))))
        if error is not None:
            return error
        rows = []
        for i in indexes:
            row = dict(targets[i].entity)
            if statuses is not None:  # the keeper not answering: Kong's rows when the balancer's health is unknown
                status = statuses[i]
                if status["addresses"]:
                    health = "HEALTHCHECKS_OFF"
                    for address in status["addresses"]:
                        if address["health"] == "HEALTHY":
                            health = "HEALTHY"
                            break
                        if address["health"] == "UNHEALTHY":
                            health = "UNHEALTHY"
                    row["health"] = health
                    row["data"] = status
                else:
                    row["health"] = "DNS_ERROR"
            rows.append(row)
        doc = {"data": rows}
        if offset is not None:
            doc["offset"] = offset
        doc["next"] = f"/upstreams/{ref}/health?offset={offset}" if offset is not None else None
        doc["node_id"] = node_id
        return 200, doc

    @staticmethod
    def target_status(upstream: str, target: KongTarget, states: list[dict[str, Any]], checked: bool) \
            -> dict[str, Any]:
        """balancers.lua getTargetStatus with healthcheckers.lua's address health: the target's addresses are the
        keeper's states named after it (a name's resolved addresses), or the target itself when it is an IP. A name
        with none did not resolve (Kong: DNS_ERROR, no addresses). Its host is Kong's target.name (an IPv6 address
        bracketed and expanded, as the targets DAO formats it), its addresses' ip Kong's address.ip, their weight
        the one DNS gave them (addAddress: an SRV record's own) and `dns` their record type (get_dns_source)."""
        own_key = f"{upstream}|{target.key}"
        mine = [s for s in states if s.get("name") == target.key and s["key"].startswith(upstream + "|")]
        if not mine and _is_ip(target.host):
            mine = [s for s in states if s["key"] == own_key and "name" not in s]
        weight = int(target.entity["weight"])
        addresses: list[dict[str, Any]] = []
        for state in mine:
            ip, port = _split_address(key_address(state["key"].partition("|")[2]))
            if ":" in ip:  # Kong's address.ip: a literal target's DAO form, a name's AAAA answer bracketed
                ip = kong_address(target.host, ip)
            override = state.get("weight")  # the keeper's weight, None: DNS's (an SRV record's), else the configured
            address_weight = int(state.get("dns_weight", weight) if override is None else override)
            health = target_health(checked, weight, state.get("healthy", True)).upper()
            addresses.append({"ip": ip, "port": port, "weight": address_weight, "health": health})
        total = sum(a["weight"] for a in addresses)
        unavailable = sum(a["weight"] for a in addresses if a["health"] == "UNHEALTHY")
        source = next((s["dns"] for s in mine if "dns" in s), None)  # (one query made them all)
        if not addresses:
            dns = "unknown"
        elif source is not None:
            dns = source
        elif _is_ip(target.host):
            dns = "AAAA" if ":" in target.host else "A"
        else:
            dns = "AAAA" if all(":" in a["ip"] for a in addresses) else "A"
        return {"host": kong_address(target.host, target.host), "port": target.port, "dns": dns,
                "nodeWeight": weight,
                "weight": {"total": total, "unavailable": unavailable, "available": total - unavailable},
                "addresses": addresses}
