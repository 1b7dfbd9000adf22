"""Kong's vault references, `{vault://env/NAME}`, resolved from the environment as the file is loaded.

Kong OSS bundles one vault, `env` (kong/vaults/env): `{vault://env/my-secret}` is the environment variable
MY_SECRET (upper case, dashes as underscores, after the vault's `prefix`); `{vault://env/creds/password}` reads
CREDS as a JSON object and takes its "password" string; `?prefix=P_` overrides the prefix for one reference and
`#2` asks for the previous version (`<NAME>_PREVIOUS`). A `vaults` entity names a configured env vault:
`{prefix: my-env, name: env, config: {prefix: APP_}}` makes `{vault://my-env/token}` read APP_TOKEN. The env vault
named as such (`{vault://env/...}`) takes its prefix from kong.conf's vault_env_prefix, which the gateway reads from
the environment variable KONG_VAULT_ENV_PREFIX as Kong does (kong/pdk/vault.lua, get_vault_name_and_config_by_name).

References are resolved only in the fields Kong's schemas mark `referenceable` (REFERENCEABLE); anywhere else a
reference is the literal text, as in Kong. Where Kong logs a reference it cannot resolve and goes on with the
field unset, the file is refused here, naming the field, the reference and the variable: a secret that silently
becomes nothing (no Redis AUTH, no session secret) is a failure found later, at a request. Every process of the
gateway resolves its references itself, from the environment the gateway was started with (the config snapshots
it writes keep the references, never the secrets); `gateway check-config` resolves them from its own. A `gateway:`
setting (kong.conf's) may be a reference too, resolved as Kong's conf loader does, from the env vault only. Each
resolved secret is recorded (gateway.config.errors.hide), so that no message shows it: Kong checks the reference,
never the secret, so none of Kong's messages can show one.
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import unquote, unquote_plus

from gateway.config.errors import hide, inline, key_part, show
from gateway.config.service_url import fragment_and_query, lua_tonumber
from gateway.config.service_url import parse as parse_url
from gateway.config.typedefs import tag_problem
from gateway.kong_array import kong_array

# Kong's referenceable fields of the plugins the gateway builds: paths into `config`; "*" is every value of a
# mapping (header values). A deprecated shorthand (redis_password, endpoint) moves to a referenceable field in Kong
# before references are resolved, so it is one too.
_REDIS = (("redis", "username"), ("redis", "password"), ("redis_username",), ("redis_password",))
REFERENCEABLE: dict[str, tuple[tuple[str, ...], ...]] = {
    "datadog": (("host",),),
    "http-log": (("http_endpoint",), ("headers", "*")),
    "loggly": (("key",),),
    "opentelemetry": (("traces_endpoint",), ("logs_endpoint",), ("endpoint",), ("headers", "*")),
    "rate-limiting": _REDIS,
    "response-ratelimiting": _REDIS,
    "session": (("secret",),),
    "standard-webhooks": (("secret_v1",),),
}
CERTIFICATE_FIELDS = ("cert", "key", "cert_alt", "key_alt")  # kong/db/schema/entities/certificates.lua

BUNDLED = "env"  # the vaults Kong OSS bundles (kong.constants.BUNDLED_VAULTS)
_VAULT_PREFIX = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")  # the vaults entity's prefix (Kong's Lua pattern)
_ENV_PREFIX = re.compile(r"[A-Za-z_-][A-Za-z0-9_-]*")  # the env vault's config.prefix
_VAULT_FIELDS = {"id", "prefix", "name", "description", "config", "tags"}
# Kong's typedefs.uuid (kong/db/schema/init.lua:159, 338-342): the dashed form only, hex digits of either case
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_EXAMPLE_ID = "3f2a63d2-2b43-4a5b-9d1e-5c6b1f0e8a42"
_LUA_SPACE = " \t\n\v\f\r"  # lj_char_isspace
_LUA_INF_NAN = re.compile(r"[+-]?(?:inf(?:inity)?|nan)", re.IGNORECASE)  # lj_strscan.c's special values
_ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)
_MAX_ARGS = 100  # ngx.decode_args' default (NGX_HTTP_LUA_MAX_ARGS)
ENV_PREFIX_VARIABLE = "KONG_VAULT_ENV_PREFIX"  # kong.conf's vault_env_prefix, as Kong reads it from the environment


class VaultError(ValueError):
    """A reference that cannot be resolved; the message says why (without any secret)."""


class Unresolved(Exception):
    """A reference to a vault entry that was itself refused (already reported)."""


BROKEN = "\0broken"  # a vaults entry with errors: its prefix is known, its references are left as they are


def is_reference(value: Any) -> bool:
    """Kong's kong.vault.is_reference: a string that starts with `{vault://` and ends with `}`."""
    return isinstance(value, str) and value.startswith("{vault://") and value.endswith("}")


