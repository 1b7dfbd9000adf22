"""Kong's response-transformer (kong/plugins/response-transformer/): header_filter and body_filter phases.

Headers, in Kong's order: remove, rename, replace (only present ones), add (only absent ones), append. The JSON
body (a response whose Content-Type is application/json, never text/event-stream; read whole up to
gateway.pipeline.phases.RESPONSE_BODY_LIMIT): remove, rename, replace, add, append of top-level keys, values cast by
json_types. Lua's truthiness is kept: replace needs a present value other than false, add writes over a missing or
false one. A body that is not a JSON object is sent unchanged, as Kong does when it cannot parse it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.policies.header_list import add_header, clear_header, set_header
from gateway.policies.response_transformer.schema import ResponseTransformerConfig, Values, split_pair

log = logging.getLogger("gateway.policies.response_transformer")
_MISSING = object()


def is_json(content_type: bytes | None) -> bool:
    """Kong's is_json_body: one of the comma-separated media types is application/json."""
    if not content_type:
        return False
    for part in content_type.split(b","):
        media = part.split(b";", 1)[0].strip().lower()
        if media == b"application/json":
            return True
    return False


def _cast(value: str, json_type: str | None) -> Any:
    if json_type == "number":
        try:
            number = float(value)
        except ValueError:
            return None
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    if json_type == "boolean":
        return value == "true"
    return value


def _values(values: Values) -> list[tuple[str, Any]]:
    out = []
    for i, entry in enumerate(values.json):
        name, value = split_pair(entry)
        if value is None:
            continue
        cast = _cast(value, values.json_types[i] if i < len(values.json_types) else None)
        if cast is not None:
            out.append((name, cast))
    return out


def _header_pairs(entries: list[str]) -> list[tuple[bytes, bytes | None]]:
    out = []
    for entry in entries:
        name, value = split_pair(entry)
        out.append((name.lower().encode(), value.encode() if value is not None else None))
    return out


class ResponseTransformer:
    name = "response-transformer"
    priority = 800  # Kong's

    def __init__(self, config: ResponseTransformerConfig) -> None:
        self.remove_headers = [h.lower().encode() for h in config.remove.headers]
        self.rename_headers = _header_pairs(config.rename.headers)
        self.replace_headers = _header_pairs(config.replace.headers)
        self.add_headers = _header_pairs(config.add.headers)
        self.append_headers = _header_pairs(config.append.headers)
        self.remove_json = list(config.remove.json)
        self.rename_json = [split_pair(e) for e in config.rename.json]
        self.replace_json = _values(config.replace)
        self.add_json = _values(config.add)
        self.append_json = _values(config.append)
        self.transforms_body = bool(config.remove.json or config.rename.json or config.replace.json
                                    or config.add.json or config.append.json)

    def header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        for name in self.remove_headers:
            clear_header(headers, name)
        for old, new in self.rename_headers:
            values = [v for n, v in headers if n == old]
            if values and new is not None:
                clear_header(headers, old)
                for v in values:
                    headers.append((new.lower(), v))
        for name, value in self.replace_headers:
            if value is not None and any(n == name for n, _ in headers):
                set_header(headers, name, value)
        for name, value in self.add_headers:
            if value is not None and not any(n == name for n, _ in headers):
                set_header(headers, name, value)
        for name, value in self.append_headers:
            if value is not None:
                add_header(headers, name, value)
        return headers

    def wants_body(self, ex: Exchange, status: int, headers: Headers) -> bool:
        if not self.transforms_body:
            return False
        for name, value in headers:
            if name == b"content-type":
                return is_json(value)
        return False

    def body_filter(self, ex: Exchange, status: int, headers: Headers, body: bytes) -> bytes:
        try:
            doc = json.loads(body)
        except ValueError:
            log.warning("response-transformer: body transform failed: failed parsing json body")
            return body
        if not isinstance(doc, dict):
            return body
        for name in self.remove_json:
            doc.pop(name, None)
        for old, new in self.rename_json:
            if old in doc and new is not None:
                doc[new] = doc.pop(old)
        for name, value in self.replace_json:
            current = doc.get(name, _MISSING)
            if current is not _MISSING and current is not False:  # Lua: present and not false (0 and "" count)
                doc[name] = value
        for name, value in self.add_json:
            current = doc.get(name, _MISSING)
            if current is _MISSING or current is False:
                doc[name] = value
        for name, value in self.append_json:
            current = doc.get(name, _MISSING)
            if isinstance(current, str):
                doc[name] = [current, value]
            elif isinstance(current, list):
                current.append(value)
            else:
                doc[name] = [value]
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
