"""Kong's ldap-auth (kong/plugins/ldap-auth/access.lua): `Authorization: <header_type> base64(username:password)`
(or Proxy-Authorization, tried first) checked by a simple bind to the LDAP server as `<attribute>=<username>,<base_dn>`.

Answers, as Kong's:
- no credentials, credentials that do not parse, a refused bind: 401 "Unauthorized" with `WWW-Authenticate:
  LDAP` (the configured header_type, "ldap" written "LDAP"), followed by ` realm="<realm>"` when a realm is set;
  with `anonymous`, the request goes on as that consumer instead.
- the LDAP server cannot be reached or fails mid-bind (gateway.policies.ldap_auth.client): 500 "An unexpected error
  occurred", anonymous or not (Kong's plugin raises, and its runloop answers so).
- a bind that succeeds: the request goes on authenticated by a credential with no consumer (Kong's
  kong.client.authenticate(nil, credential)): upstream, X-Credential-Identifier is the username and the consumer
  headers are absent (also those an earlier plugin set). The credential's id is Kong's cache key, so rate limiting
  by credential counts per username and password. With hide_credentials, Authorization and Proxy-Authorization are
  both removed, on success only, by their exact names (Kong's clear_header): a line spelled with "_", which is read
  as Kong's kong.request.get_header reads it, still goes upstream.

A bind's outcome is remembered for cache_ttl seconds (0: until the config is reloaded, as Kong's cache is purged
then) under Kong's key, a SHA-256 of ldap_host, ldap_port, base_dn, attribute, cache_ttl, username and password,
shared by the ldap-auth plugins of the config: success, refusal, and the misses Kong caches too (no connection, or
StartTLS declined: the same 500 again until the TTL ends, without contacting the server).

The cache is per host, as Kong's kong.cache is per node (lua-resty-mlcache: an LRU per nginx worker over the
kong_db_cache shared dict all workers of the node see), in two levels:
1. L1, per worker process and config load (BindCache): an outcome found here costs no message to anyone. Concurrent
   requests of the worker with the same credentials wait for one look-up below (and one bind), each at most 5 s in
   all (LOCK_TIMEOUT_S): then, unless an outcome has been cached meanwhile, it is a 500, as mlcache's callback lock
   times out (kong/global.lua LOCK_OPTS, kong/resty/mlcache/init.lua run_callback).
2. L2, the state keeper's host-wide dictionary kong_db_cache (gateway.stores, what proxy-cache uses too), read with
   one bus round trip (SharedState.cache_fetch) when L1 misses, before binding. A bind's outcome goes to both levels
   (the unavailable miss too, as Kong's neg_ttl is cache_ttl). The L2 value carries the wall-clock instant
   (time.time(): the workers are processes of one host) at which it ends, so an L1 entry filled from L2 ends with it,
   as mlcache gives an L1 entry set from the shm the rest of the shm entry's TTL.
3. Kong flips its cache when a config is loaded; here a config load is the workers' generation: `gateway start`
   runs generation 1, each reload starts generation G+1 (gateway/node/root.py), and a worker's SharedState.worker_id
   is "<G>.<index>" (gateway/cli.py), the same G for every worker of one load. The L2 key is Kong's key prefixed by
   "g<G>:", so a reload's workers never find what an older load's workers stored (those entries stay unreachable
   until their TTL ends or the dictionary's LRU evicts them). A digest of the config would not do: Kong forgets on
   every reload, also of an unchanged file, and so does L1 (one per Directory). Generations are counted by the
   root, which outlives every keeper (a restarted keeper starts empty), so a G is never reused for another load
   while its entries exist. A worker restarted within its generation shares them, as nginx's respawned worker still
   sees the shared dict.
4. Without a keeper (it is away, late past 0.25 s, or `shared` is None in unit tests) an L2 look-up is a miss and
   the store is dropped: the cache is then the worker's L1 alone. A failing L2 is never a 500.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
import weakref
from math import inf
from typing import Any

import trio

from gateway.http.server import Exchange
from gateway.memo import Memo
from gateway.policies.consumers import (
    AuthPolicy,
    Directory,
    Identity,
    Rejection,
    decode_base64,
    remove_header,
)
from gateway.policies.header_list import request_header
from gateway.policies.ldap_auth import client
from gateway.policies.ldap_auth.client import Server, Unavailable
from gateway.policies.ldap_auth.schema import LdapAuthConfig
from gateway.stores.cache import DEFAULT_DICTIONARY

log = logging.getLogger("gateway.policies")

CACHE_ENTRIES = 16384  # outcomes remembered per worker and config load; the oldest leaves first
DEFAULT_SOCKET_TIMEOUT_S = 60.0  # ngx's lua_socket_*_timeout: what a timeout of 0 (or null) means
DEFAULT_KEEPALIVE_S = 60.0  # ngx's lua_socket_keepalive_timeout: what a null keepalive means
# kong/global.lua LOCK_OPTS.timeout: how long mlcache lets a miss wait for another's callback of the same key
LOCK_TIMEOUT_S = 5.0
# Kong's "^(.*?):(.+)$" (PCRE without flags: "." stops at a newline, "$" also before a final newline)
_USER_PASSWORD = re.compile(rb"(.*?):(.+)$")
_UNSAFE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # escaped as %XX in a header value, as ngx_lua's set_header does

HOST_DICTIONARY = DEFAULT_DICTIONARY  # L2: the shared dict of Kong's kong.cache, kong_db_cache

ACCEPTED, REFUSED, UNAVAILABLE = "accepted", "refused", "unavailable"
_CODES = {ACCEPTED: b"a", REFUSED: b"r", UNAVAILABLE: b"u"}  # an outcome's letter in an L2 value
_OUTCOMES = {code: outcome for outcome, code in _CODES.items()}


class CredentialIdentity(Identity):
    """A request authenticated by a credential that names no consumer: Kong's kong.client.authenticate(nil,
    credential). Later policies read it as any identity (id, username and custom_id None; no groups)."""

    __slots__ = ()

    def __init__(self, credential_id: str, identifier: bytes) -> None:  # no consumer: Identity's own is not called
        self.consumer = None  # type: ignore[assignment]
        self.id = None  # type: ignore[assignment]
        self.username = None
        self.custom_id = None
        self.groups = ()
        self.credential_id = credential_id
        self.anonymous = False
        self.upstream_headers = [(b"x-credential-identifier", _UNSAFE.sub(_escape, identifier))]
        self.authenticated_groups = None
        self._with_groups = None


class BindCache:
    """Bind outcomes by Kong's cache key, each until an instant (trio.current_time), and the binds under way."""

    __slots__ = ("entries", "pending")

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        self.entries: Memo[str, tuple[str, float]] = Memo(size)
        self.pending: dict[str, trio.Event] = {}

    def get(self, key: str, now: float) -> str | None:
        found = self.entries.get(key)
        if found is None:
            return None
        if found[1] <= now:
            del self.entries[key]
            return None
        return found[0]

    def keep(self, key: str, outcome: str, ttl: float, now: float) -> None:
        self.entries.keep(key, (outcome, now + ttl if ttl > 0 else inf))

    def keep_until(self, key: str, outcome: str, until: float) -> None:
        """Remember an outcome until an instant (trio.current_time; inf: until the config is reloaded)."""
        self.entries.keep(key, (outcome, until))


