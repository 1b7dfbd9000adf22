"""Kong's request-transformer plugin config (kong/plugins/request-transformer/schema.lua)."""

from __future__ import annotations

import re

import msgspec

from gateway.config.errors import inline
from gateway.policies.response_transformer.schema import check_pairs
from gateway.policies.schema_types import KongString

# The templates the gateway renders: $(headers.NAME), $(headers["NAME"]), $(query_params.NAME), ...,
# $(uri_captures.NAME), $(uri_captures[N]). Kong runs any Lua expression in its sandbox; other expressions are refused
# at load. Groups: 1 the table, 2 a .NAME, 4 a ["NAME"], 5 a [N].
TEMPLATE = re.compile(r"""\$\(\s*(headers|query_params|uri_captures)\s*"""
                      r"""(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*(["'])([^"']+)\3\s*\]|\[\s*(\d+)\s*\])\s*\)""")
_ANY_TEMPLATE = re.compile(r"\$\(.*\)")


def check_templates(where: str, entries: list[str], indexed: bool = True) -> None:
    for i, entry in enumerate(entries):
        rest = TEMPLATE.sub("", entry)
        if _ANY_TEMPLATE.search(rest):
            at = f"{where}[{i}]" if indexed else where
            raise ValueError(f"{at}: only the templates $(headers.NAME), $(headers[\"NAME\"]), "
                             f"$(query_params.NAME), $(query_params[\"NAME\"]), $(uri_captures.NAME), "
                             f"$(uri_captures[\"NAME\"]) and $(uri_captures[N]) are supported by the gateway, "
                             f"got '{inline(entry)}'")


class Names(msgspec.Struct, forbid_unknown_fields=True):
    body: list[KongString] = []
    headers: list[KongString] = []
    querystring: list[KongString] = []

    def __post_init__(self) -> None:
        for i, name in enumerate(self.headers):
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name.partition(":")[0]):
                raise ValueError(f"headers[{i}]: '{inline(name)}' is not a valid header")


class Pairs(msgspec.Struct, forbid_unknown_fields=True):
    body: list[KongString] = []
    headers: list[KongString] = []
    querystring: list[KongString] = []

    def __post_init__(self) -> None:
        for field in ("body", "querystring"):
            entries = getattr(self, field)
            for i, entry in enumerate(entries):
                name, _, value = entry.partition(":")
                if not value.lstrip(":"):
                    raise ValueError(f"{field}[{i}]: key '{inline(name)}' has no value")
            check_templates(field, entries)
        check_pairs("headers", self.headers, headers=True)
        check_templates("headers", self.headers)


class Renames(Pairs):
    def __post_init__(self) -> None:
        super().__post_init__()
        check_pairs("headers", self.headers, headers=True, both=True)


class Replaces(Pairs):
    uri: KongString | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.uri is not None:
            check_templates("uri", [self.uri], indexed=False)
        for i, entry in enumerate(self.headers):
            if entry.partition(":")[0].lower() == "host":
                raise ValueError(f"headers[{i}]: replacing Host is not supported by the gateway (set the route's "
                                 "preserve_host, or the upstream's host_header)")


class RequestTransformerConfig(msgspec.Struct, forbid_unknown_fields=True):
    http_method: KongString | None = None
    remove: Names = msgspec.field(default_factory=Names)
    rename: Renames = msgspec.field(default_factory=Renames)
    replace: Replaces = msgspec.field(default_factory=Replaces)
    add: Pairs = msgspec.field(default_factory=Pairs)
    append: Pairs = msgspec.field(default_factory=Pairs)

    def __post_init__(self) -> None:
        if self.http_method is not None and not re.fullmatch(r"[A-Z]+", self.http_method):
            raise ValueError(f"http_method: invalid value: {inline(self.http_method)}")  # typedefs.http_method: ^%u+$