class Vaults:
    """The env vaults a file configures (by prefix) and the environment they read. `entities=False`: kong.conf's,
    which Kong resolves before it loads any `vaults` entity, so only the env vault itself."""

    def __init__(self, configured: Mapping[str, str | None] | None = None,
                 environ: Mapping[str, str] | None = None, entities: bool = True) -> None:
        self.configured = dict(configured or {})  # a vaults entity's prefix -> its config.prefix
        self.environ = os.environ if environ is None else environ
        self.entities = entities

    def env_prefix(self) -> str | None:
        """The env vault's own prefix: kong.conf's vault_env_prefix, from KONG_VAULT_ENV_PREFIX (empty: none). Kong
        skips one that fails the schema's match; here it is refused, as a prefix that reads another variable."""
        value = self.environ.get(ENV_PREFIX_VARIABLE) or None
        return None if value is None else _env_prefix(value, f"the environment variable {ENV_PREFIX_VARIABLE} "
                                                             "(kong.conf's vault_env_prefix)")

    def resolve(self, reference: str) -> str:
        """The secret a reference names; VaultError says why there is none."""
        parsed = parse_reference(reference)
        prefix = self._base_prefix(parsed.name)
        prefix = _prefix_option(parsed.options, prefix, reference)
        variable = _variable((prefix or "") + parsed.resource, parsed.version)
        value = self.environ.get(variable)
        if value is None:
            raise VaultError(f"{inline(reference)}: the environment variable {inline(variable)} is not set")
        return value if parsed.key is None else _json_key(value, parsed.key, variable, reference)

    def _base_prefix(self, name: str) -> str | None:
        """The prefix of the vault a reference names (kong.pdk.vault's get_vault_name_and_base_config): the env
        vault's own, or a `vaults` entry's."""
        if name in self.configured:
            prefix = self.configured[name]
            if prefix == BROKEN:
                raise Unresolved
            return prefix
        if name == BUNDLED:
            return self.env_prefix()
        hint = _NAME_HINT if "?" in name else ""
        if not self.entities:
            raise VaultError(f"no vault {show(name)}: a kong.conf setting can reference the env vault only "
                             "({vault://env/...}), as Kong resolves kong.conf before it loads any `vaults` entity"
                             + hint)
        raise VaultError(f"no vault {show(name)}: the gateway has Kong OSS's env vault ({{vault://env/...}}) and the "
                         "`vaults` entries that configure it (by their prefix)" + hint)


_NAME_HINT = " (Kong's vault name runs to the first /: write options after the secret, {vault://env/<secret>?prefix=P_})"
_NO_SECRET = "no secret named (expected {vault://<vault>/<secret>})"


class Reference(NamedTuple):
    """What kong.pdk.vault's parse_reference (kong/pdk/vault.lua:122-183) takes from a reference."""

    name: str  # socket.url's host: the vault's name or a `vaults` entry's prefix
    resource: str
    key: str | None  # the field of a JSON object the resource holds
    version: float | None  # Lua's tonumber of the fragment; None: the current one
    options: dict[str, str | bool | list[str | bool]]  # ngx.decode_args of the query


def parse_reference(reference: str) -> Reference:
    """kong.pdk.vault's parse_reference, step by step: socket.url's parse of the text between the braces (the
    vault's name is its host, so it runs to the first `/`), then the path's segments as socket.url's parse_path
    splits and unescapes them, unescaped once more by ngx.unescape_uri."""
    url = reference[1:-1]
    parts = parse_url(url)
    if parts is None or parts.host is None:  # vault.lua:127-135
        raise VaultError(f"{inline(reference)}: no vault named (expected {{vault://<vault>/<secret>}}: the name "
                         "follows //, less a user info ending in @ and a :port)")
    resource = (parts.path or "")[1:]  # :137-145 (the path starts with the / that ends the name)
    if resource == "":
        raise VaultError(f"{inline(reference)}: {_NO_SECRET}")
    fragment, query = fragment_and_query(url)
    version = None if fragment is None else _version(fragment, reference)
    segments = [unquote(segment, errors="surrogateescape") for segment in resource.split("/") if segment]
    if not segments:  # :156-159
        raise VaultError(f"{inline(reference)}: {_NO_SECRET}")
    key = None
    if len(segments) > 1 and not resource.endswith("/"):  # :160-167: a directory (a trailing /) has no key
        key = _ngx_unescape(segments.pop())
    options = _decode_args(query) if query else {}  # :169-173
    return Reference(parts.host, _ngx_unescape("/".join(segments)), key, version, options)