_CACHES: weakref.WeakKeyDictionary[Directory, BindCache] = weakref.WeakKeyDictionary()


def cache_for(directory: Directory) -> BindCache:
    """The bind cache of one config load (its Directory): Kong purges its cache when a config is loaded."""
    cache = _CACHES.get(directory)
    if cache is None:
        cache = _CACHES[directory] = BindCache()
    return cache


def encode_entry(outcome: str, expires: float) -> bytes:
    """An L2 value: the outcome's letter, a space, and the wall-clock instant (time.time()) it ends, 0 for never."""
    return _CODES[outcome] + b" " + repr(float(expires)).encode()


def decode_entry(raw: bytes) -> tuple[str, float] | None:
    """(outcome, wall-clock end or 0) from an L2 value; None for a value that is not one (a miss, then)."""
    code, _, expires = raw.partition(b" ")
    outcome = _OUTCOMES.get(code)
    if outcome is None:
        return None
    try:
        end = float(expires)
    except ValueError:
        return None
    return (outcome, end) if 0 <= end < inf else None  # not nan, inf or negative: 0 is the only "never"


def config_load(shared: Any) -> str:
    """What names this config load on the host (the module docstring, 3): "g" and the generation, the part of the
    worker id before its dot."""
    worker_id = getattr(shared, "worker_id", None)
    return "g" + (worker_id.partition(".")[0] if isinstance(worker_id, str) else "")


