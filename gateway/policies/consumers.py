"""Who a request is: the consumers and credentials of one config load, the `Identity` that authentication policies put
on `Exchange.consumer`, and the flow every authentication policy shares (Kong's logical AND / OR with `anonymous`).

Everything per consumer and per credential is built here once per config load: the upstream header lines
(X-Consumer-ID, -Username, -Custom-ID, X-Credential-Identifier, X-Anonymous-Consumer), so a request pays one
attribute assignment to be authenticated, and each plugin's table of credentials (`Directory.index`), one for all
its instances.
"""

from __future__ import annotations

import re
from base64 import b64decode
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

from gateway.config import Config, path_of
from gateway.config.consumers import KongPasswordHash, PasswordHash
from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.pipeline.headers import set_consumer
from gateway.policies import cjson

MAX_ARGS = 100  # the query arguments and header lines Kong's get_query and get_headers read (ngx_lua's default)
JSON_UTF8 = b"application/json; charset=utf-8"  # Kong's content type for its error bodies
_B64 = re.compile(rb"[A-Za-z0-9+/]*")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)  # kong/tools/uuid.lua
T = TypeVar("T")


class Consumer:
    """One consumer: its identifiers, tags and ACL groups (in config order)."""

    __slots__ = ("id", "username", "custom_id", "tags", "created_at", "groups", "_anonymous")

    def __init__(self, id: str, username: str | None, custom_id: str | None,  # noqa: A002 - Kong's name
                 tags: tuple[str, ...] = (), created_at: int | None = None) -> None:
        self.id = id
        self.username = username
        self.custom_id = custom_id
        self.tags = tags  # the entity's, as Kong's log serializer copies it
        self.created_at = created_at  # the file's (None: the load time is logged)
        self.groups: tuple[str, ...] = ()
        self._anonymous: Identity | None = None

    def identity(self, credential_id: str | None, identifier: str | None) -> Identity:
        """This consumer as a credential table that names it authenticates it (a session's: Kong's
        `{id = credential_id, consumer_id = consumer.id}`): the credential id, and what X-Credential-Identifier says.
        A credential entity of the config is `credential_identity`'s."""
        return Identity(self, credential_id, identifier)

    def credential_identity(self, credential_id: str | None, identifier: str | None) -> Identity:
        """This consumer as one of its credential entities authenticates it (jwt: X-Credential-Identifier the key;
        key-auth: the credential id; basic-auth, hmac-auth: the username). Such an entity names its consumer as
        `consumer = {id = ...}`, not `consumer_id`: Kong's log serializer writes its authenticated_entity without a
        consumer_id."""
        who = Identity(self, credential_id, identifier)
        who.entity_consumer_id = None
        return who

    @property
    def anonymous(self) -> Identity:
        """This consumer as an `anonymous` fallback: no credential, X-Anonymous-Consumer: true."""
        if self._anonymous is None:
            self._anonymous = Identity(self, None, None)
        return self._anonymous


class Identity:
    """A consumer as one credential authenticated it, or (credential_id None) as the anonymous consumer.

    Later policies, logs and metrics read `ex.consumer`: `id`, `username`, `custom_id`, `groups`, `credential_id`
    (Kong's credential id, for rate limiting by credential), `anonymous`; `entity_consumer_id` is the consumer_id the
    credential table carries (Kong's log serializer's authenticated_entity.consumer_id; None for a credential
    entity)."""

    __slots__ = ("consumer", "id", "username", "custom_id", "groups", "credential_id", "anonymous",
                 "upstream_headers", "entity_consumer_id", "authenticated_groups", "_with_groups")

    def __init__(self, consumer: Consumer, credential_id: str | None, identifier: str | None) -> None:
        self.consumer = consumer
        self.id = consumer.id
        self.username = consumer.username
        self.custom_id = consumer.custom_id
        self.groups = consumer.groups
        self.credential_id = credential_id
        self.anonymous = credential_id is None
        self.entity_consumer_id: str | None = consumer.id
        headers: Headers = [(b"x-consumer-id", consumer.id.encode())]
        if consumer.custom_id is not None:
            headers.append((b"x-consumer-custom-id", consumer.custom_id.encode()))
        if consumer.username is not None:
            headers.append((b"x-consumer-username", consumer.username.encode()))
        if identifier is not None:
            headers.append((b"x-credential-identifier", identifier.encode()))
        if self.anonymous:
            headers.append((b"x-anonymous-consumer", b"true"))
        self.upstream_headers = headers
        # Kong's ngx.ctx.authenticated_groups: groups a session stored (acl decides by them, see its handler)
        self.authenticated_groups: tuple[str, ...] | None = None
        self._with_groups: Identity | None = None

    def with_groups_header(self) -> Identity:
        """The same identity, whose upstream headers also carry X-Consumer-Groups (what acl adds when it admits)."""
        if self._with_groups is None:
            twin = Identity.__new__(Identity)
            for name in Identity.__slots__:
                setattr(twin, name, getattr(self, name))
            twin.upstream_headers = [*self.upstream_headers, (b"x-consumer-groups", ", ".join(self.groups).encode())]
            twin._with_groups = twin
            self._with_groups = twin
        return self._with_groups


