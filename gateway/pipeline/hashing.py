"""The hash key a consistent-hashing or ip-hash balancer needs, taken from the request as `hash_on` says."""

from __future__ import annotations

from urllib.parse import parse_qsl

from gateway.http.server import Exchange
from gateway.runtime import UpstreamGroup

_HASHING = frozenset({"consistent-hashing", "ip-hash"})


def balancer_key(group: UpstreamGroup, ex: Exchange, path: bytes, query: bytes) -> bytes | None:
    """Kong's hash_on, then hash_fallback when the first yields nothing; ip-hash always hashes the client address."""
    if group.algorithm not in _HASHING:
        return None
    if group.algorithm == "ip-hash":
        return ex.client_ip.encode()
    return _key(group.hash_on, ex, path, query) or _key(group.hash_fallback, ex, path, query)


def _key(spec: tuple[str, bytes], ex: Exchange, path: bytes, query: bytes) -> bytes | None:
    kind, name = spec
    if kind == "ip":
        return ex.client_ip.encode()
    if kind == "consumer":  # the consumer's id, else the credential's; none: hash_fallback, as in Kong
        who = ex.consumer
        if who is None:
            return None
        ident = who.id if who.id is not None else who.credential_id
        return ident.encode() if ident else None
    if kind == "path":
        return path
    if kind == "header":
        for hname, value in ex.request.headers:
            if hname == name:
                return value
        return None
    if kind == "cookie":
        for hname, value in ex.request.headers:
            if hname == b"cookie":
                for part in value.split(b";"):
                    k, _, v = part.strip().partition(b"=")
                    if k == name:
                        return v
        return None
    if kind == "query_arg" and query:
        wanted = name.decode("latin-1")
        for arg, arg_value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if arg == wanted:
                return arg_value.encode("latin-1")
    return None
