"""An authorization server's signing keys (JWKS, RFC 7517), fetched over HTTP off the request path and cached.

`parse_jwks` turns a JWKS document into a `KeySet` (PyJWT prepares each key; keys for encryption, symmetric keys and
keys PyJWT cannot use are skipped). `JwksCache` is the cache's state, sans-I/O: when the keys are due for a refresh
(every `ttl` seconds, sooner after a failure, with backoff), and whether a request holding a token with an unknown
key id may ask for a refetch now (at most once per REFETCH_MIN_S, so a flood of made-up key ids costs one fetch a
second, not one per request). `JwksSource` is the Trio side: a service in the worker's nursery that fetches when
due or when asked, and lets a request wait for that fetch, bounded.

A failed refresh keeps the last keys (an authorization server that is down does not lock everyone out); it is logged
once per change of state.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from gateway.jwtlib import algorithms
from gateway.mcp.httpget import FetchError, Url, get

log = logging.getLogger("gateway.mcp.oauth")

MAX_JWKS_BYTES = 1 << 20  # a larger JWKS document is refused
MAX_KEYS = 64  # keys past this many are ignored
REFETCH_MIN_S = 1.0  # an unknown key id triggers at most one fetch per this many seconds
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # retry delays after consecutive failures

# The asymmetric algorithms a key type (and EC curve) can verify; symmetric keys never come from a JWKS here.
_FAMILIES = {"RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), "P-256": ("ES256",),
             "P-384": ("ES384",), "P-521": ("ES512",), "secp256k1": ("ES256K",), "Ed25519": ("EdDSA",),
             "Ed448": ("EdDSA",)}


class Key:
    """One verifying key: its id, the algorithms it may verify, PyJWT's prepared key."""

    __slots__ = ("kid", "algorithms", "key")

    def __init__(self, kid: str | None, algorithms: tuple[str, ...], key: Any) -> None:
        self.kid = kid
        self.algorithms = algorithms
        self.key = key


class KeySet:
    """The usable keys of one JWKS document."""

    __slots__ = ("keys", "by_kid")

    def __init__(self, keys: list[Key]) -> None:
        self.keys = keys
        # RFC 7517 4.5: keys of different types may share a kid, so a kid names a list and the alg picks among it
        self.by_kid: dict[str, list[Key]] = {}
        for k in keys:
            if k.kid is not None:
                self.by_kid.setdefault(k.kid, []).append(k)

    def candidates(self, kid: Any, alg: str) -> list[Key] | None:
        """The keys a token with this `kid` header and `alg` may be verified with; None: the kid is unknown (a
        refetch may find it). A token without kid is tried against every key that can verify its alg."""
        if kid is None:
            return [k for k in self.keys if alg in k.algorithms]
        if not isinstance(kid, str):
            return []
        keys = self.by_kid.get(kid)
        if keys is None:
            return None
        return [k for k in keys if alg in k.algorithms]


