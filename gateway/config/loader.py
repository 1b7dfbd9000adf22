"""Read a YAML (or JSON) config file into a validated, flattened `Config`, or raise ConfigError naming every problem.

Loading never half-applies: the caller gets a whole Config or an exception. Nested Kong entities (routes under
services, targets under upstreams, plugins under services/routes/consumers) are moved to the top-level lists with
their parent named, so later stages see one shape. Each entity remembers its source path in `_path` for messages.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import stat
from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.config import kong_conf
from gateway.config.consumers import (
    CREDENTIALS,
    Acl,
    BasicAuthCredential,
    HmacAuthCredential,
    JwtSecret,
    KeyAuthCredential,
    check_consumers,
    decode_hook,
    derived_id,
    flatten_consumers,
    stored_passwords,
)
from gateway.config.decode import convert_all, salvage, unset_nulls
from gateway.config.document import read_document, read_text
from gateway.config.errors import ConfigError, in_file_order, key_part, name_variable, new_load, show
from gateway.config.kong_forms import GRPC_WHY, NESTED, prepare
from gateway.config.listen import listen_flags, listen_options, repeated_flags, status_options
from gateway.config.patterns import regex_problem
from gateway.config.schema import (
    Config,
    Consumer,
    GatewaySettings,
    Plugin,
    Route,
    Service,
    Target,
    Upstream,
    ssl_cert_values,
)
from gateway.config.service_url import read_service_url
from gateway.config.tls import (
    CaCertificateEntity,
    CertificateEntity,
    SniEntity,
    flatten_tls,
    ref_id,
)
from gateway.config.typedefs import (
    header_name_problem,
    hosts_problem,
    kong_address,
    kong_host_problem,
    listen_host_problem,
    path_problem,
    router_path_problem,
    tag_problem,
    target_problem,
    upstream_name_problem,
    utf8_name_problem,
    wildcard_host_problem,
)
from gateway.config.vaults import resolve_settings
from gateway.http.realip import parse_network
from gateway.http.tls_contexts import OPENSSL_VERIFY_DEPTH, VERSIONS, TrustStore, use_trust_store
from gateway.node.files import METRICS_DIR, run_dir_file
from gateway.node.paths import absolute_endpoint

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
    "hmacauth_credentials": HmacAuthCredential,
    "acls": Acl,
    "certificates": CertificateEntity,
    "snis": SniEntity,
    "ca_certificates": CaCertificateEntity,
}
_SCALARS = {"_format_version", "_transform"}
# (whole-value patterns, applied with fullmatch: Python's `$` also matches before a final "\n", Lua's does not)
_METHOD = re.compile(r"[A-Z]+")  # typedefs.http_method, Lua's "^%u+$"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 token)
_REMOVED_GATEWAY_KEYS = {
    "trust_forwarded": "removed: list the addresses of the balancers in front of the gateway in gateway.trusted_ips "
                       "(IPs or CIDRs) and name the header they set in gateway.real_ip_header (e.g. X-Forwarded-For, "
                       "with real_ip_recursive: true), as Kong's kong.conf does; their X-Forwarded-* are then kept",
}
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d{1,5}))?")  # fullmatch
DEFAULT_TARGET_PORT = 8000  # Kong's default when a target names no port
# What urlsplit drops from a url (a leading space or C0 control; a tab or line break anywhere) and socket.url's
# parse, Kong's, keeps: before the scheme, in the host or in the path, Kong refuses the url
_URL_LEADING = tuple(chr(c) for c in range(0x21))
_URL_BREAK = re.compile(r"[\t\r\n]")
_EXAMPLE_ID = "3f2a63d2-2b43-4a5b-9d1e-5c6b1f0e8a42"
# Kong's typedefs.uuid (kong/db/schema/init.lua:159, 338-342): the dashed form only, hex digits of either case
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_SECTION_CHECK = re.compile(r"gateway: ([a-z0-9_]+)(?=[:\s\[.]|$)")  # a GatewaySettings check's own words
log = logging.getLogger("gateway.config")
_announced: dict[str, str] = {}  # the KONG_ variables this process last said it applied


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load and validate the file at `path`."""
    return parse_config(read_config_text(path), os.fspath(path))


def read_config_text(path: str | os.PathLike[str]) -> str:
    """The config file's text (read_text), refusing at once a path with a NUL byte (open() raises ValueError) and
    one that is neither a regular file nor a directory: opening a FIFO with no writer would wait for ever."""
    name = os.fspath(path)
    if "\0" in name:
        raise ConfigError([f"{name.replace(chr(0), '?')}: cannot read the config file: the path contains a NUL byte "
                           "(shown as ?)"])
    try:
        mode = os.stat(name).st_mode
    except OSError:
        mode = None  # read_text says why it cannot be read
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ConfigError([f"{name}: cannot read the config file: not a regular file ({_file_kind(mode)}); name the "
                           "YAML file itself"])
    return read_text(name)


def _file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in a word or two."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


def parse_config(text: str, name: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Validate YAML text (JSON when `name` ends in json, as Kong reads it); `name` prefixes every error message.
    kong.conf's KONG_<KEY> variables are read from `environ` (this process's environment when not given)."""
    new_load()
    raw = read_document(text, name)
    if raw is None:  # (Kong: "expected an object"; a file truncated as it was rewritten would drop every route)
        raise ConfigError([f"{name}: the file holds no YAML document (it is empty, or only comments); write {{}} "
                           "for a config without services"])
    if not isinstance(raw, dict):
        raise ConfigError([f"{name}: the document must be a mapping (services:, routes:, ...), got {_kind(raw)}"])
    errors: list[str] = []
    original = raw
    raw = prepare(raw, tuple(_SECTIONS), errors)
    if raw.get("_transform") is False:
        stored_passwords(raw, errors)
    failed: set[tuple[str, str]] = set()  # (section, name or id) of entities that did not decode
    environ = os.environ if environ is None else environ
    environment = kong_conf.from_environment(environ)
    unresolved = _settings(raw, environ, environment, errors)
    resolved_at = len(errors)
    config = _decode(raw, errors, failed)
    given = _flatten(config)
    _check(config, errors, failed)
    _check_given_references(config, given, failed, errors)
    trust = _trust_store(config.gateway, errors)
    if errors:
        errors[resolved_at:] = [e for e in errors[resolved_at:] if _field(e) not in unresolved]
        raise ConfigError([f"{name}: {e}" for e in in_file_order(errors, list(original))], config, list(original))
    use_trust_store(trust)  # what this process's own TLS clients verify against, as the config it loaded says
    _announce(environment)
    return config


def _announce(environment: dict[str, str]) -> None:
    """Log the KONG_ variables that set `gateway:` fields, once per process (and again when they change)."""
    if environment != _announced:
        _announced.clear()
        _announced.update(environment)
        if environment:
            log.info("kong.conf from the environment, over the file: %s",
                     ", ".join(f"{variable} (gateway.{key})" for key, variable in environment.items()))


def _trust_store(gw: GatewaySettings, errors: list[str]) -> TrustStore:
    """kong.conf's lua_ssl_trusted_certificate (checked as Kong does) and lua_ssl_verify_depth (refused unless it is
    the depth OpenSSL applies anyway)."""
    depth = gw.lua_ssl_verify_depth
    if depth is not None and depth != OPENSSL_VERIFY_DEPTH:
        errors.append(f"gateway.lua_ssl_verify_depth: {depth} cannot be obeyed: Python's ssl module cannot limit the "
                      f"depth of a certificate chain, so the gateway's TLS clients take chains of up to OpenSSL's "
                      f"{OPENSSL_VERIFY_DEPTH} intermediate certificates; remove it (or set {OPENSSL_VERIFY_DEPTH})")
    return TrustStore.from_setting(gw.lua_ssl_trusted_certificate, errors, cipher_suite=gw.ssl_cipher_suite)


def _kind(value: Any) -> str:
    kinds = {list: "a list", dict: "a mapping", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return kinds.get(type(value), type(value).__name__)


def _field(message: str) -> str:
    """The field a message is about: its path, without indices (`gateway.trusted_ips`); a check of the `gateway:`
    section names its field after the section's path (`gateway: headers: invalid entry ...`)."""
    path = message.split(":", 1)[0]
    if path == "gateway" and (m := _SECTION_CHECK.match(message)):
        path = f"gateway.{m.group(1)}"
    return path.split("[", 1)[0]


