"""Decoding that reports every problem of an entity, not only the first: when msgspec refuses a mapping, each of
its fields is checked alone (nested entities and lists of them too), so a file with 7 mistakes gets 7 lines.

An integer field takes a float with no fractional part (`port: 8080.0`) as that integer, as Kong's schema does
(kong/db/schema/init.lua, validate_field: any number equal to its floor); a string stays refused ("80"), and float
and free-form fields are left as they are.

A field set to null (YAML `~`, as `kong config db_export` writes every unset field) is not set: it takes its default,
as in Kong's declarative loader, where null passes every field that is not `required` (kong/db/schema/init.lua,
validate_field). A Struct names in NULL_REFUSED the fields Kong requires though they have a default (a route's
`strip_path`): null is refused there, with Kong's words, as it is on a field without a default (unset_nulls)."""

from __future__ import annotations

import functools
import re
import types
import typing
from typing import Annotated, Any, Literal, Union

import msgspec

from gateway.config.errors import describe_validation_error, join_path, key_part

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
    inner = _unwrap(typ)
    if isinstance(value, list) and typing.get_origin(inner) is list:
        if not any(isinstance(v, dict) for v in value):
            return value  # (paths, tags: no entity in them)
        (item_type,) = typing.get_args(inner) or (Any,)
        changed = [unset_nulls(v, item_type, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return changed if any(new is not old for new, old in zip(changed, value, strict=True)) else value
    if typing.get_origin(inner) in (Union, types.UnionType):  # `str | SniEntity`: a mapping is the Struct
        structs = [t for t in map(_unwrap, typing.get_args(inner))
                   if isinstance(t, type) and issubclass(t, msgspec.Struct)]
        inner = structs[0] if len(structs) == 1 else inner
    if not (isinstance(value, dict) and isinstance(inner, type) and issubclass(inner, msgspec.Struct)):
        return value
    nullable = _nullable_fields(inner)
    hints = _field_types(inner)
    out: dict[Any, Any] | None = None
    for key, item in value.items():
        if item is None:
            unset = nullable.get(key)
            if unset is None:
                continue  # unknown, takes None, or has no default: msgspec says what it is
            if unset is _REFUSED:
                errors.append(f"{join_path(path, key_part(key))}: required field missing (Kong refuses null here; "
                              "remove the key for its default)")
            new = _UNSET
        elif isinstance(item, dict | list) and key in hints:
            new = unset_nulls(item, hints[key], join_path(path, key_part(key)), errors)
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


_UNSET: Any = object()
_REFUSED: Any = object()


@functools.cache
def _nullable_fields(cls: type[msgspec.Struct]) -> dict[str, Any]:
    """The fields of `cls` where a null is not given to msgspec, by the name a document uses: _UNSET (the key is
    dropped: the field has a default and does not take None) or _REFUSED (NULL_REFUSED: Kong's required)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    refused: frozenset[str] = getattr(cls, "NULL_REFUSED", frozenset())
    out: dict[str, Any] = {}
    for f in msgspec.structs.fields(cls):
        if f.encode_name in refused:
            out[f.encode_name] = _REFUSED
        elif (f.default is not msgspec.NODEFAULT or f.default_factory is not msgspec.NODEFAULT) \
                and not _takes_none(hints[f.name]):
            out[f.encode_name] = _UNSET
    return out


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
