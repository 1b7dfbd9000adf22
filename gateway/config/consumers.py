"""Kong's consumers and their credentials, in Kong's declarative form.

Credentials are `jwt_secrets`, `keyauth_credentials`, `basicauth_credentials`, `hmacauth_credentials` and `acls`,
nested under a consumer or top-level with `consumer: <id or username>`. After loading, every credential and
consumer-scoped plugin names its consumer by id, and every consumer has an id: the one given, else Kong's own (a
UUIDv5 of the username, as Kong's declarative loader makes it), so X-Consumer-ID is the same in every worker and
across reloads. A credential without an id gets Kong's too where Kong derives it from the credential's cache_key
(basic-auth and hmac-auth: the username; acls: the consumer and the group), so the credential id that logs and
`limit_by: credential` use is Kong's; elsewhere (key-auth, jwt: Kong's is random) one of our own, stable the same way.

Secrets (a jwt secret, an API key, an hmac-auth secret) are `Secret` objects whose repr never shows them, and a
basic-auth password is hashed as it is decoded (`PasswordHash`): neither can reach a log line, a status page or an
error message.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import string
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from gateway.config.errors import CONTROL_FREE, show
from gateway.config.typedefs import tag_problem

if TYPE_CHECKING:
    from gateway.config.schema import Config

# Kong's declarative config derives entity ids from this namespace (kong/db/schema/others/declarative_config.lua).
_KONG_NAMESPACE = uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5")
_CONSUMERS_NAMESPACE = uuid.uuid5(_KONG_NAMESPACE, "consumers")
# Ours, for what Kong would make random (an id must agree between workers that each load the file).
_OWN_NAMESPACE = uuid.uuid5(_KONG_NAMESPACE, "mcp-gateway")
# The credentials whose id Kong's declarative loader derives from their cache_key (kong/plugins/*/daos.lua), each in
# the namespace of its entity. jwt_secrets and keyauth_credentials are left out: their cache_key is {key}, an `auto`
# field, for which build_cache_key gives up and the id is random.
_CACHE_KEY_NAMESPACES = {attr: uuid.uuid5(_KONG_NAMESPACE, attr)
                         for attr in ("basicauth_credentials", "hmacauth_credentials", "acls")}

JwtAlgorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256",
                       "PS384", "PS512", "EdDSA"]
JWT_ALGORITHMS = frozenset(JwtAlgorithm.__args__)  # type: ignore[attr-defined]
# Text a plugin sends in a header (a realm in WWW-Authenticate): no control characters, so no header injection;
# not empty (Kong's strings are at least one character).
HeaderText = Annotated[str, msgspec.Meta(pattern=CONTROL_FREE, min_length=1)]
CREDENTIALS = ("jwt_secrets", "keyauth_credentials", "basicauth_credentials", "hmacauth_credentials", "acls")


class Secret:
    """A secret string from the config (a jwt secret, an API key): usable as `.value`, never shown."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class PasswordHash:
    """A basic-auth password, kept only as an HMAC-SHA256 under a random salt; compared in constant time."""

    __slots__ = ("_salt", "_digest", "empty")

    def __init__(self, password: str) -> None:
        self.empty = not password  # (Kong refuses an empty password: its strings are at least one character)
        self._salt = os.urandom(16)
        self._digest = hmac.new(self._salt, password.encode(), hashlib.sha256).digest()

    def matches(self, candidate: bytes) -> bool:
        return hmac.compare_digest(hmac.new(self._salt, candidate, hashlib.sha256).digest(), self._digest)

    def __repr__(self) -> str:
        return "<password hash>"

    __str__ = __repr__


class KongPasswordHash(PasswordHash):
    """A basic-auth password as Kong stores it, in a file exported with `_transform: false`: the hex SHA-1 of the
    password followed by the consumer's id (kong/plugins/basic-auth/crypto.lua). A candidate is hashed the same way
    and compared in constant time; `bound` gives the copy that knows its consumer's id."""

    __slots__ = ("stored", "consumer_id")

    def __init__(self, stored: str, consumer_id: str = "") -> None:
        self.empty = not stored
        self.stored = stored.encode()
        self.consumer_id = consumer_id.encode()

    def bound(self, consumer_id: str) -> KongPasswordHash:
        return KongPasswordHash(self.stored.decode(), consumer_id)

    def matches(self, candidate: bytes) -> bool:
        return hmac.compare_digest(hashlib.sha1(candidate + self.consumer_id).hexdigest().encode(), self.stored)


STORED_HASH = re.compile(r"[0-9a-f]{40}")  # what Kong's hash gives: SHA-1, lower-case hex
SECRET_TYPES = (Secret, PasswordHash)


