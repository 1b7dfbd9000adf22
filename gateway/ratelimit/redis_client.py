"""The state keeper's line to one Redis: coredis (it runs on Trio through anyio), bounded in time, never raising
anything but StoreError, and replacing its connection after any failure.

coredis is imported only when a plugin uses policy redis (it takes about half a second to import).
Found by testing coredis 6.9 on Trio (tests/ratelimit/test_rl_redis.py keeps the cases): a malformed reply
raises ValueError or InvalidResponse rather than a RedisError, and after a command times out on a connection that
never answers, later commands on it time out too. So every failure is mapped here, and after a timeout or a broken
reply the client is closed and a new one made.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import trio

from gateway.http.net import NameNotResolved, is_ip, resolve
from gateway.http.tls_contexts import client_context
from gateway.ratelimit.redis_script import TAKE_BLOCK, BadReply, Call, Reply, parse_reply

log = logging.getLogger("gateway.ratelimit.redis")

T = TypeVar("T")

NO_TIMEOUT_BOUND_S = 5.0  # redis.timeout 0 (none, in lua-resty-redis) still ends a call after this
RESOLVE_RETRY_S = 1.0  # a Redis host name that did not resolve is asked again after this

_NO_HELLO = re.compile(r"unknown command [`']hello[`']", re.IGNORECASE)  # Redis 5's answer (4's quotes)
_without_hello: set[str] = set()  # addresses of Redis servers found too old (logged once each, per process)


class RedisSettings(msgspec.Struct, frozen=True):
    """Kong's `redis` record as the keeper uses it (timeout in ms, for connecting and for each command)."""

    host: str
    port: int = 6379
    timeout: int = 2000
    username: str | None = None
    password: str | None = None
    database: int = 0
    ssl: bool = False
    ssl_verify: bool = False
    server_name: str | None = None

    @property
    def address(self) -> str:
        return f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}/{self.database}"

    @property
    def timeout_s(self) -> float:
        return self.timeout / 1000 if self.timeout > 0 else NO_TIMEOUT_BOUND_S


class StoreError(Exception):
    """Redis did not answer usefully: unreachable, too slow, refused the command, or a reply that makes no sense."""


class _NamedContext(ssl.SSLContext):
    """An SSLContext whose TLS name is Kong's redis.server_name, whatever host anyio connected to (it passes that
    host otherwise): sent as SNI and, with ssl_verify, checked against the certificate; None: neither."""

    server_name: str | None = None

    def wrap_bio(self, incoming: Any, outgoing: Any, server_side: bool = False, server_hostname: Any = None,
                 session: Any = None) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, self.server_name, session)


def tls_context(settings: RedisSettings) -> ssl.SSLContext | None:
    """The TLS context for `redis.ssl`: verified with ssl_verify, against kong.conf's lua_ssl_trusted_certificate
    (gateway.http.tls_contexts; the system's CAs by default). As lua-resty-redis's sslhandshake(false, server_name,
    ssl_verify): without a server_name no SNI is sent and only the chain is verified, not the host
    (lua-nginx-module ngx_http_lua_socket_tcp.c checks the host, and sends SNI, only when a name is given)."""
    if not settings.ssl:
        return None
    context = client_context(settings.ssl_verify, _NamedContext)
    context.server_name = settings.server_name or None
    if context.server_name is None:
        context.check_hostname = False  # (verify_mode stays CERT_REQUIRED with ssl_verify)
    return context


async def resolved(settings: RedisSettings) -> tuple[str, int]:
    """The address and port to connect to: a host name is resolved by this process's DNS client (kong.conf's dns_*
    keys), as Kong's patched cosockets resolve the Redis host of lua-resty-redis (an SRV record's port replaces
    the configured one)."""
    host = settings.host.strip("[]")
    if is_ip(host):
        return host, settings.port
    return await resolve(host, settings.port)