def read_credentials(value: bytes, scheme: re.Pattern[bytes]) -> tuple[bytes, bytes] | None:
    """(username, password) from an Authorization value, as Kong's retrieve_credentials reads it: the lower-cased
    value must start with the scheme pattern (optional whitespace, header_type, whitespace); the rest is base64
    (ngx.decode_base64) of `username:password`, split at the first colon, the password not empty."""
    m = scheme.match(value.lower())
    if m is None:
        return None
    decoded = decode_base64(value[m.end():])
    if decoded is None:
        return None
    found = _USER_PASSWORD.match(decoded)
    if found is None:
        return None
    return found.group(1), found.group(2)


def scheme_pattern(header_type: str) -> re.Pattern[bytes]:
    """Kong's "^\\s*<lower(header_type)>\\s+" (header_type is taken as a regular expression, as Kong takes it)."""
    return re.compile(rb"\s*" + header_type.lower().encode() + rb"\s+")


def keepalive_seconds(keepalive: float | None) -> float:
    """Server.keepalive from Kong's conf.keepalive as setkeepalive reads it (lua-nginx-module's
    ngx_http_lua_socket_tcp_setkeepalive: `(ngx_msec_t) luaL_checkinteger(L, 2)`): whole milliseconds truncated
    toward zero; 0 for ever; nil ngx's 60 s. A negative count becomes a huge unsigned one whose timer (current + it,
    compared signed) has already expired: the connection is closed at once, as is one past 2^63 ms, where the cast
    yields INT64_MIN on x86-64."""
    if keepalive is None:
        return DEFAULT_KEEPALIVE_S
    ms = math.trunc(keepalive) if math.isfinite(keepalive) and abs(keepalive) < 2**63 else -(2**63)
    return ms / 1000 if ms >= 0 else -1.0


def www_authenticate(header_type: str, realm: str | None) -> str:
    scheme = "LDAP" if header_type == "ldap" else header_type  # Kong keeps "LDAP" for configs that predate header_type
    return f'{scheme} realm="{realm}"' if realm is not None else scheme