def _ngx_unescape(text: str) -> str:
    """ngx.unescape_uri (lua-nginx-module's ngx_http_lua_unescape_uri, a URI component): %xx a byte, + a space, a %
    without two hex digits itself; bytes that are no UTF-8 as os.environ's keys hold them (surrogateescape)."""
    text = unquote_plus(text, errors="surrogateescape")
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # (a lone surrogate the file itself wrote: no byte string, so as it is)
        return text


def _version(fragment: str, reference: str) -> float | None:
    """kong.pdk.vault's `tonumber(version, 10)` (vault.lua:147-153), LuaJIT's number syntax (decimal, 0x hex, 0b
    binary, inf and nan, spaces around); an empty fragment is no number either. Only 2 means anything to the env
    vault (kong/vaults/env: `version == 2`), so every other number is the current value."""
    number = lua_tonumber(fragment)
    if number is None and _LUA_INF_NAN.fullmatch(fragment.strip(_LUA_SPACE)) is None:
        raise VaultError(f"{inline(reference)}: the version (#{inline(fragment)}) must be a number")
    return number


def _decode_args(query: str) -> dict[str, str | bool | list[str | bool]]:
    """ngx.decode_args (lua-nginx-module's ngx_http_lua_parse_args, at most 100 pairs): `&` ends a pair, its first
    `=` ends the name, both unescaped; a name without `=` is true, an empty name is dropped, a repeated name a list."""
    options: dict[str, str | bool | list[str | bool]] = {}
    for pair in query.split("&")[:_MAX_ARGS]:
        name, equals, value = pair.partition("=")
        name = _ngx_unescape(name)
        if not name:
            continue
        item: str | bool = _ngx_unescape(value) if equals else True
        known = options.get(name)
        if known is None:
            options[name] = item
        elif isinstance(known, list):
            known.append(item)
        else:
            options[name] = [known, item]
    return options


def _prefix_option(options: Mapping[str, str | bool | list[str | bool]], prefix: str | None,
                   reference: str) -> str | None:
    """The prefix a reference's options leave (kong.pdk.vault's get_vault_config_and_hash over the env vault's
    schema): `prefix=P_` replaces the vault's, an empty `prefix=` is Kong's null, so none at all. Kong reads a
    prefix its schema refuses (no value, a repeated one, a bad character) as none, which reads another variable:
    it is refused here. Kong ignores every other option; the gateway refuses them, as likely a mistake."""
    for option, value in options.items():
        if option != "prefix":
            raise VaultError(f"{inline(reference)}: unknown option {show(option)} (the env vault takes prefix)")
        if isinstance(value, list):
            raise VaultError(f"{inline(reference)}: prefix is given {len(value)} times (Kong then reads no prefix at "
                             "all; give it once)")
        prefix = None if value == "" else _env_prefix(value, f"{inline(reference)}: prefix")
    return prefix


def _env_prefix(value: Any, where: str) -> str:
    if not isinstance(value, str) or _ENV_PREFIX.fullmatch(value) is None:
        raise VaultError(f"{where}: expected letters, digits, _ and - (not starting with a digit), got "
                         f"{show(value)}")
    return value


def _variable(resource: str, version: float | None) -> str:
    """kong/vaults/env's name: dashes as underscores, upper case (ASCII only, as Lua's string.upper)."""
    name = resource.replace("-", "_").translate(_ASCII_UPPER)
    return name + "_PREVIOUS" if version == 2 else name


