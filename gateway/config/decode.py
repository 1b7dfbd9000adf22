"""Decoding that reports every problem of an entity, not only the first: when msgspec refuses a mapping, each of
its fields is checked alone (nested entities and lists of them too), so a file with 7 mistakes gets 7 lines.

An integer field takes a float with no fractional part (`port: 8080.0`) as that integer, as Kong's schema does
(kong/db/schema/init.lua, validate_field: any number equal to its floor); a string stays refused ("80"), and float
and free-form fields are left as they are.

A field set to null (YAML `~`, as `kong config db_export` writes every unset field) is not set: it takes its default,
as in Kong's declarative loader, where null passes every field that is not `required` (kong/db/schema/init.lua,
validate_field). A Struct names in NULL_REFUSED the fields Kong requires though they have a default (a route's
`strip_path`): null is refused there, with Kong's words, as it is on a field without a default (unset_nulls).

A plugin's config is read as Kong's plugin code reads it (kong_nulls): Kong keeps the null and the plugin gets nil
(kong/db/schema/init.lua, process_auto_fields: `if value == null and not nulls then value = nil` when the plugins
iterator selects it), not the default. A null stays where the field takes None; a field of the Struct's NULL_AS
takes what Kong's code makes of nil there (`if conf.x` off: false; `conf.x or "kong"`: the default); a null on any
other field with a default is refused, naming the field. Kong's deprecated shorthand fields (a Struct's SHORTHANDS)
are read first, as Kong reads them before anything else (kong_shorthands)."""

from __future__ import annotations

import copy
import functools
import re
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

import msgspec

from gateway.config.errors import describe_validation_error, inline, join_path, key_part, show

_UNKNOWN = "unknown field (check the spelling; see the README's config reference)"


def convert_all(item: Any, typ: Any, path: str, errors: list[str], dec_hook: Any = None) -> Any:
    """`item` decoded as `typ`, or None with one message per problem appended to `errors`."""
    try:
        return msgspec.convert(item, typ, dec_hook=dec_hook)
    except msgspec.ValidationError as e:
        error = e
    whole = whole_numbers(item, typ)  # (only when strict decoding failed: a file without such floats pays nothing)
    if whole is not item:
        try:
            return msgspec.convert(whole, typ, dec_hook=dec_hook)
        except msgspec.ValidationError as e:
            item, error = whole, e
    found: list[str] = []
    _check(item, typ, path, found, dec_hook, error)
    errors.extend(found)
    return None


def unset_nulls(value: Any, typ: Any, path: str, errors: list[str]) -> Any:
    """`value` (a document's entity, as `typ` decodes it) without its null fields that have a default, so each
    takes that default; nested Structs too (routes under a service, healthchecks). A null stays where the field
    takes None, and where it has no default (msgspec refuses it); one on a field of the Struct's NULL_REFUSED is
    refused here. `value` itself, unchanged, when there is nothing to do."""
    return _nulls(value, typ, path, errors, _entity_rules, maps=False)


def kong_nulls(value: Any, typ: Any, path: str, errors: list[str]) -> Any:
    """A plugin's config (`value`, as `typ` decodes it) with each null as Kong's plugin code reads it (nil): kept
    where the field takes None, the Struct's NULL_AS value where it names the field, refused (one message appended
    to `errors`) on any other field with a default; nested records, and lists and maps of them, too. `value`
    itself, unchanged, when there is nothing to do."""
    return _nulls(value, typ, path, errors, _plugin_rules, maps=True)


def not_built(config: dict[str, Any], why: dict[str, str],
              inert: dict[str, tuple[Any, ...]] | None = None) -> tuple[dict[str, Any], list[str]]:
    """`config` without its keys for what the gateway does not build (`why`: each key's reason), and "key is not
    supported: why" for each that configures something: not a null (Kong stores every unset key as null, and exports
    it so) nor a value of `inert` (Kong's default, which without the feature does nothing)."""
    if not why.keys() & config.keys():
        return config, []
    refused = [f"{key} is not supported: {why[key]}" for key, value in config.items() if key in why
               and value is not None and not any(_same(value, v) for v in (inert or {}).get(key, ()))]
    return {k: v for k, v in config.items() if k not in why}, refused