class JwtCredential:
    """A jwt secret: whose it is, its algorithm, and its key material as configured (the jwt policy prepares it)."""

    __slots__ = ("identity", "key", "algorithm", "secret", "public_key", "where")

    def __init__(self, identity: Identity, key: str, algorithm: str, secret: str | None, public_key: str | None,
                 where: str) -> None:
        self.identity = identity
        self.key = key
        self.algorithm = algorithm
        self.secret = secret
        self.public_key = public_key
        self.where = where


class Directory:
    """The consumers and credentials of one config load, indexed as the authentication policies look them up."""

    def __init__(self, config: Config) -> None:
        self.consumers: dict[str, Consumer] = {}  # by id
        self._by_username: dict[str, Consumer] = {}
        for c in config.consumers:
            if c.id is None:
                continue
            consumer = Consumer(c.id, c.username, c.custom_id, tuple(c.tags), c.created_at)
            self.consumers[c.id] = consumer
            if c.username is not None:
                self._by_username.setdefault(c.username, consumer)
        groups: dict[str, list[str]] = {}
        # Kong reads a consumer's acls by primary key (LMDB key order DB-less, ORDER BY id on Postgres): by id
        for acl in sorted(config.acls, key=lambda a: a.id or ""):
            if acl.consumer in self.consumers and acl.group not in groups.setdefault(acl.consumer, []):
                groups[acl.consumer].append(acl.group)
        for cid, names in groups.items():
            self.consumers[cid].groups = tuple(names)
        self.jwt: dict[str, JwtCredential] = {}
        for s in config.jwt_secrets:
            owner = self.consumers.get(s.consumer or "")
            if owner is not None and s.key is not None:
                self.jwt[s.key] = JwtCredential(owner.credential_identity(s.id, s.key), s.key, s.algorithm,
                                                s.secret.value if s.secret else None, s.rsa_public_key, path_of(s))
        self.api_keys: dict[str, Identity] = {}
        self.api_key_expiry: dict[str, float] = {}  # a key with a ttl: the Unix time it stops authenticating at
        for k in config.keyauth_credentials:
            owner = self.consumers.get(k.consumer or "")
            if owner is not None and k.key is not None:
                self.api_keys[k.key.value] = owner.credential_identity(k.id, k.id)
                if k.ttl is not None:
                    self.api_key_expiry[k.key.value] = k.ttl
        self.basic: dict[str, tuple[PasswordHash, Identity]] = {}
        for b in config.basicauth_credentials:
            owner = self.consumers.get(b.consumer or "")
            if owner is not None:
                password = b.password.bound(owner.id) if isinstance(b.password, KongPasswordHash) else b.password
                self.basic[b.username] = (password, owner.credential_identity(b.id, b.username))
        self.hmac: dict[str, tuple[str, Identity]] = {}
        for h in config.hmacauth_credentials:
            owner = self.consumers.get(h.consumer or "")
            if owner is not None and h.secret is not None:
                self.hmac[h.username] = (h.secret.value, owner.credential_identity(h.id, h.username))
        self._indexes: dict[Callable[[Directory], Any], Any] = {}

    def index(self, build: Callable[[Directory], T]) -> T:
        """What `build` makes of these credentials (one plugin's lookup table), made on the first call and shared by
        every later one: Kong's instances look credentials up in one cache (kong/plugins/key-auth/handler.lua:181-183
        kong.cache:get), so N instances over M consumers hold one table, not N."""
        if build not in self._indexes:
            self._indexes[build] = build(self)
        made: T = self._indexes[build]
        return made

    def find(self, ref: str) -> Consumer | None:
        """A consumer as Kong's `anonymous` names it (kong/pdk/client.lua load_consumer with search_by_username): the
        one with that id when it is a UUID, else the one with that username."""
        if _UUID.fullmatch(ref) is not None and (consumer := self.consumers.get(ref)) is not None:
            return consumer
        return self._by_username.get(ref)

    def anonymous(self, ref: str | None) -> Identity | None:
        """The identity for a plugin's `anonymous` setting; ValueError (a config error) when it names no one."""
        if ref is None:
            return None
        consumer = self.find(ref)
        if consumer is None:
            raise ValueError(f"config.anonymous: no consumer with id or username {ref!r} (Kong answers every request "
                             "it would admit anonymously with 500)")
        return consumer.anonymous