def _settings(raw: dict[str, Any], environ: Mapping[str, str], environment: dict[str, str],
              errors: list[str]) -> set[str]:
    """The `gateway:` section (kong.conf's) as Kong's conf loader makes it, in `raw`: the KONG_ variables' values
    over the file's, then the references resolved. Returns the fields whose reference could not be (`gateway.x`):
    what their text would make of them is not reported besides."""
    if "gateway" not in raw and not environment:
        return set()
    block = {} if raw.get("gateway") is None else raw["gateway"]  # null configures nothing; false is an error
    if not isinstance(block, dict):
        return set()
    for key, variable in environment.items():
        name_variable(f"gateway.{key}", variable)
        if key in kong_conf.ALIASES:
            name_variable(f"gateway.{kong_conf.ALIASES[key]}", variable)
    block = kong_conf.overridden(block, environment, environ)
    raw["gateway"], unresolved = resolve_settings(block, kong_conf.ALIASES, errors, environ)
    return unresolved


def _decode(raw: dict[str, Any], errors: list[str], failed: set[tuple[str, str]]) -> Config:
    """Decode section by section, so one bad entity does not hide the errors of the others; `failed` gets the names
    and ids of those that did not decode (references to them are not reported again)."""
    known = set(_SECTIONS) | _SCALARS | {"gateway"}
    for key in raw:
        if key not in known:
            errors.append(f"{key_part(key)}: unknown top-level key; expected one of: {', '.join(sorted(known))}")
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
            item = unset_nulls(item, typ, f"{key}[{i}]", errors)  # null: not set, as in Kong
            obj = _convert(item, typ, f"{key}[{i}]", errors, failed, key)
            if obj is not None:
                decoded.append(obj)
        fields[key] = decoded
    if "gateway" in raw:
        gw_raw = {} if raw["gateway"] is None else raw["gateway"]  # null configures nothing; false is an error
        aliased: dict[str, str] = {}
        if isinstance(gw_raw, dict):
            for key, why in _REMOVED_GATEWAY_KEYS.items():
                if key in gw_raw:
                    errors.append(f"gateway.{key}: {why}")
                    gw_raw = {k: v for k, v in gw_raw.items() if k != key}
            gw_raw, aliased = kong_conf.settle(gw_raw, errors)  # kong.conf's keys: refused by name, or aliases
        gw_errors: list[str] = []
        gw = _convert(gw_raw, GatewaySettings, "gateway", gw_errors)
        errors += [kong_conf.as_written(e, aliased) for e in gw_errors]
        if gw is not None:
            fields["gateway"] = gw
    scalars = {k: raw[k] for k in _SCALARS if k in raw}
    shell = _convert(scalars, Config, "", errors) or Config()
    return msgspec.structs.replace(shell, **fields)


def _note_failed(section: str, item: dict[str, Any], failed: set[tuple[str, str]]) -> None:
    for field in ("name", "id", "username"):
        if isinstance(item.get(field), str):
            failed.add((section, item[field]))
    for child in NESTED.get(section, ()):
        nested_items = item.get(child)
        for nested in nested_items if isinstance(nested_items, list) else ():
            if isinstance(nested, dict):
                _note_failed(child, nested, failed)


def _convert(item: Any, typ: Any, path: str, errors: list[str], failed: set[tuple[str, str]] | None = None,
             section: str = "") -> Any:
    """The entity decoded; for one with errors, what `salvage` can decode of it, marked `_broken` (its other
    checks still run; the file is refused anyway), and its names and ids noted in `failed`."""
    before = len(errors)
    obj = convert_all(item, typ, path, errors, decode_hook)
    if obj is None and failed is not None:
        if isinstance(item, dict):
            _note_failed(section, item, failed)
        obj = salvage(item, typ, path, errors[before:], decode_hook)
        if obj is not None:
            obj._broken = True
    if obj is not None:
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


# A nested entity's own reference to the kind of entity it is nested under, which its parent replaces:
# (the entity, the field, the id or name it gives, the section it names)
_GivenReference = tuple[Any, str, str, str]
_REFERENCED_BY = {"services": "id or name", "routes": "id or name", "upstreams": "id or name",
                  "consumers": "id or username", "certificates": "id"}


def _flatten(config: Config) -> list[_GivenReference]:
    """Nested entities moved to the top-level lists, naming their parent; returns the references to their parent's
    kind they gave themselves, which must name an entity all the same (_check_given_references)."""
    given: list[_GivenReference] = []
    _label_unnamed_services(config.services)
    for svc in config.services:
        for route in svc.routes:
            _keep_reference(route, "service", "services", given)
            _nest(route, "service", svc)
            config.routes.append(route)
        for plugin in svc.plugins:
            _keep_reference(plugin, "service", "services", given)
            _nest(plugin, "service", svc)
            config.plugins.append(plugin)
        svc.routes, svc.plugins = [], []
    for route in config.routes:
        for plugin in route.plugins:
            _keep_reference(plugin, "route", "routes", given)
            plugin.route = route.name
            plugin._route = route  # type: ignore[attr-defined]  # routes need no name: matched by this route
            config.plugins.append(plugin)
        route.plugins = []
    for up in config.upstreams:
        for target in up.targets:
            _keep_reference(target, "upstream", "upstreams", given)
            _nest(target, "upstream", up)
            config.targets.append(target)
        up.targets = []
    for consumer in config.consumers:  # (its nested credentials' references: gateway.config.consumers checks them)
        for plugin in consumer.plugins:
            _keep_reference(plugin, "consumer", "consumers", given)
    for cert in config.certificates:
        for sni in cert.snis:
            if isinstance(sni, SniEntity):
                _keep_reference(sni, "certificate", "certificates", given)
    flatten_consumers(config)
    flatten_tls(config.certificates, config.snis)
    return given