class RedisStore:
    """One Redis for the keeper. `serve` owns the client (in the keeper's nursery); `take` runs the block script,
    `run` any commands (a worker's: response-ratelimiting's policy redis)."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self._client: Any = None
        self._script: Any = None
        self._renew = trio.Event()
        self._ready = trio.Event()
        self._unresolved: str | None = None  # why the host name has no address, while it has none

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a client open (it connects lazily), replacing it whenever a call asks for a fresh one."""
        import coredis  # here: only keepers with a policy redis plugin pay for the import

        # Its retries, reconnections and failed connections (at ERROR, with a traceback, each time: several a second
        # while a Redis hangs): ours are logged, once per outage
        logging.getLogger("coredis").setLevel(logging.CRITICAL)

        s = self.settings
        started = False
        while True:
            try:
                host, port = await resolved(s)
            except NameNotResolved as e:
                if self._unresolved is None:
                    log.warning("the Redis host of %s does not resolve: %s", s.address, e.strerror)
                self._unresolved = e.strerror
                if not started:
                    started = True
                    task_status.started()
                await trio.sleep(RESOLVE_RETRY_S)
                continue
            self._unresolved = None
            # Kong sends AUTH only with a password (a username alone is ignored) and no CLIENT SETNAME: an ACL
            # user allowed just the policy's commands works (README: what the gateway sends)
            client = coredis.Redis(host=host, port=port, db=s.database,
                                   username=s.username if s.password else None, password=s.password or None,
                                   stream_timeout=s.timeout_s, connect_timeout=s.timeout_s,
                                   ssl_context=tls_context(s))
            try:
                async with client:
                    self._client = client
                    self._script = client.register_script(TAKE_BLOCK)
                    self._ready.set()
                    if not started:
                        started = True
                        task_status.started()
                    await self._renew.wait()
            except Exception as e:  # noqa: BLE001 - closing a broken client may raise anything; we replace it
                log.debug("closing the Redis client for %s: %r", s.address, e)
            self._renew = trio.Event()
            await trio.sleep(0)

    def _discard(self) -> None:
        """The client failed: calls from now on wait for the next one, which `serve` makes at once."""
        if self._ready.is_set():
            self._ready = trio.Event()
            self._client = self._script = None
            self._renew.set()

    async def take(self, call: Call, windows: int) -> Reply:
        """Run the block script once, within the configured timeout; any failure is a StoreError."""
        value = await self.run(lambda client: self._script(keys=call.keys, args=call.args))
        try:
            return parse_reply(_plain(value), windows)
        except BadReply as e:
            self._discard()
            raise StoreError(f"Redis at {self.settings.address}: {e}") from None

    async def run(self, commands: Callable[[Any], Awaitable[T]]) -> T:
        """`commands(client)` once, within the configured timeout; any failure is a StoreError (and the next call
        gets a new client)."""
        bound = self.settings.timeout_s
        try:
            with trio.fail_after(bound):
                await self._ready.wait()
                return await commands(self._client)
        except trio.TooSlowError:
            self._discard()
            if self._unresolved is not None:
                raise StoreError(f"Redis at {self.settings.address}: {self._unresolved}") from None
            raise StoreError(f"no answer from Redis at {self.settings.address} within {bound:g}s") from None
        except Exception as e:  # noqa: BLE001 - coredis raises RedisError, ValueError, TimeoutError, OSError...
            self._discard()
            if _no_hello(e):
                raise StoreError(self._too_old()) from None
            raise StoreError(f"Redis at {self.settings.address}: {type(e).__name__}: {e}") from None

    def _too_old(self) -> str:
        """The Redis refused HELLO (before 6.0): coredis speaks only RESP3, which HELLO opens. Said once per Redis."""
        why = f"Redis at {self.settings.address} does not know HELLO: policy redis needs Redis 6 or later"
        if self.settings.address not in _without_hello:
            _without_hello.add(self.settings.address)
            log.error("%s (its client speaks RESP3 only); every call to it fails", why)
        return why


def _no_hello(e: Exception) -> bool:
    """Is `e` a server's refusal of HELLO (Redis before 6.0: "unknown command `HELLO`")?"""
    return _NO_HELLO.search(str(e)) is not None


def _plain(value: object) -> object:
    """coredis answers a Lua table as a list (RESP3) or tuple; integers stay integers."""
    if isinstance(value, tuple):
        return list(value)
    return value
