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
    """Kong's `match = "^[^:]+:.*$"` and validate_headers (the name; with `both`, the value too). A header value may
    hold any byte: ngx.req.set_header and ngx.header escape control bytes as they set it."""
    for i, entry in enumerate(entries):
        if not _PAIR.fullmatch(entry):
            # Kong's message is "invalid value: <entry>" (the schema's `match` failing)
            raise ValueError(f"{where}[{i}]: should match the pattern '^[^:]+:.*$', invalid value: {inline(entry)}")
        name, value = split_pair(entry)
        if headers and not _HEADER.fullmatch(name):
            raise ValueError(f"{where}[{i}]: '{inline(name)}' is not a valid header")
        if both and not _HEADER.fullmatch(value or ""):  # Kong's tostring(value): an empty value is ''
            raise ValueError(f"{where}[{i}]: '{inline(value or '')}' is not a valid header")


CONTENT_LENGTH = ("content-length",)
FRAMING = ("content-length", "transfer-encoding")


def refuse_framing(entries: list[str], names: tuple[str, ...], doing: str, message: str, new: bool = False) -> None:
    """ValueError naming the first header entry whose name (with `new`, rename's new name), "_" read as "-", is one of
    `names`: a header that frames the `message` ("request" or "response") body, which the gateway writes itself."""
    for i, entry in enumerate(entries):
        name, new_name = split_pair(entry)
        header = (new_name or "") if new else name
        if header.lower().replace("_", "-") in names:
            raise ValueError(f"headers[{i}]: {doing} '{inline(header)}' is refused: the gateway frames {message} "
                             "bodies itself (Content-Length or chunked coding, from the body it sends), and this "
                             "change would break that framing; remove the entry")


class Names(msgspec.Struct, forbid_unknown_fields=True):
    json: list[KongString] = []
    headers: list[KongString] = []


class Renames(msgspec.Struct, forbid_unknown_fields=True):
    json: list[KongString] = []
    headers: list[KongString] = []

    def __post_init__(self) -> None:
        check_pairs("json", self.json)
        check_pairs("headers", self.headers, headers=True, both=True)
        # (a rename onto Transfer-Encoding is dropped: kong.response.set_header ignores it)
        refuse_framing(self.headers, CONTENT_LENGTH, "renaming a header to", "response", new=True)


class Values(msgspec.Struct, forbid_unknown_fields=True):
    json: list[KongString] = []
    json_types: list[Literal["boolean", "number", "string"]] = []
    headers: list[KongString] = []

    def __post_init__(self) -> None:
        check_pairs("json", self.json)
        check_pairs("headers", self.headers)


class Replaces(Values):
    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_framing(self.headers, CONTENT_LENGTH, "replacing", "response")


class Adds(Values):
    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_framing(self.headers, CONTENT_LENGTH, "adding", "response")


class Appends(Values):
    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_framing(self.headers, FRAMING, "appending to", "response")  # add_header takes Transfer-Encoding too
        for i, entry in enumerate(self.headers):
            # header_transformer calls add_header(name, nil) for it, which raises in validate_header: Kong's header
            # filter fails (outside any pcall), and every response of the route ends with its connection closed
            if split_pair(entry)[1] is None:
                raise ValueError(f"headers[{i}]: '{inline(entry)}' has no value (Kong's header filter fails on it "
                                 "with every response)")


class ResponseTransformerConfig(msgspec.Struct, forbid_unknown_fields=True):
    remove: Names = msgspec.field(default_factory=Names)
    rename: Renames = msgspec.field(default_factory=Renames)
    replace: Replaces = msgspec.field(default_factory=Replaces)
    add: Adds = msgspec.field(default_factory=Adds)
    append: Appends = msgspec.field(default_factory=Appends)