def _label_unnamed_services(services: list[Service]) -> None:
    """Give each unnamed service the label routes, plugins and the runtime know it by (in `name`, marked `_unnamed`):
    its id, or its place in the file when it has none or a service is named with it (Kong keeps the two apart: names
    and ids are looked up separately). A place ("services[0]") is neither a name (typedefs.utf8_name takes no `[`)
    nor an id (a UUID), and no reference resolves to a label (_references): only to a name or an id."""
    names = {svc.name for svc in services if svc.name is not None}
    for svc in services:
        if svc.name is None:
            svc.name = svc.id if svc.id is not None and svc.id not in names else path_of(svc)
            svc._unnamed = True  # type: ignore[attr-defined]


def _nest(child: Any, field: str, parent: Any) -> None:
    """A nested entity's reference to its parent: the parent's name (or label), and the parent itself in `_<field>`,
    so that _check takes it as resolved (the label of an unnamed parent is no reference a user can write)."""
    setattr(child, field, parent.name)
    setattr(child, f"_{field}", parent)


def _references(named: list[Any], every: list[Any], section: str, errors: list[str]) -> dict[str, Any]:
    """What a reference to an entity of `section` can say, and the entity it names: an entity's name (unique, else an
    error) before another's id, as Kong's find_entity looks up by_key before by_id
    (kong/db/schema/others/declarative_config.lua:464-466). Labels of unnamed entities are not references."""
    found = {entity.id: entity for entity in every if entity.id}
    found.update(_unique(named, section, errors))
    return found


def _keep_reference(entity: Any, field: str, section: str, given: list[_GivenReference]) -> None:
    """Note the reference `entity` gives in `field`, if any, before its parent's replaces it."""
    value = ref_id(getattr(entity, field))
    if value is not None:
        given.append((entity, field, value, section))


def _check_given_references(config: Config, given: list[_GivenReference], failed: set[tuple[str, str]],
                            errors: list[str]) -> None:
    """A nested entity's own reference to its parent's kind names an entity, though the parent replaces it: Kong's
    populate_references records it before setting the parent's key, and validate_references refuses the file when
    it names none (kong/db/schema/others/declarative_config.lua:438-455, 470-500)."""
    names: dict[str, set[str | None]] = {
        "services": {s.name for s in config.services if not getattr(s, "_unnamed", False)},
        "routes": {r.name for r in config.routes},
        "upstreams": {u.name for u in config.upstreams},
        "consumers": {c.username for c in config.consumers},
        "certificates": set(),
    }
    known = {section: keys | {e.id for e in getattr(config, section)} for section, keys in names.items()}
    for entity, field, value, section in given:
        if value not in known[section] and (section, value) not in failed:
            kind = section[:-1]
            errors.append(f"{path_of(entity)}.{field}: no {kind} with {_REFERENCED_BY[section]} {value!r}; remove "
                          f"the field (nested, it belongs to the {kind} it is under) or name one that exists")


def _check(config: Config, errors: list[str], failed: set[tuple[str, str]]) -> None:
    """Cross-field and cross-entity rules; each message names every field involved. References (a name, else an id:
    _references) are resolved to the entity's name or label (or, for an unnamed route, to the route itself)."""
    _check_listen(config.gateway, errors)
    _check_bus(config.gateway.bus, errors)
    _check_admin(config.gateway, errors)
    _check_run_files(config.gateway, errors)
    _check_client_address(config.gateway, errors)
    _check_access_log(config.gateway.access_log, errors)
    _check_ids(config, errors)
    consumer_errors: list[str] = []
    check_consumers(config, consumer_errors)
    gone = {ref for section, ref in failed if section == "consumers"}
    errors += [e for e in consumer_errors if not any(e.endswith(f"username {ref!r}") for ref in gone)]
    services = _references([s for s in config.services if not getattr(s, "_unnamed", False)], config.services,
                           "services", errors)
    routes = _references([r for r in config.routes if r.name], config.routes, "routes", errors)
    upstreams = _references(config.upstreams, config.upstreams, "upstreams", errors)
    certificates = {c.id: c for c in config.certificates if c.id}  # Kong's certificates have no name
    ca_certificates = {c.id for c in config.ca_certificates if c.id}
    for svc in config.services:
        _check_service(svc, errors)
        _check_service_tls(svc, certificates, ca_certificates, errors)
    _check_snis(config, certificates, errors)
    for route in config.routes:
        _check_route(route, services, errors, failed)
    for up in config.upstreams:
        _check_upstream(up, errors)
        client = ref_id(up.client_certificate)
        if client is not None and client not in certificates:
            errors.append(f"{path_of(up)}.client_certificate: no certificate with id {client!r}")
    seen_targets: dict[tuple[str | None, str, int | None], Target] = {}  # Kong: unique per upstream and target
    for target in config.targets:
        where = path_of(target)
        upstream = getattr(target, "_upstream", None) or upstreams.get(target.upstream or "")
        if upstream is not None:
            target.upstream = upstream.name
        elif target.upstream is None:  # Kong: required (kong/db/schema/entities/targets.lua:31)
            errors.append(f"{where}.upstream: required field is missing; name the upstream it belongs to (its name "
                          "or id), or list the target under that upstream's targets")
        elif ("upstreams", target.upstream) not in failed:
            errors.append(f"{where}.upstream: no upstream with id or name {target.upstream!r}")
        _check_tags(target.tags, where, errors)
        if problem := target_problem(target.target):
            errors.append(f"{where}.target: {problem}")
            continue
        address = parse_host_port(target.target, DEFAULT_TARGET_PORT, lowest=0)
        if address is None:
            errors.append(f'{where}.target: expected "host", "host:port", "[IPv6]:port" or an IP address, '
                          f'got {show(target.target)}')
            continue
        same = (target.upstream, address[0].lower(), address[1])
        if same in seen_targets:
            errors.append(f"{where}.target: {target.target!r} is already a target of upstream {target.upstream!r} "
                          f"({path_of(seen_targets[same])}); give it one entry with the weight it should have")
        else:
            seen_targets[same] = target
    for plugin in config.plugins:
        where = path_of(plugin)
        if plugin.service is not None:
            service = getattr(plugin, "_service", None) or services.get(plugin.service)
            if service is not None:
                plugin.service = service.name
            elif ("services", plugin.service) not in failed:
                errors.append(f"{where}.service: no service with id or name {plugin.service!r}")
        if plugin.route is not None and getattr(plugin, "_route", None) is None:
            named = routes.get(plugin.route)
            if named is None:
                if ("routes", plugin.route) not in failed:
                    errors.append(f"{where}.route: no route with id or name {plugin.route!r}")
            elif named.name is None:
                plugin._route = named  # type: ignore[attr-defined]  # an unnamed route named by its id: scoped to it
            else:
                plugin.route = named.name
        _check_instance_name(plugin, errors)
    for section in ("plugins", *CREDENTIALS, "certificates", "snis", "ca_certificates"):  # typedefs.tags, as above
        for entity in getattr(config, section):
            _check_tags(entity.tags, path_of(entity), errors)


def _check_instance_name(plugin: Plugin, errors: list[str]) -> None:
    """Kong's plugins.instance_name is a typedefs.utf8_name."""
    if plugin.instance_name is not None and (problem := utf8_name_problem(plugin.instance_name)):
        errors.append(f"{path_of(plugin)}.instance_name: {problem}")