class Rejection:
    """A failed authentication's answer: status, message, WWW-Authenticate. As Kong's kong.response.error (the
    message with the request id, in the client's preferred format) unless `exit`, which is kong.response.exit's
    JSON body as lua-cjson writes it (what the jwt plugin sends), formatted once."""

    __slots__ = ("status", "message", "body", "extra")

    def __init__(self, status: int, body: Any, www_authenticate: str | None = None, exit: bool = False) -> None:
        self.status = status
        self.message = body if isinstance(body, str) else None
        self.body = cjson.encode(body if isinstance(body, dict) else {"message": body}) \
            if exit or self.message is None else None
        self.extra = [(b"www-authenticate", www_authenticate.encode())] if www_authenticate else None

    async def send(self, ex: Exchange) -> None:
        if self.body is None:
            await ex.respond_error(self.status, self.message, self.extra)
        else:
            await ex.respond(self.status, self.body, JSON_UTF8, self.extra)


class AuthPolicy:
    """Kong's flow for an authentication plugin.

    Without `anonymous` (logical AND): a failure answers the request (401, 403, ...). With it (logical OR): a request
    that another policy already authenticated with a credential passes as it is; otherwise a failure lets it through
    as the anonymous consumer. `run_on_preflight: false` lets OPTIONS requests through untouched."""

    name = ""
    priority = 0
    reads_body = False  # True: `check_body` has the last word on what `authenticate` admitted (hmac-auth's digest)
    searches_body = False  # True: `authenticate_body` (which may read the body) is asked instead of `authenticate`
    awaited = False  # True: `authenticate_awaited` (which may wait on the network: ldap-auth's bind) is asked instead
    __slots__ = ("anon", "run_on_preflight")

    def __init__(self, anonymous: Identity | None, run_on_preflight: bool) -> None:
        self.anon = anonymous
        self.run_on_preflight = run_on_preflight

    def authenticate(self, ex: Exchange) -> Identity | Rejection:  # pragma: no cover - each policy's own
        raise NotImplementedError

    async def check_body(self, ex: Exchange, found: Identity) -> Identity | Rejection:  # pragma: no cover
        raise NotImplementedError

    async def authenticate_body(self, ex: Exchange) -> Identity | Rejection:  # pragma: no cover
        raise NotImplementedError

    async def authenticate_awaited(self, ex: Exchange) -> Identity | Rejection:  # pragma: no cover
        raise NotImplementedError

    async def access(self, ex: Exchange) -> bool:
        if not self.run_on_preflight and ex.request.method == b"OPTIONS":
            return False
        anon = self.anon
        if anon is not None:
            current = ex.consumer
            if current is not None and current.credential_id is not None:
                return False
        if self.searches_body:
            found = await self.authenticate_body(ex)
        elif self.awaited:
            found = await self.authenticate_awaited(ex)
        else:
            found = self.authenticate(ex)
        if self.reads_body and isinstance(found, Identity):
            found = await self.check_body(ex, found)
        if isinstance(found, Identity):
            set_consumer(ex, found)
            return False
        if anon is not None:
            set_consumer(ex, anon)
            return False
        await found.send(ex)
        return True


def decode_base64(text: bytes) -> bytes | None:
    """nginx's ngx.decode_base64: the standard alphabet up to the first "=", padding optional; None if invalid."""
    encoded = text.partition(b"=")[0]
    if not _B64.fullmatch(encoded) or len(encoded) % 4 == 1:
        return None
    return b64decode(encoded + b"=" * (-len(encoded) % 4))


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of a header (Kong's kong.request.get_header)."""
    for n, v in headers:
        if n == name:
            return v
    return None


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


def remove_header(ex: Exchange, name: bytes) -> None:
    """Kong's kong.service.request.clear_header: the upstream request goes without it."""
    ex.request.headers = [hv for hv in ex.request.headers if hv[0] != name]


def query_values(target: bytes, name: str) -> list[str | None]:
    """The decoded values of query argument `name` (None for a bare `?name`), as Kong's kong.request.get_query()
    reads them: split on "&", names and values percent-decoded with "+" as a space, the first MAX_ARGS named
    arguments only (lua_max_uri_args; an empty part or name is skipped and not counted)."""
    _, sep, query = target.partition(b"?")
    if not sep or not query:
        return []
    raw = name.encode()
    if raw not in query and b"%" not in query and b"+" not in query:
        return []
    out: list[str | None] = []
    named = 0
    for part in query.split(b"&"):
        if not part or part[0] == 61:  # (61: "=", a part without a name)
            continue
        k, eq, v = part.partition(b"=")
        if _unquote(k) == name:
            out.append(_unquote(v) if eq else None)
        named += 1
        if named == MAX_ARGS:
            break
    return out


def first_headers(headers: Headers) -> Headers:
    """The header lines Kong's kong.request.get_headers() reads: the first MAX_ARGS (lua_max_req_headers)."""
    return headers if len(headers) <= MAX_ARGS else headers[:MAX_ARGS]


def _unquote(raw: bytes) -> str:
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8", "surrogateescape")