_UNSET: Any = object()  # a rule: the key is dropped, so the field takes its default


class _Refused(typing.NamedTuple):
    """A rule: a null there is refused, with this message (after the field's path)."""
    message: str


def _nulls(value: Any, typ: Any, path: str, errors: list[str],
           rules_of: Callable[[type[msgspec.Struct]], dict[str, Any]], maps: bool) -> Any:
    """`value` with each null field of a Struct (nested in Structs, lists, unions of one Struct, and with `maps`
    dicts) rewritten by its rule: _UNSET drops the key, _Refused reports it (and drops it), anything else is the
    value it becomes. `value` itself, unchanged, when there is nothing to do."""
    inner = _unwrap(typ)
    origin = typing.get_origin(inner)
    if isinstance(value, list) and origin is list:
        if not any(isinstance(v, dict | list) for v in value):
            return value  # (paths, tags: no entity in them)
        (item_type,) = typing.get_args(inner) or (Any,)
        items = [_nulls(v, item_type, f"{path}[{i}]", errors, rules_of, maps) for i, v in enumerate(value)]
        return items if any(new is not old for new, old in zip(items, value, strict=True)) else value
    if maps and isinstance(value, dict) and origin is dict:
        value_type = (typing.get_args(inner) or (Any, Any))[1]
        entries = {k: _nulls(v, value_type, join_path(path, key_part(k)), errors, rules_of, maps)
                   for k, v in value.items()}
        return entries if any(entries[k] is not v for k, v in value.items()) else value
    if origin in (Union, types.UnionType):  # `str | SniEntity`: a mapping is the Struct
        structs = [t for t in map(_unwrap, typing.get_args(inner))
                   if isinstance(t, type) and issubclass(t, msgspec.Struct)]
        inner = structs[0] if len(structs) == 1 else inner
    if not (isinstance(value, dict) and isinstance(inner, type) and issubclass(inner, msgspec.Struct)):
        return value
    rules = rules_of(inner)
    hints = _field_types(inner)
    out: dict[Any, Any] | None = None
    for key, item in value.items():
        if item is None:
            rule = rules.get(key)
            if rule is None:
                continue  # unknown, takes None, or has no default: msgspec says what it is
            if isinstance(rule, _Refused):
                errors.append(f"{join_path(path, key_part(key))}: {rule.message}")
                new = _UNSET
            else:
                new = rule if rule is _UNSET else copy.deepcopy(rule)
        elif isinstance(item, dict | list) and key in hints:
            new = _nulls(item, hints[key], join_path(path, key_part(key)), errors, rules_of, maps)
            if new is item:
                continue
        else:
            continue
        if out is None:
            out = dict(value)
        if new is _UNSET:
            del out[key]
        else:
            out[key] = new
    return value if out is None else out


_REQUIRED = _Refused("required field missing (Kong refuses null here; remove the key for its default)")


@functools.cache
def _entity_rules(cls: type[msgspec.Struct]) -> dict[str, Any]:
    """An entity's null rules by the name a document uses: _UNSET (the field has a default and does not take None)
    or _REQUIRED (NULL_REFUSED: Kong's required)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    refused: frozenset[str] = getattr(cls, "NULL_REFUSED", frozenset())
    out: dict[str, Any] = {}
    for f in msgspec.structs.fields(cls):
        if f.encode_name in refused:
            out[f.encode_name] = _REQUIRED
        elif (f.default is not msgspec.NODEFAULT or f.default_factory is not msgspec.NODEFAULT) \
                and not _takes_none(hints[f.name]):
            out[f.encode_name] = _UNSET
    return out


@functools.cache
def _plugin_rules(cls: type[msgspec.Struct]) -> dict[str, Any]:
    """A plugin config's null rules by the name a document uses: the value of the Struct's NULL_AS (what Kong's
    code makes of nil there), or _Refused (a field with a default nil is not)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    null_as: dict[str, Any] = getattr(cls, "NULL_AS", {})
    out: dict[str, Any] = {}
    for f in msgspec.structs.fields(cls):
        if f.encode_name in null_as:
            out[f.encode_name] = null_as[f.encode_name]
            continue
        if _takes_none(hints[f.name]):
            continue
        if f.default is not msgspec.NODEFAULT:
            shown = f" {_shown(f.default)}"
        elif f.default_factory is not msgspec.NODEFAULT:
            default = f.default_factory()
            scalars = isinstance(default, list) and not any(isinstance(v, dict | list | msgspec.Struct)
                                                            for v in default)
            shown = f" {_shown(default)}" if scalars else ""
        else:
            continue
        out[f.encode_name] = _Refused(f"null is refused here: Kong reads it as no value (nil) or refuses it, never as "
                                      f"the default{shown}; give a value, or remove the key for the default")
    return out