def stored_passwords(raw: dict[str, Any], errors: list[str]) -> None:
    """For a file with `_transform: false` (Kong's export): its basic-auth passwords are Kong's stored hashes, not
    passwords; each is wrapped (KongPasswordHash) before decoding, or refused when it cannot be one."""
    places: list[tuple[str, Any]] = [("basicauth_credentials", raw.get("basicauth_credentials"))]
    consumers = raw.get("consumers")
    for i, consumer in enumerate(consumers if isinstance(consumers, list) else ()):
        if isinstance(consumer, dict):
            places.append((f"consumers[{i}].basicauth_credentials", consumer.get("basicauth_credentials")))
    for where, creds in places:
        for j, cred in enumerate(creds if isinstance(creds, list) else ()):
            if not isinstance(cred, dict) or not isinstance(cred.get("password"), str):
                continue
            if STORED_HASH.fullmatch(cred["password"]) is None:
                errors.append(f"{where}[{j}].password: with _transform: false a password is Kong's stored hash (40 "
                              "lower-case hex digits: SHA-1 of the password and the consumer id); remove "
                              "_transform: false to give the password itself")
                continue
            cred["password"] = KongPasswordHash(cred["password"])


def decode_hook(typ: type, value: Any) -> Any:
    """msgspec's dec_hook for the secret types: a string, wrapped (or hashed) at once; the value is never quoted."""
    if typ in SECRET_TYPES:
        if isinstance(value, typ):  # already wrapped (stored_passwords)
            return value
        if not isinstance(value, str):
            raise TypeError("expected a string (the value is not shown: it is a secret)")
        return typ(value)
    raise NotImplementedError


class _Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, dict=True):
    """Unknown keys are errors; `dict=True` lets the loader note each entity's source path."""


class JwtSecret(_Base):
    consumer: str | None = None  # top-level only: the consumer's id or username
    key: str | None = None  # what the token's key_claim_name (iss) names; Kong makes a random one when absent
    secret: Secret | None = None  # HS*: the shared secret; Kong makes a random one when absent
    algorithm: JwtAlgorithm = "HS256"
    rsa_public_key: str | None = None  # RS*, PS*, ES*, EdDSA: the public key (PEM)
    id: str | None = None
    tags: list[str] = []


class KeyAuthCredential(_Base):
    consumer: str | None = None
    key: Secret | None = None  # Kong makes a random one when absent
    # Kong's `ttl = true` entity: DB-less Kong reads it as the Unix time the key stops authenticating at
    # (kong/db/strategies/off/init.lua, process_ttl_field); null: never
    ttl: float | None = None
    id: str | None = None
    tags: list[str] = []


class BasicAuthCredential(_Base):
    username: str
    password: PasswordHash
    consumer: str | None = None
    id: str | None = None
    tags: list[str] = []


class HmacAuthCredential(_Base):
    username: str
    secret: Secret | None = None  # Kong makes a random one when absent
    consumer: str | None = None
    id: str | None = None
    tags: list[str] = []


class Acl(_Base):
    group: str
    consumer: str | None = None
    id: str | None = None
    tags: list[str] = []


_UNSAFE = {chr(c) for c in range(32) if c != 9} | {"\x7f"}  # control characters cannot go into a header value


def _header_safe(value: str | None) -> bool:
    return value is None or _UNSAFE.isdisjoint(value)


def path_of(obj: Any) -> str:
    return getattr(obj, "_path", "?")


def kong_consumer_id(username: str) -> str:
    """The id Kong's declarative loader gives a consumer that has a username and no id."""
    return str(uuid.uuid5(_CONSUMERS_NAMESPACE, username))


def kong_credential_id(attr: str, cred: Any, consumer_ref: str | None) -> str | None:
    """The id Kong's declarative loader gives a credential without one (declarative_config.lua build_cache_key and
    generate_uuid): a UUIDv5 of "<entity>:*:<cache_key values>"; None where Kong's is random. `consumer_ref` is the
    consumer as Kong's cache key names it: the `consumer:` string as written, or for a nested credential that names
    none its consumer's id (None when Kong's is random: a consumer with neither id nor username)."""
    if attr in ("basicauth_credentials", "hmacauth_credentials"):  # cache_key {username}
        values = cred.username
    elif attr == "acls" and consumer_ref is not None:  # cache_key {consumer, group}
        values = f"{consumer_ref}:{cred.group}"
    else:
        return None
    return str(uuid.uuid5(_CACHE_KEY_NAMESPACES[attr], f"{attr}:*:{values}"))