def _json_key(value: str, key: str, variable: str, reference: str) -> str:
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):  # (cjson.safe: nesting too deep is an error value too)
        raise VaultError(f"{inline(reference)}: the environment variable {inline(variable)} is not JSON, so it has "
                         f"no key {show(key)}") from None
    if not isinstance(document, dict) or key not in document:
        raise VaultError(f"{inline(reference)}: the JSON in {inline(variable)} has no key {show(key)}")
    found = document[key]
    if not isinstance(found, str):
        raise VaultError(f"{inline(reference)}: {inline(variable)}[{show(key)}] is a {type(found).__name__}, not a "
                         "string")
    return found


def read_vaults(items: Any, errors: list[str], environ: Mapping[str, str] | None = None) -> Vaults:
    """The `vaults` section (Kong's vaults entities): only the bundled env vault can be configured."""
    configured: dict[str, str | None] = {}
    if items is None:
        return Vaults(configured, environ)
    if not isinstance(items, list):
        errors.append(f"vaults: expected a list, got {show(items)}")
        return Vaults(configured, environ)
    ids: dict[str, str] = {}
    for i, item in enumerate(items):
        where = f"vaults[{i}]"
        if not isinstance(item, dict):
            errors.append(f"{where}: expected a mapping (prefix, name, config), got {show(item)}")
            continue
        _check_entity_fields(item, where, ids, errors)
        name, prefix = item.get("name"), item.get("prefix")
        if name is None:
            errors.append(f"{where}.name: required (env, the vault Kong OSS bundles)")
            continue
        if not isinstance(name, str):
            errors.append(f"{where}.name: expected a string (env, the vault Kong OSS bundles), got {show(name)}")
            continue
        if name != BUNDLED:
            errors.append(f"{where}.name: vault {show(name)} is not supported by the gateway (Kong OSS bundles the "
                          "env vault only)")
            continue
        if not isinstance(prefix, str) or _VAULT_PREFIX.fullmatch(prefix) is None:
            errors.append(f"{where}.prefix: expected lower-case letters, digits and dashes, starting with a letter, "
                          f"got {show(prefix)}")
            continue
        if prefix == BUNDLED:
            errors.append(f"{where}.prefix: 'env' is the bundled vault's own name; choose another prefix")
            continue
        if prefix in configured:
            errors.append(f"{where}.prefix: vault prefix {show(prefix)} is already used")
            continue
        configured[prefix] = BROKEN  # until its config is read: references to it are not reported again
        config = item.get("config")
        if config is None:
            config = {}
        elif not isinstance(config, dict):  # (false, 0, "" too: Kong's record is a table)
            errors.append(f"{where}.config: expected a mapping (prefix), got {show(config)}")
            continue
        others = sorted(key_part(k) for k in config if k != "prefix")
        if others:
            errors.append(f"{where}.config: {', '.join(others)} {'is' if len(others) == 1 else 'are'} not supported "
                          "(Kong OSS's env vault takes prefix only)")
            continue
        try:
            configured[prefix] = None if config.get("prefix") is None else _env_prefix(config["prefix"],
                                                                                       f"{where}.config.prefix")
        except VaultError as e:
            errors.append(str(e))
    return Vaults(configured, environ)


def _check_entity_fields(item: dict[str, Any], where: str, ids: dict[str, str], errors: list[str]) -> None:
    """kong/db/schema/entities/vaults.lua's fields besides name, prefix and config: no other key; `id` a UUID (the
    dashed form) unique among the vaults; `description` a string, never empty; `tags` Kong's typedefs.tags."""
    unknown = sorted(key_part(k) for k in item if k not in _VAULT_FIELDS)
    if unknown:
        errors.append(f"{where}: unknown keys {', '.join(unknown)} (a vault takes {', '.join(sorted(_VAULT_FIELDS))})")
    entity_id = item.get("id")
    if entity_id is not None:
        if not isinstance(entity_id, str) or not _UUID.fullmatch(entity_id):
            errors.append(f'{where}.id: expected a UUID (e.g. "{_EXAMPLE_ID}"), got {show(entity_id)}')
        elif entity_id in ids:
            errors.append(f"{where}.id: {show(entity_id)} is already used by {ids[entity_id]}")
        else:
            ids[entity_id] = where
    description = item.get("description")
    if description is not None and not isinstance(description, str):
        errors.append(f"{where}.description: expected a string, got {show(description)}")
    elif description == "":
        errors.append(f"{where}.description: length must be at least 1")  # Kong's string: never empty
    tags = item.get("tags")
    if tags is not None and not isinstance(tags, list):
        errors.append(f"{where}.tags: expected a list of strings, got {show(tags)}")
    for j, tag in enumerate(tags if isinstance(tags, list) else ()):
        problem = tag_problem(tag) if isinstance(tag, str) else f"expected a string, got {show(tag)}"
        if problem:
            errors.append(f"{where}.tags[{j}]: {problem}")
            if not isinstance(tag, str):
                break  # (one is enough: a list of lists, from a YAML alias, could be millions)