def _shown(value: Any) -> str:
    """A default as a message shows it: a scalar as YAML writes it, a list of them in brackets."""
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return show(value)


def kong_shorthands(value: Any, typ: Any, path: str, errors: list[str]) -> Any:
    """A plugin's config with Kong's deprecated shorthand fields read as Kong reads them, first of all
    (kong/db/schema/init.lua, process_auto_fields): `typ`'s SHORTHANDS maps a shorthand's key to the path of the
    field that replaced it. A shorthand given beside that field given with another value is refused with Kong's
    message (validate_deprecation_exclusiveness; a field given false or null is passed over, as Lua's `if
    new_field_value` is); then the field keeps a value given to it, else takes the shorthand's, a null too
    (null_aware_table_merge). A shorthand given a value is left holding the field's, so that the config's own
    merge (which logs Kong's deprecation line) changes nothing. `value` itself when there is nothing to do."""
    shorthands: dict[str, tuple[str, ...]] = getattr(_unwrap(typ), "SHORTHANDS", {})
    if not isinstance(value, dict) or not any(key in value for key in shorthands):
        return value
    hints = _field_types(_unwrap(typ))
    out = copy.deepcopy(value)
    for key, (*parents, name) in shorthands.items():
        if key not in out or not _decodes(out[key], hints[key]):
            continue  # (absent; or of the wrong type, which msgspec reports on the shorthand's own key)
        given = out[key]
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        field = node.get(name) if isinstance(node, dict) else None
        if given is not None and field is not None and field is not False and not _same(field, given):
            errors.append(f"{join_path(path, key)}: both deprecated and new field are used but their values "
                          f"mismatch: {key} = {_lua_text(given)} vs {'.'.join((*parents, name))} = "
                          f"{_lua_text(field)}; remove {key} (deprecated), or give both the same value")
            continue
        if field is None:
            field = given
            node = out
            for part in parents:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):  # (else not a record: msgspec says so)
                node[name] = given
        if given is not None:
            out[key] = field
    return out


def _decodes(value: Any, typ: Any) -> bool:
    try:
        msgspec.convert(value, typ)
    except msgspec.ValidationError:
        return False
    return True


def _same(a: Any, b: Any) -> bool:
    """Kong's deepcompare of two scalars: a boolean equals only a boolean (Python's True == 1 does not hold)."""
    if type(a) is bool or type(b) is bool:
        return a is b
    return bool(a == b)


def _lua_text(value: Any) -> str:
    """A value as Lua's tostring writes it into Kong's message (a whole number without `.0`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return inline(value) if isinstance(value, str) else str(value)


def _takes_none(typ: Any) -> bool:
    """Whether `typ` (Annotated or not) admits None."""
    while typing.get_origin(typ) is Annotated:
        typ = typing.get_args(typ)[0]
    if typ is Any or typ is None or typ is type(None):
        return True
    return typing.get_origin(typ) in (Union, types.UnionType) and any(_takes_none(t) for t in typing.get_args(typ))


def whole_numbers(value: Any, typ: Any) -> Any:
    """`value` with each float of no fractional part made an int where `typ` wants an int (Kong's integer: any number
    equal to its floor); `value` itself, unchanged, when there is none. Only int fields (and Literals of ints) are
    touched: msgspec's lax mode would also take "80" for 80, which Kong refuses."""
    inner = _unwrap(typ)
    if inner is int or (typing.get_origin(inner) is Literal and all(type(a) is int for a in typing.get_args(inner))):
        return int(value) if type(value) is float and value.is_integer() else value
    if isinstance(value, dict) and isinstance(inner, type) and issubclass(inner, msgspec.Struct):
        hints = _field_types(inner)
        items = ((k, v, hints.get(k)) for k, v in value.items())
    elif isinstance(value, dict) and typing.get_origin(inner) is dict:
        value_type = (typing.get_args(inner) or (Any, Any))[1]
        items = ((k, v, value_type) for k, v in value.items())
    elif isinstance(value, list) and typing.get_origin(inner) is list:
        (item_type,) = typing.get_args(inner) or (Any,)
        changed = [whole_numbers(v, item_type) for v in value]
        return changed if any(new is not old for new, old in zip(changed, value, strict=True)) else value
    else:
        return value
    out: dict[Any, Any] | None = None
    for key, item, item_type in items:
        new = item if item_type is None else whole_numbers(item, item_type)
        if new is not item:
            out = dict(value) if out is None else out
            out[key] = new
    return value if out is None else out