def parse_jwks(body: bytes) -> KeySet:
    """The KeySet of a JWKS document; ValueError when it is not one (not JSON, no `keys` list)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # (nested deeper than Python's parser goes)
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWKS document (no "keys" list)')
    keys: list[Key] = []
    for entry in doc["keys"][:MAX_KEYS]:
        key = _key(entry)
        if key is not None:
            keys.append(key)
    return KeySet(keys)


def _key(entry: Any) -> Key | None:
    from jwt.api_jwk import PyJWK
    from jwt.exceptions import PyJWKError, PyJWTError

    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") not in ("RSA", "EC", "OKP"):
        return None
    ops = entry.get("key_ops")
    if isinstance(ops, list) and "verify" not in ops:
        return None
    curve = "RSA" if entry.get("kty") == "RSA" else entry.get("crv", "")
    family = _FAMILIES.get(curve, ()) if isinstance(curve, str) else ()  # (RFC 7517 5: a key out of range is skipped)
    alg = entry.get("alg")
    if alg is not None:
        if alg not in family:
            return None
        family = (alg,)
    try:
        jwk = PyJWK(entry, algorithm=family[0] if family else None)
        prepared = algorithms()[family[0]].prepare_key(jwk.key) if family else None
    except (PyJWKError, PyJWTError, ValueError, TypeError, KeyError):
        return None
    if prepared is None:
        return None
    public = getattr(prepared, "public_key", None)  # a JWKS with private members: verify with the public half
    if callable(public) and not hasattr(prepared, "verify"):
        prepared = public()
    kid = entry.get("kid")
    return Key(kid if isinstance(kid, str) else None, family, prepared)


class JwksCache:
    """When to fetch the keys (sans-I/O; `now` is any monotonic clock in seconds)."""

    __slots__ = ("ttl", "keyset", "fetched_at", "attempted_at", "failures")

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.keyset: KeySet | None = None
        self.fetched_at = -1e18
        self.attempted_at = -1e18
        self.failures = 0

    def due_at(self) -> float:
        """When the next background fetch is due: now if never fetched, after `ttl`, or after a backoff."""
        if self.failures:
            delay = BACKOFF_S[min(self.failures, len(BACKOFF_S)) - 1]
            return self.attempted_at + (min(delay, self.ttl) if self.keyset is not None else delay)
        return self.fetched_at + self.ttl

    def may_refetch(self, now: float) -> bool:
        """May a request with an unknown key id cause a fetch now?"""
        return now - self.attempted_at >= REFETCH_MIN_S

    def attempt(self, now: float) -> None:
        self.attempted_at = now

    def loaded(self, keyset: KeySet, now: float) -> None:
        self.keyset = keyset
        self.fetched_at = now
        self.failures = 0

    def failed(self) -> None:
        self.failures += 1


class JwksSource:
    """The keys at `url` for one plugin instance in one worker: a background service plus a bounded refetch."""

    def __init__(self, url: str, ttl: float, timeout: float, verify: bool = True, where: str = "") -> None:
        self.url = Url(url)
        self.timeout = timeout
        self.verify = verify
        self.where = where  # the plugin, for log lines
        self.cache = JwksCache(ttl)
        self._wake = trio.Event()
        self._done = trio.Event()
        self._fetching = False

    @property
    def keyset(self) -> KeySet | None:
        return self.cache.keyset

    async def run(self) -> None:
        """Fetch when due (or when a request asks), forever; runs in the worker's nursery."""
        while True:
            with trio.move_on_at(self.cache.due_at()):
                await self._wake.wait()
            self._wake = trio.Event()
            await self.fetch()

    async def fetch(self) -> None:
        """One fetch; every request waiting for it is woken when it ends, whatever the outcome."""
        cache = self.cache
        cache.attempt(trio.current_time())
        self._fetching = True
        try:
            body = await get(self.url, timeout=self.timeout, max_bytes=MAX_JWKS_BYTES, verify=self.verify)
            keyset = parse_jwks(body)
        except (FetchError, ValueError) as e:
            if not cache.failures:
                log.warning("%s: JWKS from %s not loaded (%s); %s", self.where, self.url.text, e,
                            "keeping the last keys" if cache.keyset is not None else "tokens are refused until it is")
            cache.failed()
        except Exception:  # a bug here must not take the worker down with it: keep the last keys
            log.exception("%s: JWKS from %s not loaded", self.where, self.url.text)
            cache.failed()
        else:
            if cache.failures or cache.keyset is None:
                log.info("%s: JWKS loaded from %s (%d keys)", self.where, self.url.text, len(keyset.keys))
            cache.loaded(keyset, trio.current_time())
        finally:
            self._fetching = False
            done, self._done = self._done, trio.Event()
            done.set()

    async def refetch(self, wait: float) -> bool | None:
        """A token names a key id we do not know: ask for a fetch (at most one per REFETCH_MIN_S) and wait for it,
        at most `wait` seconds. True: a fetch ended meanwhile (the caller looks the key up again); False: none was
        due (the keys in hand are the latest); None: the fetch did not end in time (whether the key exists is
        unknown, as when the keys cannot be loaded)."""
        if not self._fetching:
            if not self.cache.may_refetch(trio.current_time()):
                return False
            self._wake.set()
        done = self._done
        with trio.move_on_after(wait):
            await done.wait()
            return True
        return None