class LdapAuth(AuthPolicy):
    name = "ldap-auth"
    priority = 1200  # Kong's
    awaited = True
    __slots__ = ("server", "hide", "scheme", "dn_prefix", "dn_suffix", "key_prefix", "ttl", "cache", "shared",
                 "host_prefix", "unauthorized", "failed")

    def __init__(self, config: LdapAuthConfig, directory: Directory, cache: BindCache | None = None,
                 shared: Any = None) -> None:
        super().__init__(directory.anonymous(config.anonymous), True)
        timeout_ms = int(config.timeout or 0)  # ngx truncates to whole milliseconds; 0 means its default
        self.server = Server(config.ldap_host, config.ldap_port, ldaps=config.ldaps, start_tls=config.start_tls,
                             verify=config.verify_ldap_host,
                             timeout=timeout_ms / 1000 if timeout_ms > 0 else DEFAULT_SOCKET_TIMEOUT_S,
                             keepalive=keepalive_seconds(config.keepalive))
        self.hide = config.hide_credentials
        self.scheme = scheme_pattern(config.header_type)
        self.dn_prefix = config.attribute.encode() + b"="
        self.dn_suffix = b"," + config.base_dn.encode()
        self.ttl = config.cache_ttl
        self.key_prefix = b"%s:%d:%s:%s:%d:" % (config.ldap_host.lower().encode(), config.ldap_port,
                                                config.base_dn.encode(), config.attribute.encode(),
                                                int(config.cache_ttl))
        self.cache = cache if cache is not None else cache_for(directory)
        self.shared = shared  # the worker's SharedState (L2, the keeper's kong_db_cache); None: L1 only
        self.host_prefix = config_load(shared) + ":"
        self.unauthorized = Rejection(401, "Unauthorized", www_authenticate(config.header_type, config.realm))
        self.failed = Rejection(500, "An unexpected error occurred")

    async def access(self, ex: Exchange) -> bool:
        try:
            return await super().access(ex)
        except Unavailable as e:
            log.error("ldap-auth: %s", e)
            await self.failed.send(ex)
            return True

    async def authenticate_awaited(self, ex: Exchange) -> Identity | Rejection:
        headers = ex.request.headers
        authorization = request_header(headers, b"authorization")  # (kong.request.get_header: "_" as "-")
        proxy_authorization = request_header(headers, b"proxy-authorization")
        if authorization is None and proxy_authorization is None:
            return self.unauthorized
        found = None
        if proxy_authorization is not None:
            found = await self._check(proxy_authorization)
        if found is None and authorization is not None:
            found = await self._check(authorization)
        if found is None:
            return self.unauthorized
        if self.hide:
            remove_header(ex, b"authorization")
            remove_header(ex, b"proxy-authorization")
        return found

    def cache_key(self, username: bytes, password: bytes) -> str:
        """Kong's: "ldap_auth_cache:" and the SHA-256 (hex) of host:port:base_dn:attribute:cache_ttl:user:password."""
        return "ldap_auth_cache:" + hashlib.sha256(self.key_prefix + username + b":" + password).hexdigest()

    async def _check(self, value: bytes) -> CredentialIdentity | None:
        """The identity the credentials in one header value stand for; None if they do not parse or bind."""
        given = read_credentials(value, self.scheme)
        if given is None:
            return None
        username, password = given
        key = self.cache_key(username, password)
        outcome = await self._outcome(key, username, password)
        if outcome == UNAVAILABLE:
            raise Unavailable(f"{self.server.where}: the last bind with these credentials failed to connect or to "
                              "start TLS (remembered for cache_ttl, as Kong's cache remembers it)", True)
        return CredentialIdentity(key, username) if outcome == ACCEPTED else None

    async def _outcome(self, key: str, username: bytes, password: bytes) -> str:
        """The outcome cached under `key`, or this request's bind's. Waiting for other requests' binds of the same
        key lasts at most LOCK_TIMEOUT_S in all, then fails as mlcache's callback lock does."""
        cache = self.cache
        deadline: float | None = None
        while True:
            outcome = cache.get(key, trio.current_time())
            if outcome is not None:
                return outcome
            underway = cache.pending.get(key)
            if underway is None:
                break
            if deadline is None:
                deadline = trio.current_time() + LOCK_TIMEOUT_S
            with trio.move_on_at(deadline):
                await underway.wait()  # then the cache has its outcome, unless that bind failed uncached: ours then
                continue
            outcome = cache.get(key, trio.current_time())
            if outcome is not None:
                return outcome
            raise Unavailable(f"{self.server.where}: could not acquire callback lock: timeout (another request's "
                              f"bind with these credentials took more than {LOCK_TIMEOUT_S:g}s)", False)
        done = cache.pending[key] = trio.Event()
        try:
            outcome = await self._fetch_host(key)
            if outcome is not None:
                return outcome
            try:
                ok = await client.bind(self.server, self.dn_prefix + username + self.dn_suffix, password)
            except Unavailable as e:
                if e.remembered:
                    self._remember(key, UNAVAILABLE)
                raise
            outcome = ACCEPTED if ok else REFUSED
            self._remember(key, outcome)
            return outcome
        finally:
            del cache.pending[key]
            done.set()

    async def _fetch_host(self, key: str) -> str | None:
        """L2: an outcome another worker of this config load stored, now also in L1 until its end; None if none
        (or no keeper: then the bind decides, as before there was an L2)."""
        shared = self.shared
        if shared is None:
            return None
        try:
            raw = await shared.cache_fetch(HOST_DICTIONARY, self.host_prefix + key)
        except Exception as e:  # noqa: BLE001 - a cache that cannot be read is a miss, never a 500
            log.warning("ldap-auth: the host cache could not be read (%r); binding", e)
            return None
        found = decode_entry(raw) if raw is not None else None
        if found is None:
            return None
        outcome, expires = found
        if expires > 0:
            left = expires - time.time()
            if left <= 0:  # ended since the keeper looked (its clock and ours differ by a bus hop)
                return None
            self.cache.keep_until(key, outcome, trio.current_time() + left)
        else:
            self.cache.keep_until(key, outcome, inf)
        return outcome

    def _remember(self, key: str, outcome: str) -> None:
        """A bind's outcome, in L1 and L2, for cache_ttl (0: until the config is reloaded)."""
        ttl = self.ttl
        self.cache.keep(key, outcome, ttl, trio.current_time())
        shared = self.shared
        if shared is None:
            return
        try:
            shared.cache_store(HOST_DICTIONARY, self.host_prefix + key,
                               encode_entry(outcome, time.time() + ttl if ttl > 0 else 0), ttl)
        except Exception as e:  # noqa: BLE001 - L1 has it; the other workers will bind for themselves
            log.warning("ldap-auth: the host cache could not be written (%r)", e)


def _escape(m: re.Match[bytes]) -> bytes:
    return b"%%%02X" % m.group()[0]
