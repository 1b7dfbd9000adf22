"""Kong's request-transformer plugin config (kong/plugins/request-transformer/schema.lua)."""

from __future__ import annotations

import re

import msgspec

from gateway.config.errors import inline
from gateway.policies.response_transformer.schema import (
    CONTENT_LENGTH,
    FRAMING,
    check_pairs,
    refuse_framing,
    split_pair,
)
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
        refuse_framing(self.headers, FRAMING, "removing", "request")


class Pairs(msgspec.Struct, forbid_unknown_fields=True):
    body: list[KongString] = []
    headers: list[KongString] = []
    querystring: list[KongString] = []

    def __post_init__(self) -> None:
        for field in ("body", "querystring"):
            entries = getattr(self, field)
            for i, entry in enumerate(entries):
                # Kong's check_for_value: `^([^:]+):*(.-)$` needs a name before the first ":" and a value after
                name, _, value = entry.partition(":")
                if not name:
                    raise ValueError(f"{field}[{i}]: '{inline(entry)}' has no name before its ':' (write "
                                     "'name:value')")
                if not value.lstrip(":"):
                    raise ValueError(f"{field}[{i}]: key '{inline(name)}' has no value")
            check_templates(field, entries)
        check_pairs("headers", self.headers, headers=True)
        check_templates("headers", self.headers)


# Kong's set_headers makes a Host it is given the upstream's Host and TLS server name (kong/pdk/service/request.lua
# 455-458: ngx.var.upstream_host); the gateway has no per-request upstream host, so the ops that would set one
# (replace, rename onto host, append) are refused rather than left undone. (Kong's `add` never sets Host.)
_HOST_WHY = ("is not supported by the gateway (Kong would make it the upstream's Host and TLS server name); set the "
             "route's preserve_host, or the upstream's host_header")


def _refuse_host(entries: list[str], name_of: str, doing: str) -> None:
    """ValueError naming the first entry whose `name_of` side ("name" or "new", of "name:new") is Host."""
    for i, entry in enumerate(entries):
        name, new = split_pair(entry)
        if ((new or "") if name_of == "new" else name).lower() == "host":
            raise ValueError(f"headers[{i}]: {doing} Host {_HOST_WHY}")


class Renames(Pairs):
    def __post_init__(self) -> None:
        super().__post_init__()
        check_pairs("headers", self.headers, headers=True, both=True)
        _refuse_host(self.headers, "new", "renaming a header to")
        refuse_framing(self.headers, FRAMING, "renaming", "request")
        refuse_framing(self.headers, FRAMING, "renaming a header to", "request", new=True)


class Replaces(Pairs):
    uri: KongString | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.uri is not None:
            check_templates("uri", [self.uri], indexed=False)
        _refuse_host(self.headers, "name", "replacing")
        # (a chunked request's Transfer-Encoding replaced stays chunked: the gateway sends its own framing headers)
        refuse_framing(self.headers, CONTENT_LENGTH, "replacing", "request")


class Adds(Pairs):
    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_framing(self.headers, FRAMING, "adding", "request")


class Appends(Pairs):
    def __post_init__(self) -> None:
        super().__post_init__()
        _refuse_host(self.headers, "name", "appending to")
        refuse_framing(self.headers, FRAMING, "appending to", "request")


# kong.service.request.set_method's accepted_methods (kong/pdk/service/request.lua 175-191): any other method passes
# Kong's schema (`^%u+$`) and then fails every request in access ("invalid method", a 500)
SET_METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE", "PROPFIND", "PROPPATCH",
               "LOCK", "UNLOCK", "PATCH", "TRACE")


class RequestTransformerConfig(msgspec.Struct, forbid_unknown_fields=True):
    http_method: KongString | None = None
    remove: Names = msgspec.field(default_factory=Names)
    rename: Renames = msgspec.field(default_factory=Renames)
    replace: Replaces = msgspec.field(default_factory=Replaces)
    add: Adds = msgspec.field(default_factory=Adds)
    append: Appends = msgspec.field(default_factory=Appends)

    def first_template(self) -> str | None:
        """Where the first value Kong renders as a template holds a $(...) (access.lua's param_value: what follows an
        entry's name in rename, replace, add and append, and replace.uri), or None."""
        for op in ("rename", "replace", "add", "append"):
            pairs = getattr(self, op)
            for field in ("headers", "querystring", "body"):
                for i, entry in enumerate(getattr(pairs, field)):
                    if _ANY_TEMPLATE.search(entry.partition(":")[2]):
                        return f"{op}.{field}[{i}]"
        if self.replace.uri is not None and _ANY_TEMPLATE.search(self.replace.uri):
            return "replace.uri"
        return None

    def __post_init__(self) -> None:
        if self.http_method is None:
            return
        if not re.fullmatch(r"[A-Z]+", self.http_method):
            raise ValueError(f"http_method: invalid value: {inline(self.http_method)}")  # typedefs.http_method: ^%u+$
        if self.http_method not in SET_METHODS:
            raise ValueError(f"http_method: '{self.http_method}' is not a method Kong can set (its "
                             "kong.service.request.set_method fails every request with it, a 500); use one of "
                             f"{', '.join(SET_METHODS)}")
