"""Decoding that reports every problem of an entity, not only the first: when msgspec refuses a mapping, each of
its fields is checked alone (nested entities and lists of them too), so a file with 7 mistakes gets 7 lines."""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, Union

import msgspec

from gateway.config.errors import describe_validation_error, join_path, key_part

_UNKNOWN = "unknown field (check the spelling; see the README's config reference)"


def convert_all(item: Any, typ: Any, path: str, errors: list[str], dec_hook: Any = None) -> Any:
    """`item` decoded as `typ`, or None with one message per problem appended to `errors`."""
    try:
        return msgspec.convert(item, typ, dec_hook=dec_hook)
    except msgspec.ValidationError as e:
        found: list[str] = []
        _check(item, typ, path, found, dec_hook, e)
        errors.extend(found)
        return None


def salvage(item: Any, typ: Any, path: str, messages: list[str], dec_hook: Any = None) -> Any:
    """What decodes of an entity that did not: the entity without the fields `messages` found fault with (None if
    even that fails). Its other checks can then run, so their problems are reported in the same pass; the whole
    config is refused anyway."""
    if not isinstance(item, dict):
        return None
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
    found.append(describe_validation_error(err, value, typ, path))


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
