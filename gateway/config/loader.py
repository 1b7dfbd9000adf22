"""Read a YAML config file into a validated, flattened `Config`, or raise ConfigError naming every problem.

Loading never half-applies: the caller gets a whole Config or an exception. Nested Kong entities (routes under
services, targets under upstreams, plugins under services/routes/consumers) are moved to the top-level lists with
their parent named, so later stages see one shape. Each entity remembers its source path in `_path` for messages.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any
from urllib.parse import urlsplit

import msgspec
import yaml

from gateway.config.consumers import (
    CREDENTIALS,
    Acl,
    BasicAuthCredential,
    JwtSecret,
    KeyAuthCredential,
    check_consumers,
    decode_hook,
    flatten_consumers,
)
from gateway.config.errors import ConfigError, describe_validation_error
from gateway.config.schema import Config, Consumer, GatewaySettings, Plugin, Route, Service, Target, Upstream
from gateway.config.tls import (
    LISTEN_FLAGS,
    CaCertificateEntity,
    CertificateEntity,
    SniEntity,
    certificate_key,
    flatten_tls,
    listen_flags,
    ref_id,
)

_SECTIONS: dict[str, Any] = {
    "services": Service,
    "routes": Route,
    "upstreams": Upstream,
    "targets": Target,
    "plugins": Plugin,
    "consumers": Consumer,
    "jwt_secrets": JwtSecret,
    "keyauth_credentials": KeyAuthCredential,
    "basicauth_credentials": BasicAuthCredential,
    "acls": Acl,
    "certificates": CertificateEntity,
    "snis": SniEntity,
    "ca_certificates": CaCertificateEntity,
}
_SCALARS = {"_format_version", "_transform"}
_METHOD = re.compile(r"^[A-Z]+$")
_SNI = re.compile(r"^(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*(\.\*)?$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP field name (RFC 9110 token)
_REMOVED_GATEWAY_KEYS = {
    "trust_forwarded": "removed: list the addresses of the balancers in front of the gateway in gateway.trusted_ips "
                       "(IPs or CIDRs) and name the header they set in gateway.real_ip_header (e.g. X-Forwarded-For, "
                       "with real_ip_recursive: true), as Kong's kong.conf does; their X-Forwarded-* are then kept",
}
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d{1,5}))?$")
DEFAULT_TARGET_PORT = 8000  # Kong's default when a target names no port


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load and validate the file at `path`."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([f"{name}: cannot read the config file: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{name}: not UTF-8 text: {e.reason} at byte {e.start}"]) from None
    return parse_config(text, name)


def parse_config(text: str, name: str = "<config>") -> Config:
    """Validate YAML text; `name` prefixes every error message."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{name}{where}: YAML syntax error: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{name}: the document must be a mapping (services:, routes:, ...), got {_kind(raw)}"])
    errors: list[str] = []
    config = _decode(raw, errors)
    if not errors:
        _flatten(config)
        _check(config, errors)
    if errors:
        raise ConfigError([f"{name}: {e}" for e in errors])
    return config