@functools.cache
def _field_types(cls: type[msgspec.Struct]) -> dict[str, Any]:
    """A Struct's field types by the name a document uses for each."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.encode_name: hints[f.name] for f in msgspec.structs.fields(cls)}


def salvage(item: Any, typ: Any, path: str, messages: list[str], dec_hook: Any = None) -> Any:
    """What decodes of an entity that did not: the entity without the fields `messages` found fault with (None if
    even that fails). Its other checks can then run, so their problems are reported in the same pass; the whole
    config is refused anyway."""
    if not isinstance(item, dict):
        return None
    item = whole_numbers(item, typ)
    bad = set()
    for message in messages:
        field = message.split(": ", 1)[0]
        if field.startswith(path + "."):
            bad.add(re.split(r"[.\[]", field[len(path) + 1:], maxsplit=1)[0])
    if not bad:
        return None
    try:
        return msgspec.convert({k: v for k, v in item.items() if key_part(k) not in bad}, typ, dec_hook=dec_hook)
    except msgspec.ValidationError:
        return None


def _check(value: Any, typ: Any, path: str, found: list[str], dec_hook: Any,
           err: msgspec.ValidationError | None = None) -> None:
    if err is None:
        try:
            msgspec.convert(value, typ, dec_hook=dec_hook)
            return
        except msgspec.ValidationError as e:
            err = e
    inner = _unwrap(typ)
    if isinstance(value, dict) and isinstance(inner, type) and issubclass(inner, msgspec.Struct):
        before = len(found)
        _check_struct(value, inner, path, found, dec_hook)
        if len(found) > before:
            return
    elif isinstance(value, list) and typing.get_origin(inner) is list:
        (item_type,) = typing.get_args(inner) or (Any,)
        before = len(found)
        for i, element in enumerate(value):
            _check(element, item_type, f"{path}[{i}]", found, dec_hook)
        if len(found) > before:
            return
    elif isinstance(value, dict) and typing.get_origin(inner) is dict:  # each value under its key (`headers.x-a`)
        value_type = (typing.get_args(inner) or (Any, Any))[1]
        before = len(found)
        for key, element in value.items():
            _check(element, value_type, join_path(path, key_part(key)), found, dec_hook)
        if len(found) > before:
            return
    found.append(describe_validation_error(err, value, typ, path, dec_hook))


def _check_struct(value: dict[str, Any], cls: type[msgspec.Struct], path: str, found: list[str],
                  dec_hook: Any) -> None:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    for key, field_value in value.items():
        field = fields.get(key)
        if field is None:
            found.append(f"{join_path(path, key_part(key))}: {_UNKNOWN}")
            continue
        _check(field_value, hints[field.name], join_path(path, key_part(key)), found, dec_hook)
    for name, field in fields.items():
        if field.required and name not in value:
            found.append(f"{join_path(path, name)}: required field is missing")


def _unwrap(typ: Any) -> Any:
    """The type to look into: Annotated and `X | None` stripped."""
    while True:
        origin = typing.get_origin(typ)
        if origin is Annotated:
            typ = typing.get_args(typ)[0]
        elif origin in (Union, types.UnionType):
            rest = [t for t in typing.get_args(typ) if t is not type(None)]
            if len(rest) != 1:
                return typ
            typ = rest[0]
        else:
            return typ