def flatten_consumers(config: Config) -> None:
    """Give every consumer an id, and move its nested credentials and plugins to the top-level lists, naming it."""
    for consumer in config.consumers:
        kong_id = consumer.id  # the id Kong's cache keys see (None: Kong's is random)
        if consumer.id is None:
            if consumer.username is not None:
                consumer.id = kong_id = kong_consumer_id(consumer.username)
            elif consumer.custom_id is not None:
                consumer.id = str(uuid.uuid5(_OWN_NAMESPACE, "consumers:custom_id:" + consumer.custom_id))
            consumer._derived_id = True  # type: ignore[attr-defined]  # two equal ones: their usernames are said
        for attr in CREDENTIALS:
            nested = getattr(consumer, attr)
            for cred in nested:
                # As Kong's flatten: a nested credential may name any consumer that exists (by id or username); it
                # belongs to the one it is nested under all the same (declarative_config.lua populate_references)
                named = cred.consumer
                cred._nested = named if named is not None and named not in (consumer.id, consumer.username) else True
                cred._consumer_ref = kong_id if named is None else named
                cred._parent = consumer  # its consumer, whatever another consumer's username is (check_consumers)
                cred.consumer = consumer.id  # None when the consumer has neither username nor custom_id (an error)
            getattr(config, attr).extend(nested)
            setattr(consumer, attr, [])
        for plugin in consumer.plugins:
            plugin.consumer = consumer.id
            plugin._parent = consumer  # type: ignore[attr-defined]  # as a nested credential's
            config.plugins.append(plugin)
        consumer.plugins = []


def derived_id(entity: Any) -> bool:
    """Whether a consumer's id is the one the gateway derived from its username or custom_id (none was written):
    two equal derived ids are two equal usernames (or custom_ids), which is the error to say."""
    return getattr(entity, "_derived_id", False)


def check_consumers(config: Config, errors: list[str]) -> None:
    """Consumers are identifiable and unique; every credential names a consumer that exists (then by its id);
    keys and usernames that identify a credential are unique. Secret values are never quoted."""

    by_id: dict[str | None, Any] = {}
    by_username: dict[str, Any] = {}
    seen: dict[tuple[str, str], Any] = {}
    for consumer in config.consumers:
        where = path_of(consumer)
        if consumer.username is None and consumer.custom_id is None:
            errors.append(f"{where}: set username or custom_id (or both)")
            continue
        for field in ("username", "custom_id"):
            if getattr(consumer, field) == "":
                errors.append(f"{where}.{field}: must not be empty")
        for i, tag in enumerate(consumer.tags):
            if problem := tag_problem(tag):
                errors.append(f"{where}.tags[{i}]: {problem}")
        for field in ("id", "username", "custom_id"):
            value = getattr(consumer, field)
            if value is None:
                continue
            if not _header_safe(value):
                errors.append(f"{where}.{field}: control characters are not allowed (it is sent upstream in a header)")
            other = seen.get((field, value))
            if other is not None and field != "id":  # (ids: the loader's _check_ids, for every kind of entity)
                errors.append(f"{where}.{field}: {value!r} is already used by {path_of(other)}")
            seen[(field, value)] = consumer
        by_id.setdefault(consumer.id, consumer)
        if consumer.username is not None:
            by_username.setdefault(consumer.username, consumer)
    counters: dict[tuple[str, str | None], int] = {}
    unique: dict[tuple[str, str], Any] = {}
    for attr in CREDENTIALS:
        given_ids: dict[str, Any] = {}  # a derived id may not repeat another (Kong: "uniqueness violation")
        for cred in getattr(config, attr):
            if cred.id is not None:
                given_ids.setdefault(cred.id, cred)
        for cred in getattr(config, attr):
            where = path_of(cred)
            nested = getattr(cred, "_nested", None)
            if isinstance(nested, str) and nested not in by_username and nested not in by_id:
                errors.append(f"{where}.consumer: no consumer with id or username {show(nested)}")
                continue
            if cred.consumer is None:
                if nested:
                    continue  # its consumer has neither username nor custom_id: reported above
                errors.append(f"{where}.consumer: name the consumer (its id or username), or nest the credential "
                              "under it")
                continue
            owner = _owner(cred, by_username, by_id)
            if owner is None:
                errors.append(f"{where}.consumer: no consumer with id or username {cred.consumer!r}")
                continue
            consumer_ref = getattr(cred, "_consumer_ref", cred.consumer)  # (top-level: as written)
            cred.consumer = owner.id
            for field in ("id", "key", "username", "group"):
                value = getattr(cred, field, None)
                if isinstance(value, str) and not _header_safe(value):
                    errors.append(f"{where}.{field}: control characters are not allowed (it is sent upstream in a "
                                  "header)")
            n = counters[(attr, owner.id)] = counters.get((attr, owner.id), -1) + 1
            if cred.id is None:
                cred.id = kong_credential_id(attr, cred, consumer_ref)
                if cred.id is None:  # Kong's would be random
                    cred.id = str(uuid.uuid5(_OWN_NAMESPACE, f"{attr}:{owner.id}:{n}"))
                elif (other := given_ids.setdefault(cred.id, cred)) is not cred:
                    _repeated_id(attr, cred, other, errors)
            _check_credential(attr, cred, where, unique, errors)
    for plugin in config.plugins:
        if plugin.consumer is not None:
            owner = _owner(plugin, by_username, by_id)
            if owner is None:
                errors.append(f"{path_of(plugin)}.consumer: no consumer with id or username {plugin.consumer!r}")
            else:
                plugin.consumer = owner.id