def _kind(value: Any) -> str:
    kinds = {list: "a list", dict: "a mapping", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return kinds.get(type(value), type(value).__name__)


def _decode(raw: dict[str, Any], errors: list[str]) -> Config:
    """Decode section by section, so one bad entity does not hide the errors of the others."""
    known = set(_SECTIONS) | _SCALARS | {"gateway"}
    for key in raw:
        if key not in known:
            errors.append(f"{key}: unknown top-level key; expected one of: {', '.join(sorted(known))}")
    fields: dict[str, Any] = {}
    for key, typ in _SECTIONS.items():
        items = raw.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            errors.append(f"{key}: expected a list, got {_kind(items)}")
            continue
        decoded = []
        for i, item in enumerate(items):
            obj = _convert(item, typ, f"{key}[{i}]", errors)
            if obj is not None:
                decoded.append(obj)
        fields[key] = decoded
    if "gateway" in raw:
        gw_raw = raw["gateway"] or {}
        if isinstance(gw_raw, dict):
            for key, why in _REMOVED_GATEWAY_KEYS.items():
                if key in gw_raw:
                    errors.append(f"gateway.{key}: {why}")
                    gw_raw = {k: v for k, v in gw_raw.items() if k != key}
        gw = _convert(gw_raw, GatewaySettings, "gateway", errors)
        if gw is not None:
            fields["gateway"] = gw
    scalars = {k: raw[k] for k in _SCALARS if k in raw}
    shell = _convert(scalars, Config, "", errors) or Config()
    return msgspec.structs.replace(shell, **fields)


def _convert(item: Any, typ: Any, path: str, errors: list[str]) -> Any:
    try:
        obj = msgspec.convert(item, typ, dec_hook=decode_hook)
    except msgspec.ValidationError as e:
        errors.append(describe_validation_error(e, item, typ, path))
        return None
    _mark(obj, path)
    return obj


def _mark(obj: Any, path: str) -> None:
    """Record each nested entity's source path (routes under a service, targets under an upstream, ...)."""
    obj._path = path
    for attr in ("routes", "targets", "plugins", *CREDENTIALS):
        for i, child in enumerate(getattr(obj, attr, ()) or ()):
            _mark(child, f"{path}.{attr}[{i}]")


def path_of(obj: Any) -> str:
    """The source path of a config entity, e.g. 'services[0].routes[1]'."""
    return getattr(obj, "_path", "?")


def _flatten(config: Config) -> None:
    for svc in config.services:
        for route in svc.routes:
            route.service = svc.name
            config.routes.append(route)
        for plugin in svc.plugins:
            plugin.service = svc.name
            config.plugins.append(plugin)
        svc.routes, svc.plugins = [], []
    for route in config.routes:
        for plugin in route.plugins:
            plugin.route = route.name
            plugin._route = route  # routes need no name: the runtime matches a nested plugin by its route
            config.plugins.append(plugin)
        route.plugins = []
    for up in config.upstreams:
        for target in up.targets:
            target.upstream = up.name
            config.targets.append(target)
        up.targets = []
    flatten_consumers(config)
    flatten_tls(config.certificates, config.snis)


def _check(config: Config, errors: list[str]) -> None:
    """Cross-field and cross-entity rules; each message names every field involved."""
    _check_listen(config.gateway, errors)
    _check_client_address(config.gateway, errors)
    check_consumers(config, errors)
    services = _unique(config.services, "services", errors)
    routes = _unique([r for r in config.routes if r.name], "routes", errors)
    upstreams = _unique(config.upstreams, "upstreams", errors)
    certificates = {certificate_key(c, i): c for i, c in enumerate(config.certificates)}
    ca_certificates = {c.id for c in config.ca_certificates if c.id}
    for svc in config.services:
        _check_service(svc, errors)
        _check_service_tls(svc, certificates, ca_certificates, errors)
    _check_snis(config, certificates, errors)
    for route in config.routes:
        _check_route(route, services, errors)
    for up in config.upstreams:
        _check_upstream(up, errors)
    for target in config.targets:
        where = path_of(target)
        if target.upstream not in upstreams:
            errors.append(f"{where}.upstream: no upstream named {target.upstream!r}")
        if parse_host_port(target.target, DEFAULT_TARGET_PORT) is None:
            errors.append(f'{where}.target: expected "host:port", got "{target.target}"')
    for plugin in config.plugins:
        where = path_of(plugin)
        if plugin.service is not None and plugin.service not in services:
            errors.append(f"{where}.service: no service named {plugin.service!r}")
        if plugin.route is not None and plugin.route not in routes:
            errors.append(f"{where}.route: no route named {plugin.route!r}")


def _unique(items: list[Any], section: str, errors: list[str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for item in items:
        if item.name in seen:
            errors.append(f"{path_of(item)}.name: {item.name!r} is already used by {path_of(seen[item.name])}")
        seen.setdefault(item.name, item)
    return seen


def _check_listen(gw: GatewaySettings, errors: list[str]) -> None:
    listens = [gw.listen] if isinstance(gw.listen, str) else gw.listen
    tls = False
    for i, entry in enumerate(listens):
        where = "gateway.listen" if isinstance(gw.listen, str) else f"gateway.listen[{i}]"
        addr, flags = listen_flags(entry)
        hp = parse_host_port(addr, None)
        if hp is None or hp[1] is None:
            errors.append(f'{where}: expected "host:port" or "host:port ssl" (e.g. "127.0.0.1:8443 ssl"), got '
                          f'"{entry}"')
        for flag in sorted(flags - LISTEN_FLAGS):
            errors.append(f'{where}: the listen option "{flag}" is not supported (only "ssl" is)')
        tls = tls or "ssl" in flags
    if (gw.ssl_cert is None) != (gw.ssl_cert_key is None):
        errors.append("gateway.ssl_cert and gateway.ssl_cert_key: set both (the default certificate and its key)")
    if gw.ssl_ciphers is not None and gw.ssl_cipher_suite != "custom":
        errors.append("gateway.ssl_ciphers: only used with gateway.ssl_cipher_suite: custom")
    if gw.ssl_cipher_suite == "custom" and not gw.ssl_ciphers:
        errors.append("gateway.ssl_cipher_suite is custom: set gateway.ssl_ciphers")
    protocols = gw.ssl_protocols.split()
    if not protocols or any(p not in ("TLSv1.2", "TLSv1.3") for p in protocols):
        errors.append(f'gateway.ssl_protocols: expected TLSv1.2 and/or TLSv1.3 (e.g. "TLSv1.2 TLSv1.3"), got '
                      f'"{gw.ssl_protocols}"')
    if gw.status_listen is not None:
        hp = parse_host_port(gw.status_listen, None)
        if hp is None or hp[1] is None:
            errors.append(f'gateway.status_listen: expected "host:port", got "{gw.status_listen}"')


def _check_client_address(gw: GatewaySettings, errors: list[str]) -> None:
    for i, entry in enumerate(gw.trusted_ips):
        if entry.startswith("unix:"):
            errors.append(f"gateway.trusted_ips[{i}]: unix: is not supported (the gateway listens on TCP only)")
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            errors.append(f'gateway.trusted_ips[{i}]: expected an IP address or a CIDR (e.g. "10.0.0.0/8", "::1"), '
                          f'got "{entry}"')
    if gw.real_ip_header.lower() == "proxy_protocol":
        errors.append("gateway.real_ip_header: proxy_protocol is not supported (the gateway does not read the PROXY "
                      "protocol); name a header such as X-Forwarded-For or X-Real-IP")
    elif not _TOKEN.match(gw.real_ip_header):
        errors.append(f'gateway.real_ip_header: expected a header name (e.g. "X-Forwarded-For"), '
                      f'got "{gw.real_ip_header}"')


def _check_service(svc: Service, errors: list[str]) -> None:
    where = path_of(svc)
    if svc.url is not None:
        if svc.host is not None:
            errors.append(f"{where}.url and {where}.host: set one of them, not both")
            return
        try:
            parts = urlsplit(svc.url)
            port = parts.port
        except ValueError as e:
            errors.append(f'{where}.url: invalid URL "{svc.url}": {e}')
            return
        if parts.scheme not in ("http", "https"):
            errors.append(f'{where}.url: expected an http:// or https:// URL, got "{svc.url}"')
        elif not parts.hostname:
            errors.append(f'{where}.url: no host in "{svc.url}"')
        elif port == 0:
            errors.append(f'{where}.url: port must be 1-65535 in "{svc.url}"')
    elif svc.host is None:
        errors.append(f"{where}: set url, or host (with port and path)")


def _check_service_tls(svc: Service, certificates: dict[str, Any], ca_certificates: set[str],
                       errors: list[str]) -> None:
    """Kong's rules: the TLS fields need protocol https; what they name must exist."""
    where = path_of(svc)
    https = svc.protocol == "https" or (svc.url or "").lower().startswith("https://")
    for field in ("tls_verify", "tls_verify_depth", "ca_certificates", "client_certificate"):
        if getattr(svc, field) is not None and not https:
            errors.append(f"{where}.{field}: only for protocol https (the service's protocol is http)")
    for i, ca in enumerate(svc.ca_certificates or ()):
        if ca not in ca_certificates:
            errors.append(f"{where}.ca_certificates[{i}]: no ca_certificate with id {ca!r}")
    client = ref_id(svc.client_certificate)
    if client is not None and client not in certificates:
        errors.append(f"{where}.client_certificate: no certificate with id {client!r}")


def _check_snis(config: Config, certificates: dict[str, Any], errors: list[str]) -> None:
    seen: dict[str, str] = {}
    for i, sni in enumerate(config.snis):
        where = getattr(sni, "_path", f"snis[{i}]")
        cert = ref_id(sni.certificate)
        if cert is None:
            errors.append(f"{where}.certificate: required (the id of a certificate)")
        elif cert not in certificates:
            errors.append(f"{where}.certificate: no certificate with id {cert!r}")
        name = sni.name.lower()
        if not _SNI.match(name):
            errors.append(f'{where}.name: expected a host name, "*.domain" or "name.*", got "{sni.name}"')
        elif name in seen:
            errors.append(f"{where}.name: {sni.name!r} is already used by {seen[name]}")
        seen.setdefault(name, where)


def _check_route(route: Route, services: dict[str, Service], errors: list[str]) -> None:
    where = path_of(route)
    if route.service is None:
        errors.append(f"{where}.service: every route needs a service")
    elif route.service not in services:
        errors.append(f"{where}.service: no service named {route.service!r}")
    if not (route.paths or route.methods or route.hosts or route.headers or route.query):
        errors.append(f"{where}: set at least one of paths, methods, hosts, headers, query")
    for i, p in enumerate(route.paths):
        if p.startswith("~"):
            try:
                re.compile(p[1:])
            except re.error as e:
                errors.append(f'{where}.paths[{i}]: invalid regex "{p[1:]}": {e}')
        elif not p.startswith("/"):
            errors.append(f'{where}.paths[{i}]: a path starts with "/" (prefix) or "~" (regex), got "{p}"')
    for i, m in enumerate(route.methods):
        if not _METHOD.match(m):
            errors.append(f'{where}.methods[{i}]: expected an upper-case HTTP method, got "{m}"')
    if route.mcp is False and (route.mcp_methods or route.mcp_tools):
        field = "mcp_methods" if route.mcp_methods else "mcp_tools"
        errors.append(f"{where}.mcp is false but {where}.{field} is set: routing on MCP methods or tools needs the "
                      "MCP layer (remove mcp: false)")
    for name, values in route.headers.items():
        if name.lower() == "host":
            errors.append(f"{where}.headers.{name}: match hosts with the route's hosts field")
        if not values:
            errors.append(f"{where}.headers.{name}: expected at least one value")


def _check_upstream(up: Upstream, errors: list[str]) -> None:
    where = path_of(up)
    for field, needs in (("hash_on", "hash_on_header"), ("hash_fallback", "hash_fallback_header")):
        value = getattr(up, field)
        if value == "header" and not getattr(up, needs):
            errors.append(f"{where}.{field} is header: set {where}.{needs}")
    if up.hash_on == "cookie" and not up.hash_on_cookie:
        errors.append(f"{where}.hash_on is cookie: set {where}.hash_on_cookie")
    if up.hash_on == "query_arg" and not up.hash_on_query_arg:
        errors.append(f"{where}.hash_on is query_arg: set {where}.hash_on_query_arg")
    if up.hash_fallback == "query_arg" and not up.hash_fallback_query_arg:
        errors.append(f"{where}.hash_fallback is query_arg: set {where}.hash_fallback_query_arg")
    if up.hash_on == "none" and up.hash_fallback != "none":
        errors.append(f"{where}.hash_fallback: needs {where}.hash_on to be set (it is none)")
    if up.hash_on in ("cookie",) and up.hash_fallback != "none":
        errors.append(f"{where}.hash_fallback: cannot be used with {where}.hash_on: cookie")


def parse_host_port(text: str, default_port: int | None) -> tuple[str, int | None] | None:
    """'host:port' or '[v6]:port' -> (host, port); None when malformed or the port is out of range."""
    m = _HOST_PORT.match(text.strip())
    if not m:
        return None
    host = m.group("v6") or m.group("host")
    port = int(m.group("port")) if m.group("port") else default_port
    if port is not None and not 0 < port < 65536:
        return None
    return host, port