def resolve_plugin(item: dict[str, Any], path: str, vaults: Vaults, errors: list[str]) -> None:
    """Replace the references in a plugin entity's referenceable config fields by their secrets (in place)."""
    name = item.get("name")
    paths = REFERENCEABLE.get(name) if isinstance(name, str) else None
    config = item.get("config")
    if paths is None or not isinstance(config, dict):
        return
    for fields in paths:
        _resolve_at(config, fields, f"{path}.config", path, vaults, errors)


def resolve_certificate(item: dict[str, Any], path: str, vaults: Vaults, errors: list[str]) -> None:
    """Replace the references in a certificate entity's PEM fields (in place)."""
    for field in CERTIFICATE_FIELDS:
        _resolve_at(item, (field,), path, path, vaults, errors)


def _resolve_at(obj: dict[str, Any], fields: tuple[str, ...], path: str, entity: str, vaults: Vaults,
                errors: list[str]) -> None:
    first, rest = fields[0], fields[1:]
    if first == "*":
        keys = list(obj)
    elif first in obj:
        keys = [first]
    else:
        return
    for key in keys:
        value = obj[key]
        where = f"{path}.{key_part(key)}"
        if rest:
            if isinstance(value, dict):
                _resolve_at(value, rest, where, entity, vaults, errors)
        elif is_reference(value):
            obj[key] = _resolved(value, where, (entity,), vaults, errors)


def _resolved(reference: str, where: str, scopes: tuple[str, ...], vaults: Vaults, errors: list[str]) -> str:
    """The secret `reference` names, hidden from the messages about `scopes`; the reference itself, with the reason
    in `errors`, when there is none."""
    try:
        secret = vaults.resolve(reference)
    except VaultError as e:
        errors.append(f"{where}: {e}")
        return reference
    except Unresolved:
        return reference
    for scope in scopes:
        hide(secret, reference, scope)
    return secret


# kong/conf_loader/constants.lua's CONF_PARSERS keys of typ array that the gateway takes (its name, or Kong's): their
# text is split at commas first and each item that is a reference resolved (conf_loader/init.lua:402-430)
_ARRAYS = frozenset(("listen", "status_listen", "ssl_cert", "ssl_cert_key", "headers", "headers_upstream",
                     "trusted_ips", "dns_resolver", "dns_order", "lua_ssl_trusted_certificate",
                     "tracing_instrumentations", "opentelemetry_tracing"))


def resolve_settings(block: dict[str, Any], aliases: Mapping[str, str], errors: list[str],
                     environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], set[str]]:
    """The `gateway:` mapping (kong.conf's) with its references resolved as Kong's conf loader resolves kong.conf's
    (kong/conf_loader/init.lua:402-430, 483-520): a value that is a reference, or each item of a list, or of an
    array key's comma-separated text, that is one; from the env vault only. `aliases`: Kong's name -> the field it
    is here, whose messages must not show the secret either. Also returns the paths (`gateway.x`, under both names)
    of the fields with a reference that could not be resolved (the reason is in `errors`)."""
    vaults = Vaults(None, environ, entities=False)
    out = dict(block)
    unresolved: set[str] = set()
    for key, value in block.items():
        if not isinstance(key, str):
            continue
        where = f"gateway.{key_part(key)}"
        scopes = (where, f"gateway.{aliases[key]}") if key in aliases else (where,)
        if isinstance(value, str) and "{vault://" in value and key in _ARRAYS:
            value = kong_array(value)  # (a reference alone too: the secret is one item, never split)
        before = len(errors)
        if is_reference(value):
            out[key] = _resolved(value, where, scopes, vaults, errors)
        elif isinstance(value, list) and any(is_reference(v) for v in value):
            out[key] = [_resolved(v, f"{where}[{i}]", scopes, vaults, errors) if is_reference(v) else v
                        for i, v in enumerate(value)]
        if len(errors) > before:
            unresolved.update(scopes)
    return out, unresolved