def _owner(entity: Any, by_username: dict[str, Any], by_id: dict[str | None, Any]) -> Any | None:
    """The consumer a credential or plugin belongs to, by Kong's declarative rules: a nested one, the consumer it is
    nested under (declarative_config.lua populate_references gives it its parent's primary key); a `consumer:` string,
    the consumer with that username, else the one with that id (find_entity: by_key before by_id)."""
    parent = getattr(entity, "_parent", None)
    if parent is not None:
        return parent
    owner = by_username.get(entity.consumer)
    return owner if owner is not None else by_id.get(entity.consumer)


def _repeated_id(attr: str, cred: Any, other: Any, errors: list[str]) -> None:
    """Two credentials that get one id, as Kong's declarative loader refuses them (declarative_config.lua
    populate_references: "uniqueness violation"). Two basic-auth or hmac-auth ones of one username are reported by
    their username (_check_credential)."""
    where = path_of(cred)
    if attr == "acls" and other.group == cred.group and other.consumer == cred.consumer:
        errors.append(f"{where}.group: {show(cred.group)} is already given to this consumer by {path_of(other)} "
                      "(Kong refuses a group given twice: both get the same id); keep one")
    elif getattr(other, "username", None) != getattr(cred, "username", None) or attr == "acls":
        errors.append(f"{where}.id: {cred.id!r}, the id Kong derives for it, is already used by {path_of(other)}")


def _check_credential(attr: str, cred: Any, where: str, unique: dict[tuple[str, str], Any],
                      errors: list[str]) -> None:
    if attr == "jwt_secrets":
        for field in ("key", "secret", "rsa_public_key"):  # Kong's strings are one character at least (len_min 1)
            value = getattr(cred, field)
            if value is not None and not (value.value if isinstance(value, Secret) else value):
                errors.append(f"{where}.{field}: must not be empty (an empty HMAC secret would verify any token "
                              "signed with the empty key)" if field == "secret" else f"{where}.{field}: must not "
                              "be empty")
        if cred.key is None:
            cred.key = secrets.token_hex(16)  # as Kong: a random key (that no token can name unless told)
        if cred.algorithm.startswith("HS"):
            if cred.secret is None:
                cred.secret = Secret(secrets.token_hex(16))
        elif not cred.rsa_public_key and not cred.algorithm.startswith("ES"):  # (Kong requires none for ES*)
            errors.append(f"{where}.rsa_public_key: algorithm {cred.algorithm} needs the consumer's public key (PEM)")
        _unique(unique, ("jwt key", cred.key), cred, f"{where}.key: {cred.key!r}", errors)
    elif attr == "keyauth_credentials":
        if cred.key is None:
            cred.key = Secret(secrets.token_hex(16))
        elif not cred.key.value:
            errors.append(f"{where}.key: must not be empty")
        _unique(unique, ("api key", cred.key.value), cred, f"{where}.key: this key", errors)
    elif attr == "basicauth_credentials":
        if not cred.username:
            errors.append(f"{where}.username: must not be empty")
        if cred.password.empty:
            errors.append(f"{where}.password: must not be empty")
        _unique(unique, ("basic-auth username", cred.username), cred, f"{where}.username: {cred.username!r}", errors)
    elif attr == "hmacauth_credentials":
        if not cred.username:
            errors.append(f"{where}.username: must not be empty")
        if cred.secret is None:
            cred.secret = Secret(_random_string())
        elif not cred.secret.value:
            errors.append(f"{where}.secret: must not be empty")
        _unique(unique, ("hmac-auth username", cred.username), cred, f"{where}.username: {cred.username!r}", errors)
    elif not cred.group:
        errors.append(f"{where}.group: must not be empty")


def _random_string() -> str:
    """Kong's kong.tools.rand.random_string: 32 letters and digits."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))


def _unique(unique: dict[tuple[str, str], Any], key: tuple[str, str], cred: Any, what: str,
            errors: list[str]) -> None:
    other = unique.get(key)
    if other is not None:
        errors.append(f"{what} is already used by {path_of(other)}")
    else:
        unique[key] = cred