def _check_ids(config: Config, errors: list[str]) -> None:
    """Kong's ids are UUIDs, unique per kind of entity; so are plugins' instance names."""
    for section in ("services", "routes", "upstreams", "targets", "plugins", "consumers", *CREDENTIALS,
                    "certificates", "snis", "ca_certificates"):
        seen: dict[str, Any] = {}
        for obj in getattr(config, section):
            if obj.id is None:
                continue
            if not _UUID.fullmatch(obj.id):
                errors.append(f'{path_of(obj)}.id: expected a UUID (e.g. "{_EXAMPLE_ID}"), got {show(obj.id)}')
                continue
            if obj.id in seen and not (derived_id(obj) and derived_id(seen[obj.id])):
                errors.append(f"{path_of(obj)}.id: {obj.id!r} is already used by {path_of(seen[obj.id])}")
            seen.setdefault(obj.id, obj)
    named: dict[str, Any] = {}  # Kong's plugins.instance_name is unique too
    for plugin in config.plugins:
        name = plugin.instance_name
        if name is not None and name in named:
            errors.append(f"{path_of(plugin)}.instance_name: {name!r} is already used by {path_of(named[name])}")
        elif name is not None:
            named[name] = plugin


def _unique(items: list[Any], section: str, errors: list[str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for item in items:
        if item.name in seen:
            errors.append(f"{path_of(item)}.name: {item.name!r} is already used by {path_of(seen[item.name])}")
        seen.setdefault(item.name, item)
    return seen


def _check_listen(gw: GatewaySettings, errors: list[str]) -> None:
    """gateway.listen and status_listen as nginx would take Kong's proxy_listen and status_listen (and what the
    gateway's one socket per address can do), and the default certificate and protocols of the ` ssl` ones."""
    proxies = _check_proxy_listen(gw.listen, errors)
    listens = [gw.listen] if isinstance(gw.listen, str) else gw.listen
    tls = any("ssl" in listen_flags(entry)[1] for entry in listens)
    # kong/conf_loader/parse.lua:314-371 checks the pair only `if ssl_enabled`: without a TLS listener it serves nothing
    certs, keys = (ssl_cert_values(gw.ssl_cert), ssl_cert_values(gw.ssl_cert_key)) if tls else ([], [])
    if certs and not keys:  # kong/conf_loader/parse.lua's messages
        errors.append("gateway.ssl_cert_key must be specified")
    elif keys and not certs:
        errors.append("gateway.ssl_cert must be specified")
    elif len(certs) != len(keys):
        errors.append(f"gateway.ssl_cert was specified {len(certs)} times while gateway.ssl_cert_key was specified "
                      f"{len(keys)} times")
    # ssl_ciphers with another suite than custom: replaced by the suite's, as ssl_protocols is (parse.lua); custom
    # without it: nginx's default (GatewaySettings)
    protocols = gw.ssl_protocols.split()  # Kong ignores it unless the suite is custom (each suite has its own)
    if gw.ssl_cipher_suite == "custom" and (not protocols or any(p not in VERSIONS for p in protocols)):
        errors.append(f'gateway.ssl_protocols: expected some of {", ".join(VERSIONS)} (e.g. "TLSv1.2 TLSv1.3"), '
                      f'got {show(gw.ssl_protocols)}')
    if gw.status_listen is not None:  # kong.conf's off and its array form are read by kong_conf.kong_value
        _check_status_listen(gw.status_listen, proxies, errors)


_Listener = tuple[str, str, str, int]  # (its field, its "host:port", its host, its port)


def _check_proxy_listen(listen: str | list[str], errors: list[str]) -> list[_Listener]:
    """Each entry's shape and flags; an address listed twice is refused as nginx refuses "a duplicate listen"
    (src/http/ngx_http.c:1467-1470), and one a wildcard entry of its port also covers because the gateway binds a
    socket per entry (nginx folds them into the wildcard's one), or whose IPv4 clients an IPv6 entry with
    ipv6only=off takes too (nginx cannot bind both either). The entries that can be bound are returned (with an IPv4
    one for each IPv6 entry that takes IPv4 clients too)."""
    listens = [listen] if isinstance(listen, str) else listen
    if not listens:  # kong/conf_loader/listeners.lua:97-99
        errors.append('gateway.listen: expected at least one "host:port" (e.g. ["0.0.0.0:8000", "0.0.0.0:8443 ssl"]), '
                      "got []: the gateway proxies on at least one address")
    proxies: list[_Listener] = []
    for i, entry in enumerate(listens):
        where = "gateway.listen" if isinstance(listen, str) else f"gateway.listen[{i}]"
        addr, flags = listen_flags(entry)
        options, refused = listen_options(flags, addr.startswith("["))
        if addr == "off":
            errors.append(f"{where}: kong.conf's off (no proxy listener) is not supported: the gateway proxies on "
                          'at least one "host:port"')
        elif (problem := _listen_problem(addr)) is not None:
            errors.append(f'{where}: expected "host:port" or "host:port ssl" (e.g. "127.0.0.1:8443 ssl"), got '
                          f'{show(entry)}{problem}')
        else:
            this: _Listener = (where, addr, *_bound_at(addr))
            also = [] if options.ipv6only else _also_ipv4(this)
            overlap = next(((other, why, mine) for other in proxies for mine in (this, *also)
                            if (why := _overlap(other, mine)) is not None), None)
            if overlap is None:
                proxies += [this, *also]
            elif _dual_stack(overlap[0]) or _dual_stack(overlap[2]):
                dual = overlap[0] if _dual_stack(overlap[0]) else this
                errors.append(f"{where}: {show(addr)} overlaps {overlap[0][0]} {show(overlap[0][1])}: "
                              f"{show(dual[1])} with ipv6only=off takes the IPv4 clients of port {dual[3]} too, and "
                              'nginx cannot bind both either ("Address already in use"); remove one, or drop '
                              "ipv6only=off")
            elif overlap[1] == "":
                errors.append(f"{where}: {show(addr)} is the address of {overlap[0][0]} {show(overlap[0][1])} again, "
                              'which nginx refuses ("a duplicate listen"); list each address once')
            else:
                errors.append(f"{where}: {show(addr)} overlaps {overlap[0][0]} {show(overlap[0][1])} ({overlap[1]}): "
                              "the gateway binds a socket per entry and cannot bind both (nginx folds them into one "
                              "socket); remove one, or give it another port")
        errors += [_listen_option_error(where, flag) for flag in refused]
    return proxies


def _listen_option_error(where: str, flag: str, status: bool = False) -> str:
    """The refusal of a listen option: nginx's message for a bad value of one taken (src/http/
    ngx_http_core_module.c:4059, 4139, 4296), else that the gateway does not take it, naming those it does."""
    if flag.startswith("backlog="):
        return (f"{where}: invalid backlog {show(flag)}: give a number from 1 to 2147483647 (e.g. backlog=511; the "
                "kernel caps it at net.core.somaxconn)")
    if status:
        return (f'{where}: the listen option {show(flag)} is not supported (the status server takes one "host:port", '
                "plain HTTP, with reuseport, backlog=N and proxy_protocol)")
    if flag.startswith("so_keepalive="):
        return (f"{where}: invalid so_keepalive value {show(flag[13:])}: give on, off or [keepidle]:[keepintvl]:"
                "[keepcnt] (both colons, as Kong's listeners.lua reads it; times as nginx's 30m or 75s, not all 0: "
                "e.g. so_keepalive=30m::10)")
    if flag.startswith("ipv6only="):
        return f"{where}: invalid ipv6only flags {show(flag)}: give ipv6only=on or ipv6only=off"
    if flag == "http2":
        return (f'{where}: the listen option "http2" is not supported: HTTP/2 is not built (this listener would '
                "serve HTTP/1.1 only); remove the word (Kong's default proxy_listen has it: write "
                '"0.0.0.0:8443 ssl reuseport backlog=16384" for its "0.0.0.0:8443 http2 ssl reuseport '
                'backlog=16384")')
    return (f"{where}: the listen option {show(flag)} is not supported (ssl, proxy_protocol, reuseport, backlog=N, "
            "deferred, bind, ipv6only=on|off and so_keepalive=on|off|[keepidle]:[keepintvl]:[keepcnt] are)")


def _also_ipv4(listener: _Listener) -> list[_Listener]:
    """The IPv4 listener an IPv6 one with ipv6only=off is too: `::` every IPv4 address of its port, a v4-mapped
    address (::ffff:a.b.c.d) its IPv4 one; none for another IPv6 address."""
    where, addr, host, port = listener
    if bound_ip(host) == "::":
        return [(where, addr, "0.0.0.0", port)]
    mapped = ipaddress.IPv6Address(bound_ip(host)).ipv4_mapped
    return [] if mapped is None else [(where, addr, str(mapped), port)]


def _dual_stack(listener: _Listener) -> bool:
    """Is it the IPv4 side of an IPv6 entry with ipv6only=off (_also_ipv4)?"""
    return listener[1].startswith("[") and ":" not in listener[2]


def check_kept_status_listen(gw: GatewaySettings) -> list[str]:
    """The refusal of a status_listen on an address of gateway.listen, for a reloaded config whose status_listen the
    root has set back to the running one (gateway.node.start_only.keep): the load checked the file's own."""
    errors: list[str] = []
    if gw.status_listen is not None:
        _check_status_listen(gw.status_listen, _check_proxy_listen(gw.listen, []), errors, kept=True)
    return errors


def _check_status_listen(status_listen: str, proxies: list[_Listener], errors: list[str], kept: bool = False) -> None:
    """One plain-HTTP address with nginx's reuseport, backlog=N and proxy_protocol, on no address of the proxy's:
    nginx would share one socket between Kong's proxy and status servers and choose the server by Host; the gateway's
    status server has its own socket, and the kernel would hand it proxy clients. `kept`: status_listen is the
    running one, which a reload keeps."""
    addr, flags = listen_flags(status_listen)
    if "," in status_listen:
        errors.append(f'gateway.status_listen: one address only (the status server takes one "host:port"), got '
                      f'{show(status_listen)}')
        return
    if (problem := _listen_problem(addr)) is not None:
        errors.append(f'gateway.status_listen: expected "host:port" (or off), got {show(status_listen)}{problem}')
        return
    errors += [_listen_option_error("gateway.status_listen", flag, status=True) for flag in status_options(flags)[2]]
    status: _Listener = ("gateway.status_listen", addr, *_bound_at(addr))
    for proxy in proxies:
        if (why := _overlap(proxy, status)) is not None:
            clash = (f"is the proxy's address ({proxy[0]} {show(proxy[1])})" if not why else
                     f"overlaps the proxy's {proxy[0]} {show(proxy[1])} ({why})")
            running, remedy = ((" (the running one: a reload keeps status_listen until the next start)",
                                f"remove it from {proxy[0]}, or stop and start the gateway to move the status server")
                               if kept else ("", "give gateway.status_listen a port of its own"))
            errors.append(f"gateway.status_listen: {show(addr)}{running} {clash}: nginx would share one socket and "
                          "give Kong's status server only the requests for Host: kong_status, but the gateway's status "
                          f"server has its own socket, and the kernel would hand it proxy clients; {remedy}")
            return


_WILDCARDS = {4: "0.0.0.0", 6: "::"}


def _bound_at(addr: str) -> tuple[str, int]:
    """(host, port) of a listen address _listen_problem took."""
    at = parse_host_port(addr, None)
    assert at is not None and at[1] is not None
    return at[0], at[1]


def _overlap(first: _Listener, second: _Listener) -> str | None:
    """None when the two listen addresses are distinct sockets; "" when they are one address; else why one takes the
    other's connections: the wildcard address of the port and family (an IPv6 listener is IPv6-only, and a name is
    bound as IPv4, as gateway.http.net makes them)."""
    (_, _, host_a, port), (_, _, host_b, port_b) = first, second
    family = 6 if ":" in host_a else 4
    if port != port_b or family != (6 if ":" in host_b else 4):
        return None
    ip_a, ip_b = bound_ip(host_a), bound_ip(host_b)
    if ip_a == ip_b:
        return ""
    if _WILDCARDS[family] not in (ip_a, ip_b):
        return None
    return f'"{_shown(_WILDCARDS[family], port)}" listens on every IPv{family} address of port {port}'


def bound_ip(host: str) -> str:
    """The address a listening socket binds for `host`, as text: a name's first IPv4 address, as socket.bind
    resolves it (check-config looks it up only when another listener has its port; the root's listener slots are
    kept by it); a name that does not resolve stands for itself (the start fails, naming it)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    except (OSError, UnicodeError, IndexError):
        return host.lower()


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_bus(bus: str, errors: list[str]) -> None:
    """gateway.bus as the root binds it and every process connects to it (its PUB endpoint the next port, or the
    path beside it: gateway.bus.protocol.pub_endpoint), so that check-config refuses what start could not use."""
    if bus.startswith("ipc://") and len(bus) > len("ipc://"):
        return
    if bus.startswith("tcp://"):
        host, colon, port = bus[len("tcp://"):].rpartition(":")
        if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65534:
            errors.append(f"gateway.bus: expected tcp://HOST:PORT with a port from 1 to 65534 (the next one is the "
                          f"bus's PUB socket), got {show(bus)}")
        elif host in ("*", "0.0.0.0", "[::]", "::"):
            errors.append(f"gateway.bus: {show(bus)} can be bound but not connected to: name the address the "
                          f"gateway's processes connect to (e.g. tcp://127.0.0.1:{port})")
        return
    errors.append(f"gateway.bus: expected ipc://PATH or tcp://HOST:PORT (e.g. ipc://run/bus.sock), got {show(bus)}")


def _check_admin(gw: GatewaySettings, errors: list[str]) -> None:
    """gateway.admin and admin_curve as the root binds them, so that check-config refuses what start would: an ipc://
    path (a socket only the gateway's user may use), or tcp://HOST:PORT with admin_curve's CURVE keys (their files
    are checked with the other files a start uses: gateway.node.control.path_problems)."""
    admin, curve = gw.admin, gw.admin_curve
    if admin.startswith("ipc://") and len(admin) > len("ipc://"):
        if curve is not None:
            errors.append(f"gateway.admin_curve: CURVE keys are for a tcp:// admin endpoint, and gateway.admin is "
                          f"{show(admin)} (a socket only the gateway's user may use): remove admin_curve, or make "
                          "gateway.admin tcp://HOST:PORT")
        return
    if not admin.startswith("tcp://"):
        errors.append(f"gateway.admin: expected ipc://PATH (e.g. ipc://run/admin.sock), or tcp://HOST:PORT with "
                      f"gateway.admin_curve, got {show(admin)}")
        return
    host, colon, port = admin[len("tcp://"):].rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        errors.append(f"gateway.admin: expected tcp://HOST:PORT with a port from 1 to 65535, got {show(admin)}")
    elif host == "*":
        errors.append(f"gateway.admin: {show(admin)} can be bound but not connected to (the CLI's --config connects "
                      f"to it): name an address (tcp://0.0.0.0:{port} for every IPv4 one)")
    if curve is None:
        errors.append(f"gateway.admin: {show(admin)} is a tcp endpoint, which needs CURVE keys to keep others off the "
                      "admin channel: set gateway.admin_curve (secret_key_file, authorized_keys; `gateway curve-keys "
                      "DIR NAME` writes key files), or use an ipc:// path (e.g. ipc://run/admin.sock)")
        return
    import zmq  # (only a config with CURVE keys asks)

    if not zmq.has("curve"):
        errors.append(f"gateway.admin_curve: this pyzmq's libzmq {zmq.zmq_version()} is built without CURVE "
                      "(zmq.has('curve') is false): install pyzmq's wheel, whose libzmq has it, or use an ipc:// "
                      "admin endpoint")


def _check_run_files(gw: GatewaySettings, errors: list[str]) -> None:
    """gateway.pid_file, log_file, access_log, mcp.audit_log, mcp.session_key_file and the admin and bus sockets each
    a file of its own, none a file the gateway keeps in its run directory (the pid file's): one written over another
    is lost (a pid file renamed over the run directory's lock lets a second gateway in; a log file that is the pid
    file makes `gateway stop` find no pid; a key file that is the log file is a key that changes as it grows)."""
    from gateway.bus.protocol import pub_endpoint  # (gateway.bus.protocol imports gateway.config)
    from gateway.mcp.keys import default_key_file

    files: list[tuple[str, str, str]] = []  # (setting, what of it, absolute path)
    for key, example in (("pid_file", "run/gateway.pid"), ("log_file", "run/gateway.log")):
        value: str = getattr(gw, key)
        if os.path.basename(value) in ("", ".", ".."):
            errors.append(f"gateway.{key}: expected the path of a file (e.g. {example}), got {show(value)}")
        else:
            files.append((f"gateway.{key}", "", os.path.abspath(value)))
    run_dir = os.path.dirname(os.path.abspath(gw.pid_file))
    if gw.access_log is not False:  # (true: access.log in the run directory)
        files.append(("gateway.access_log", "", os.path.join(run_dir, "access.log") if gw.access_log is True
                      else os.path.abspath(gw.access_log)))
    audit = gw.mcp.audit_log
    if audit not in ("-", "stdout"):
        files.append(("gateway.mcp.audit_log", "", os.path.abspath(audit) if audit else os.path.join(run_dir,
                                                                                                     "mcp-audit.log")))
    key_file = gw.mcp.session_key_file  # (read only without session_keys; its default is a run directory file)
    if key_file and not gw.mcp.session_keys and os.path.abspath(key_file) != default_key_file(gw.pid_file):
        files.append(("gateway.mcp.session_key_file", "", os.path.abspath(key_file)))
    sockets = [("gateway.admin", "", gw.admin), ("gateway.bus", "", gw.bus)]
    if gw.bus.startswith("ipc://") and len(gw.bus) > len("ipc://"):
        sockets.append(("gateway.bus", "its PUB socket ", pub_endpoint(gw.bus)))
    files += [(key, what, absolute_endpoint(endpoint)[len("ipc://"):]) for key, what, endpoint in sockets
              if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://")]
    named: dict[str, str] = {}  # path -> the setting that names it first
    for key, what, path in files:
        directory, name = os.path.split(path)
        owned = run_dir_file(name) if directory == run_dir else None
        if path in named:
            errors.append(f"{key}: {what}{path} is also the path of {named[path]}; give each its own path")
        elif owned is not None:
            errors.append(f"{key}: {what}{path} is the run directory's {owned}, which the gateway writes (the run "
                          "directory is gateway.pid_file's); choose another name")
        elif directory == os.path.join(run_dir, METRICS_DIR):
            errors.append(f"{key}: {what}{path} is in the run directory's metrics directory, which each start "
                          "empties; choose another directory")
        named.setdefault(path, key)


def _listen_problem(addr: str) -> str | None:
    """None for a listen address a socket can bind ("host:port", "[v6]:port"; `*` was made 0.0.0.0 at decoding),
    else what to append to the message refusing it ("" when the shape is wrong), so that check-config refuses what
    start could not bind for its syntax."""
    if repeated := repeated_flags(addr):
        return (f" ({', '.join(map(show, repeated))} right after the same flag: Kong's listeners.lua takes one of "
                "two flags in a row (its pattern's spaces overlap) and leaves the other in the address, which nginx "
                "cannot read; write the flag once)")
    hp = parse_host_port(addr, None)
    if hp is None or hp[1] is None:
        return ""
    problem = listen_host_problem(hp[0])
    return f" ({problem})" if problem else None


def _check_client_address(gw: GatewaySettings, errors: list[str]) -> None:
    for i, entry in enumerate(gw.trusted_ips):
        if entry == "unix:":  # kong.conf's: trust the peers of UNIX-domain listeners; the gateway has none
            continue
        try:
            parse_network(entry)
        except ValueError:
            errors.append(f'gateway.trusted_ips[{i}]: expected an IP address or a CIDR (e.g. "10.0.0.0/8", "::1"), '
                          f'got {show(entry)}')
    gw.trusted_ips = [entry for entry in gw.trusted_ips if entry != "unix:"]
    if gw.real_ip_header.lower() == "proxy_protocol" and gw.real_ip_header != "proxy_protocol":
        # nginx's realip takes proxy_protocol in lower case only (strcmp): any other spelling would name a header,
        # one with an underscore that nginx ignores (underscores_in_headers off), so it would never apply
        errors.append(f"gateway.real_ip_header: write proxy_protocol in lower case, as nginx's realip reads it, "
                      f"got {show(gw.real_ip_header)}")
    elif not _TOKEN.fullmatch(gw.real_ip_header):
        errors.append(f'gateway.real_ip_header: expected a header name (e.g. "X-Forwarded-For"), '
                      f'got {show(gw.real_ip_header)}')


def _check_access_log(value: bool | str, errors: list[str]) -> None:
    """A file nginx could not open at start fails the start (src/core/ngx_cycle.c:383-397; Kong's prefix_handler
    creates it first): refused here, not found at run time with every line dropped. nginx's parameters after the
    path would be taken as part of the file's name. (true: the pid file's directory, checked at start.)"""
    if not isinstance(value, str):
        return
    where = "gateway.access_log"
    words = value.split()
    if not words:
        errors.append(f"{where}: an empty path; give a file path, true (access.log beside pid_file) or off")
        return
    if len(words) > 1:
        errors.append(f"{where}: expected a file path alone (or off), got {show(value)}: nginx's access_log "
                      "parameters (a format name, buffer=, flush=, gzip, if=) are not taken, the gateway writes its "
                      "own JSON lines, a batch per scheduler round; remove what follows the path")
        return
    if words[0] != value:
        errors.append(f"{where}: {show(value)} has spaces around the path; remove them")
        return
    if value.startswith("syslog:"):  # nginx's syslog target (ngx_http_log_module.c), not a file name
        errors.append(f"{where}: {show(value)} is nginx's syslog target, which the gateway does not build (it would "
                      "be a file of that name); give a file path, or send the entries to syslog with the syslog "
                      "plugin")
        return
    path = os.path.abspath(value)
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        errors.append(f"{where}: {path} is a directory; name a file in it (e.g. {os.path.join(path, 'access.log')})")
    elif not os.path.isdir(directory):
        errors.append(f"{where}: the directory {directory} does not exist (the gateway creates the file, not its "
                      "directory); create it, or choose another path")
    elif not os.access(path if os.path.exists(path) else directory, os.W_OK):
        what = path if os.path.exists(path) else f"a file in {directory}"
        errors.append(f"{where}: this user cannot write {what} (permission denied); give it write access, or choose "
                      "another path")


def _check_service(svc: Service, errors: list[str]) -> None:
    """Kong's services schema: a utf8_name, Kong's tags, and either url or host (a Kong host) with port and path."""
    where = path_of(svc)
    if svc.name is not None and not getattr(svc, "_unnamed", False) and (problem := utf8_name_problem(svc.name)):
        errors.append(f"{where}.name: {problem}")
    _check_tags(svc.tags, where, errors)
    if svc.url is not None:
        svc.host = None  # Kong's shorthand: the url's host, port and path replace any given besides it
        _check_service_url(svc, where, errors)
        return
    if svc.host is None:
        errors.append(f"{where}: set url, or host (with port and path)")
        return
    if problem := kong_host_problem(svc.host):
        errors.append(f"{where}.host: {problem}")
    elif svc.host.startswith("["):
        svc.host = svc.host[1:-1]  # Kong's host takes "[ipv6]"; the gateway connects to the address itself
    if svc.path is not None and (problem := path_problem(svc.path)):
        errors.append(f"{where}.path: {problem}")


def _check_service_url(svc: Service, where: str, errors: list[str]) -> None:
    """Kong's url shorthand (socket.url's parse, read_service_url): protocol, host, port and path from the url, each
    checked as when given alone, replacing those given besides it; the url's userinfo, ;params, ?query and #fragment
    are dropped, as Kong drops them. The url is written back as read, for what reads it later with urlsplit."""
    url: str = svc.url  # type: ignore[assignment]
    kong = read_service_url(url)
    if url.startswith(_URL_LEADING) or kong and _URL_BREAK.search((kong.host or "") + (kong.path or "")):
        errors.append(f"{where}.url: {show(url)} holds a tab or line break, or starts with a space or control "
                      "character: Kong reads the url as written and refuses it; remove them")
        return
    if kong is None or not kong.absolute:
        errors.append(f'{where}.url: expected an absolute URL (e.g. "http://example.com:8080/path"), got {show(url)}')
        return
    if kong.protocol not in ("http", "https"):
        errors.append(_service_url_protocol_problem(kong.protocol, where, url))
        return
    svc.protocol = kong.protocol  # type: ignore[assignment]  # http or https
    svc.port = svc.path = None
    failed = len(errors)
    if kong.host is None:
        errors.append(f'{where}.url: no host in {show(url)}')
    elif problem := kong_host_problem(kong.host):
        errors.append(f"{where}.url: invalid host in {show(url)}: {problem}{_url_host_hint(kong.host)}")
    if problem := kong.port_problem():
        errors.append(f"{where}.url: invalid port in {show(url)}: {problem}; give a port from 0 to 65535 after the "
                      "host's colon, or no colon")
    if kong.path and (problem := path_problem(kong.path)):
        errors.append(f"{where}.url: invalid path in {show(url)}: {problem}")
    if len(errors) == failed:
        svc.url = kong.url()


def _service_url_protocol_problem(protocol: str, where: str, url: str) -> str:
    """Why a url's scheme is refused: typedefs.protocol takes it as written (lower case), the gateway http(s)."""
    if protocol != protocol.lower():
        return f'{where}.url: expected one of "http", "https", got {show(protocol)}'
    why = f"; {GRPC_WHY}" if protocol in ("grpc", "grpcs") else ""
    return (f'{where}.url: {protocol}:// is not supported by the gateway (http:// and https:// upstreams only{why}), '
            f'got {show(url)}')


def _url_host_hint(host: str) -> str:
    """What to write instead, where socket.url's parse reads a host other than urlsplit's (url.lua:143, 161)."""
    if "@" in host:
        return " (Kong's url ends the user info at its first @: write a @ within it as %40)"
    if "?" in host:
        return " (Kong's url reads the host up to the first /: write the / before the ?)"
    return ""


def _check_tags(tags: list[str], where: str, errors: list[str]) -> None:
    for i, tag in enumerate(tags):
        if problem := tag_problem(tag):
            errors.append(f"{where}.tags[{i}]: {problem}")


def _check_service_tls(svc: Service, certificates: dict[str, Any], ca_certificates: set[str],
                       errors: list[str]) -> None:
    """Kong's rules: the TLS fields need protocol https (a url's as Kong's shorthand reads it: `//h:443` is https);
    what they name must exist."""
    where = path_of(svc)
    kong = read_service_url(svc.url) if svc.url is not None else None
    https = (svc.protocol if kong is None else kong.protocol).lower() == "https"  # ("HTTPS": the url's own error)
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
        elif cert not in certificates and getattr(sni, "_certificate", None) is None:
            errors.append(f"{where}.certificate: no certificate with id {cert!r}")
        name = sni.name  # Kong's snis.name is unique as a string: `A.test` is not `a.test`
        # typedefs.wildcard_host, as Kong's snis entity: `*foo.test` loads too, though Kong's certificate lookup
        # (and gateway.http.tls_contexts) selects only `*` as a whole first or last label, or `*` alone
        if name != "*" and (problem := wildcard_host_problem(name)):
            errors.append(f"{where}.name: {problem}, got {show(sni.name)}")
        elif name in seen:
            errors.append(f"{where}.name: {sni.name!r} is already used by {seen[name]}")
        seen.setdefault(name, where)


def _check_route(route: Route, services: dict[str, Service], errors: list[str],
                 failed: set[tuple[str, str]]) -> None:
    """Kong's routes schema (kong/db/schema/entities/routes.lua, routes_subschemas.lua and the typedefs they use)."""
    where = path_of(route)
    if route.service is None:
        pass  # as Kong: answered 503 "no Service found with those values" unless a plugin answers
    elif getattr(route, "_service", None) is not None:
        pass  # nested: its parent's
    elif route.service in services:
        route.service = services[route.service].name
    elif ("services", route.service) not in failed:
        errors.append(f"{where}.service: no service with id or name {route.service!r}")
    if route.name is not None and (problem := utf8_name_problem(route.name)):
        errors.append(f"{where}.name: {problem}")
    errors += [f"{where}.tags[{i}]: {problem}" for i, tag in enumerate(route.tags) if (problem := tag_problem(tag))]
    if not route.protocols:
        errors.append(f"{where}.protocols: expected at least one of http, https")
    if not (route.paths or route.methods or route.hosts or route.headers or route.query or route.snis):
        errors.append(f"{where}: set at least one of paths, methods, hosts, headers, query, snis")
    if route.snis and "https" not in route.protocols:
        errors.append(f"{where}.snis: can only be set when protocols includes https (Kong's rule: a plain HTTP "
                      "request has no SNI)")
    for i, sni in enumerate(route.snis or ()):
        if problem := wildcard_host_problem(sni.removesuffix(".") if sni != "." else sni):
            errors.append(f"{where}.snis[{i}]: {problem}, got {show(sni)}")
    for i, p in enumerate(route.paths):
        if (problem := router_path_problem(p)) is not None:
            errors.append(f"{where}.paths[{i}]: {problem}")
    for i, h in enumerate(route.hosts):
        if (problem := hosts_problem(h)) is not None:
            errors.append(f"{where}.hosts[{i}]: {problem}")
    for i, m in enumerate(route.methods):
        if not _METHOD.fullmatch(m):
            errors.append(f'{where}.methods[{i}]: expected an upper-case HTTP method, got {show(m)}')
    if route.mcp is False and (route.mcp_methods or route.mcp_tools):
        field = "mcp_methods" if route.mcp_methods else "mcp_tools"
        errors.append(f"{where}.mcp is false but {where}.{field} is set: routing on MCP methods or tools needs the "
                      "MCP layer (remove mcp: false)")
    for name, values in route.headers.items():
        if name.lower() == "host":
            errors.append(f"{where}.headers.{key_part(name)}: match hosts with the route's hosts field")
        elif problem := header_name_problem(name):
            errors.append(f"{where}.headers: {problem}")
        if not values:
            errors.append(f"{where}.headers.{key_part(name)}: expected at least one value")
        for i, value in enumerate(values):
            if value == "":
                errors.append(f"{where}.headers.{key_part(name)}[{i}]: must not be empty (a header's value to match)")
            elif value.startswith("~*") and (problem := regex_problem(value[2:], header=True)):
                errors.append(f"{where}.headers.{key_part(name)}[{i}]: invalid regex {show(value[2:])}: {problem}")


def _check_upstream(up: Upstream, errors: list[str]) -> None:
    """Kong's upstreams schema: its name, host_header and the fields of hash_on and hash_fallback."""
    where = path_of(up)
    if problem := upstream_name_problem(up.name):
        errors.append(f"{where}.name: {problem}")
    _check_tags(up.tags, where, errors)
    if up.host_header is not None:
        address = kong_address(up.host_header)
        if isinstance(address, str):
            errors.append(f"{where}.host_header: {address}")
        elif address[2] is not None:
            errors.append(f"{where}.host_header: a port is not supported here (Kong takes one, then adds the "
                          f"target's port after it unless that is the scheme's own, sending a Host such as "
                          f"\"name:8080:9000\"); give the host name alone, got {show(up.host_header)}")
    for field in ("hash_on_header", "hash_fallback_header"):
        value = getattr(up, field)
        if value and (problem := header_name_problem(value)):
            errors.append(f"{where}.{field}: {problem}")
    if up.hash_on_cookie and not _TOKEN.fullmatch(up.hash_on_cookie):
        errors.append(f"{where}.hash_on_cookie: contains one or more invalid characters. ASCII control characters "
                      "(0-31;127), space, tab and the characters ()<>@,;:\\\"/?={}[] are not allowed.")
    if problem := path_problem(up.hash_on_cookie_path):
        errors.append(f"{where}.hash_on_cookie_path: {problem}")
    for field in ("hash_on_header", "hash_fallback_header", "hash_on_cookie", "hash_on_query_arg",
                  "hash_fallback_query_arg", "hash_on_uri_capture", "hash_fallback_uri_capture"):
        if getattr(up, field) == "":
            errors.append(f"{where}.{field}: length must be at least 1")
    for field, needs in (("hash_on", "hash_on_header"), ("hash_fallback", "hash_fallback_header")):
        value = getattr(up, field)
        if value == "header" and getattr(up, needs) is None:
            errors.append(f"{where}.{field} is header: set {where}.{needs}")
    for field in ("hash_on", "hash_fallback"):
        if getattr(up, field) == "cookie" and up.hash_on_cookie is None:
            errors.append(f"{where}.{field} is cookie: set {where}.hash_on_cookie")
        if getattr(up, field) == "uri_capture" and getattr(up, f"{field}_uri_capture") is None:
            errors.append(f"{where}.{field} is uri_capture: set {where}.{field}_uri_capture")
    for kind in ("header", "query_arg", "uri_capture"):  # Kong's distinct checks
        first = getattr(up, f"hash_on_{kind}")
        if first and first == getattr(up, f"hash_fallback_{kind}"):
            errors.append(f"{where}.hash_fallback_{kind}: must differ from {where}.hash_on_{kind}")
    if up.hash_on == "query_arg" and up.hash_on_query_arg is None:
        errors.append(f"{where}.hash_on is query_arg: set {where}.hash_on_query_arg")
    if up.hash_fallback == "query_arg" and up.hash_fallback_query_arg is None:
        errors.append(f"{where}.hash_fallback is query_arg: set {where}.hash_fallback_query_arg")
    if up.hash_on == "none" and up.hash_fallback != "none":
        errors.append(f"{where}.hash_fallback: needs {where}.hash_on to be set (it is none)")
    if up.hash_on in ("cookie",) and up.hash_fallback != "none":
        errors.append(f"{where}.hash_fallback: cannot be used with {where}.hash_on: cookie")
    if up.hash_on in ("consumer", "ip", "path") and up.hash_fallback == up.hash_on:
        errors.append(f"{where}.hash_fallback: must differ from {where}.hash_on (both {up.hash_on})")


def parse_host_port(text: str, default_port: int | None, lowest: int = 1) -> tuple[str, int | None] | None:
    """'host:port', '[v6]:port' or a bare IPv6 address -> (host, port); None when malformed or the port is out of
    range: `lowest` to 65535 (nginx's listen takes 1 up, ngx_inet.c "invalid port"; a target 0 up, typedefs.port)."""
    text = text.strip()
    if text.count(":") > 1 and not text.startswith("["):
        try:
            return str(ipaddress.IPv6Address(text)), default_port  # Kong: a bare IPv6 target takes the default port
        except ValueError:
            return None
    m = _HOST_PORT.fullmatch(text)
    if not m:
        return None
    host = m.group("v6") or m.group("host")
    port = int(m.group("port")) if m.group("port") else default_port
    if port is not None and not lowest <= port < 65536:
        return None
    return host, port
