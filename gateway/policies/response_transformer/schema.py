"""Kong's response-transformer plugin config (kong/plugins/response-transformer/schema.lua)."""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from gateway.config.errors import inline
from gateway.policies.schema_types import KongString

_PAIR = re.compile(r"[^:]+:.*", re.DOTALL)  # fullmatch: Lua's `.` takes a newline, its `$` none after it
_HEADER = re.compile(r"[A-Za-z0-9_-]+")  # fullmatch


def split_pair(entry: str) -> tuple[str, str | None]:
    """Kong's "name:value" split (`^([^:]+):*(.-)$`): an empty value is None."""
    name, _, rest = entry.partition(":")
    value = rest.lstrip(":")
    return name, value or None


def check_pairs(where: str, entries: list[str], headers: bool = False, both: bool = False) -> None:
    for i, entry in enumerate(entries):
        if not _PAIR.fullmatch(entry):
            # Kong's message is "invalid value: <entry>" (the schema's `match` failing)
            raise ValueError(f"{where}[{i}]: should match the pattern '^[^:]+:.*$', invalid value: {inline(entry)}")
        name, value = split_pair(entry)
        if headers and not _HEADER.fullmatch(name):
            raise ValueError(f"{where}[{i}]: '{inline(name)}' is not a valid header")
        if both and not _HEADER.fullmatch(value or ""):
            raise ValueError(f"{where}[{i}]: '{inline(str(value))}' is not a valid header")
        if headers and value and any(c in value for c in "\r\n\0"):  # (Kong's set_header would fail on it)
            raise ValueError(f"{where}[{i}]: the value of '{inline(name)}' holds a line break or NUL")


class Names(msgspec.Struct, forbid_unknown_fields=True):
    json: list[KongString] = []
    headers: list[KongString] = []


class Renames(msgspec.Struct, forbid_unknown_fields=True):
    json: list[KongString] = []
    headers: list[KongString] = []

    def __post_init__(self) -> None:
        check_pairs("json", self.json)
        check_pairs("headers", self.headers, headers=True, both=True)


class Values(msgspec.Struct, forbid_unknown_fields=True):
    json: list[KongString] = []
    json_types: list[Literal["boolean", "number", "string"]] = []
    headers: list[KongString] = []

    def __post_init__(self) -> None:
        check_pairs("json", self.json)
        check_pairs("headers", self.headers)


class ResponseTransformerConfig(msgspec.Struct, forbid_unknown_fields=True):
    remove: Names = msgspec.field(default_factory=Names)
    rename: Renames = msgspec.field(default_factory=Renames)
    replace: Values = msgspec.field(default_factory=Values)
    add: Values = msgspec.field(default_factory=Values)
    append: Values = msgspec.field(default_factory=Values)
