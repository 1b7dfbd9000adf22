"""Kong's ldap-auth through the in-process gateway, against a real slapd (tests/ldap_server.py): Kong's
spec/03-plugins/20-ldap-auth cases (answers, upstream headers, anonymous, logical AND / OR with key-auth,
hide_credentials, header_type, realm, the cache, StartTLS and LDAPS), and the server failures Kong answers with 500.

One slapd serves the module. Where a test counts what reaches the LDAP server, or needs one that misbehaves, a small
TCP server of its own stands in front of slapd or in its place.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from auth_helpers import (
    call,
    consumer_id,
    http_codec,  # noqa: F401 - the fixture: one codec
    message,
    start,
    upstream,
)
from backends import free_port
from ldap_server import PEOPLE_DN, close_kept_connections, slapd_fixture  # noqa: F401 - the slapd fixture

from gateway.config import ConfigError, parse_config
from gateway.policies.consumers import Directory
from gateway.policies.ldap_auth import handler
from gateway.policies.ldap_auth.handler import LdapAuth, read_credentials, scheme_pattern
from gateway.policies.ldap_auth.schema import LdapAuthConfig
from gateway.runtime import compile_config

CONSUMERS = [
    {"username": "no-body"},
    {"username": "Mickey", "keyauth_credentials": [{"id": "0b9a5c1e-0000-4000-8000-00000000a11c", "key": "Mouse"}]},
]
UNAUTHORIZED = {"message": "Unauthorized"}
UNEXPECTED = {"message": "An unexpected error occurred"}




def ldap(user: str = "einstein", password: str = "password", scheme: str = "ldap") -> str:
    return f"{scheme} " + base64.b64encode(f"{user}:{password}".encode()).decode()


def plugin(port: int, **config: Any) -> dict[str, Any]:
    return {"name": "ldap-auth", "config": {"ldap_host": "127.0.0.1", "ldap_port": port, "base_dn": PEOPLE_DN,
                                            "attribute": "uid", **config}}


async def ldap_gateway(nursery: trio.Nursery, gateway: Any, port: int, *others: dict[str, Any],
                       **config: Any) -> int:
    """The gateway with ldap-auth (and `others`) on its one route, binding to 127.0.0.1:`port`."""
    routes = [{"paths": ["/"], "plugins": [plugin(port, **config), *others]}]
    return await start_gateway(nursery, gateway, routes)


async def start_gateway(nursery: trio.Nursery, gateway: Any, routes: list[dict[str, Any]]) -> int:
    nursery.start_soon(close_kept_connections)
    _, gateway_port = await start(nursery, gateway, routes, consumers=CONSUMERS)
    return gateway_port


def assert_401(reply: Any, www_authenticate: str = "LDAP") -> None:
    assert (reply.status, message(reply)) == (401, UNAUTHORIZED)
    assert reply.header("www-authenticate") == www_authenticate


def assert_500(reply: Any) -> None:
    assert (reply.status, message(reply)) == (500, UNEXPECTED)


# ---- LDAP servers of the tests' own ----------------------------------------------------------------------------------


def frames(buffer: bytearray) -> Iterator[bytes]:
    """Whole LDAP messages taken off the front of `buffer` (a SEQUENCE with a short or long form length); none once
    the bytes are no LDAP (TLS after StartTLS)."""
    while len(buffer) >= 2 and buffer[0] == 0x30:
        first = buffer[1]
        count = first & 0x7F if first & 0x80 else 0
        if len(buffer) < 2 + count:
            return
        length = int.from_bytes(buffer[2:2 + count], "big") if count else first
        end = 2 + count + length
        if len(buffer) < end:
            return
        yield bytes(buffer[:end])
        del buffer[:end]


def operation(frame: bytes) -> int:
    """The identifier of a request's operation: after the SEQUENCE's header and the message id."""
    at = 2 + (frame[1] & 0x7F if frame[1] & 0x80 else 0)
    return frame[at + 2 + frame[at + 1]]


class Relay:
    """A TCP relay in front of slapd: counts connections and keeps the LDAP requests clients sent through it."""

    def __init__(self, target: int, port: int = 0) -> None:
        self.target = target
        self.port = port
        self.connections = 0
        self.requests: list[bytes] = []

    @property
    def binds(self) -> list[bytes]:
        return [r for r in self.requests if operation(r) == 0x60]  # [APPLICATION 0]: a BindRequest

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        self.connections += 1
        server = await trio.open_tcp_stream("127.0.0.1", self.target)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, server, client, False)
            await self._pump(client, server, True)
            nursery.cancel_scope.cancel()

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream, record: bool) -> None:
        buffer = bytearray()
        try:
            while data := await source.receive_some(65536):
                if record:
                    buffer += data
                    self.requests.extend(frames(buffer))
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class Scripted:
    """A server that answers each request it reads with the next of `answers` (then with nothing); `answers` None:
    it accepts and never answers."""

    def __init__(self, answers: list[bytes] | None) -> None:
        self.answers = answers
        self.connections = 0

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._answer, listeners)

    async def _answer(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buffer = bytearray()
        answers = list(self.answers or [])
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    buffer += data
                    for _ in frames(buffer):
                        if self.answers is not None and answers:
                            await stream.send_all(answers.pop(0))
            except trio.BrokenResourceError:
                pass


class Doubling(Scripted):
    """A server that accepts the password "password" with its success written twice in one write, and refuses any
    other."""

    def __init__(self) -> None:
        super().__init__([])

    async def _answer(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buffer = bytearray()
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    buffer += data
                    for frame in frames(buffer):
                        right = frame.endswith(b"\x80\x08password")
                        await stream.send_all(BIND_OK + BIND_OK if right else BIND_REFUSED)
            except trio.BrokenResourceError:
                pass


# BindResponse success (0) and invalidCredentials (49); ExtendedResponse protocolError (2), as a server without TLS
# answers StartTLS
BIND_OK = bytes.fromhex("300c02010161070a010004000400")
BIND_REFUSED = bytes.fromhex("300c02010161070a013104000400")
START_TLS_DECLINED = bytes.fromhex("300c02010178070a010204000400")


# ---- answers and headers ---------------------------------------------------------------------------------------------


async def test_missing_credentials_are_401_with_www_authenticate_ldap(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port)
    assert_401(await call(port, "/get"))


@pytest.mark.parametrize(("header", "value"), [
    ("authorization", "abcd"),
    ("proxy-authorization", "abcd"),
    ("authorization", "ldap"),  # Kong's "ldap ": nginx strips the trailing space
    ("authorization", ldap(scheme="invalidldap")),
    ("authorization", ldap("einstein", "")),
    ("authorization", ldap("einstein", "password:another_password")),
    ("authorization", ldap("einstein", "wrong_password")),
    ("authorization", ldap("einstein", "e0d91f53c566" * 14)),
    ("authorization", ldap("nobody", "password")),
    ("authorization", "ldap !!!!"),
    ("authorization", ldap(":password")),
], ids=["not-ldap", "proxy-not-ldap", "no-value", "other-scheme", "no-password", "two-colons", "wrong-password",
        "long-wrong-password", "unknown-user", "not-base64", "no-username"])
async def test_bad_credentials_are_401_unauthorized(nursery, gateway, slapd, header, value):
    port = await ldap_gateway(nursery, gateway, slapd.port)
    assert_401(await call(port, "/request", [(header, value)]))


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_valid_credentials_pass_with_the_username_as_credential_identifier(nursery, gateway, slapd, method):
    port = await ldap_gateway(nursery, gateway, slapd.port)
    seen = upstream(await call(port, "/request", [("authorization", ldap())], method=method))
    assert seen["x-credential-identifier"] == "einstein"
    assert not {"x-anonymous-consumer", "x-consumer-id", "x-consumer-username"} & set(seen)


@pytest.mark.parametrize("value", [ldap(scheme="LDAP"), ldap(scheme="lDaP\t ")], ids=["upper-case", "mixed-and-tab"])
async def test_the_scheme_is_read_case_insensitively(nursery, gateway, slapd, value):
    """(Kong's " ldap ..." case: HTTP strips a value's leading whitespace; read_credentials below allows it too)"""
    port = await ldap_gateway(nursery, gateway, slapd.port)
    assert upstream(await call(port, "/request", [("authorization", value)]))["x-credential-identifier"] == "einstein"


async def test_a_password_may_contain_a_colon(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port)
    seen = upstream(await call(port, "/request", [("authorization", ldap("curie", "radium:polonium"))]))
    assert seen["x-credential-identifier"] == "curie"


async def test_the_bind_dn_is_attribute_username_base_dn(nursery, gateway, slapd):
    relay = Relay(slapd.port)
    port = await ldap_gateway(nursery, gateway, await nursery.start(relay.serve))
    upstream(await call(port, "/request", [("authorization", ldap("newton", "apple"))]))
    [bind] = relay.binds
    assert f"uid=newton,{PEOPLE_DN}".encode() in bind and bind.endswith(b"\x80\x05apple")


async def test_credentials_reach_the_upstream_by_default(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port)
    seen = upstream(await call(port, "/request", [("authorization", ldap())]))
    assert seen["authorization"] == ldap()


async def test_hide_credentials_removes_authorization_and_proxy_authorization(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port, hide_credentials=True)
    seen = upstream(await call(port, "/request", [("authorization", ldap()), ("proxy-authorization", "x")]))
    assert seen["x-credential-identifier"] == "einstein"
    assert not {"authorization", "proxy-authorization"} & set(seen)


async def test_hide_credentials_keeps_the_headers_of_a_request_let_through_anonymously(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port, hide_credentials=True, anonymous="no-body")
    seen = upstream(await call(port, "/request", [("authorization", ldap(password="nope"))]))
    assert (seen["x-anonymous-consumer"], seen["authorization"]) == ("true", ldap(password="nope"))


async def test_a_realm_is_added_to_www_authenticate(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port, realm="test-ldap")
    assert_401(await call(port, "/request", [("authorization", ldap(password="wrong_password"))]),
               'LDAP realm="test-ldap"')


async def test_a_custom_header_type_is_the_scheme_read_and_announced(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port, header_type="Basic")
    seen = upstream(await call(port, "/request", [("authorization", ldap(scheme="basic"))], method="POST"))
    assert seen["x-credential-identifier"] == "einstein"
    assert_401(await call(port, "/get"), "Basic")
    assert_401(await call(port, "/request", [("authorization", ldap(scheme="invalidldap"))]), "Basic")
    assert_401(await call(port, "/request", [("authorization", ldap())]), "Basic")


async def test_a_custom_header_type_with_a_realm(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port, header_type="Basic", realm="test-ldap")
    assert_401(await call(port, "/get"), 'Basic realm="test-ldap"')


async def test_proxy_authorization_alone_authenticates(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port)
    seen = upstream(await call(port, "/request", [("proxy-authorization", ldap())]))
    assert (seen["x-credential-identifier"], seen["proxy-authorization"]) == ("einstein", ldap())


async def test_proxy_authorization_is_tried_first_and_authorization_after_it_fails(nursery, gateway, slapd):
    relay = Relay(slapd.port)
    port = await ldap_gateway(nursery, gateway, await nursery.start(relay.serve))
    seen = upstream(await call(port, "/request", [("proxy-authorization", ldap("newton", "pear")),
                                                  ("authorization", ldap())]))
    assert seen["x-credential-identifier"] == "einstein"
    assert [b"uid=newton" in bind for bind in relay.binds] == [True, False]


async def test_client_sent_identity_headers_do_not_reach_the_upstream(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port)
    seen = upstream(await call(port, "/request", [("authorization", ldap()), ("x-consumer-id", "forged"),
                                                  ("x-credential-identifier", "forged")]))
    assert seen["x-credential-identifier"] == "einstein"
    assert "x-consumer-id" not in seen


# ---- anonymous -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("anonymous", ["no-body", consumer_id("no-body")], ids=["username", "id"])
async def test_without_credentials_anonymous_is_the_consumer(nursery, gateway, slapd, anonymous):
    port = await ldap_gateway(nursery, gateway, slapd.port, anonymous=anonymous)
    seen = upstream(await call(port, "/request"))
    assert (seen["x-anonymous-consumer"], seen["x-consumer-username"]) == ("true", "no-body")
    assert seen["x-consumer-id"] == consumer_id("no-body")
    assert "x-credential-identifier" not in seen


async def test_right_credentials_with_anonymous_are_the_ldap_credential(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port, anonymous="no-body")
    seen = upstream(await call(port, "/request", [("authorization", ldap())]))
    assert seen["x-credential-identifier"] == "einstein"
    assert not {"x-anonymous-consumer", "x-consumer-username"} & set(seen)


async def test_wrong_credentials_with_anonymous_are_the_anonymous_consumer(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port, anonymous="no-body")
    seen = upstream(await call(port, "/request", [("authorization", ldap(password="wrong"))]))
    assert (seen["x-anonymous-consumer"], seen["x-consumer-username"]) == ("true", "no-body")


# ---- with key-auth on the same route (key-auth, priority 1250, runs first) -------------------------------------------


async def test_logical_and_with_both_credentials_is_the_ldap_credential_without_key_auths_consumer(
        nursery, gateway, slapd):
    """Kong's ldap-auth authenticates a credential with no consumer: the consumer headers key-auth set are cleared"""
    port = await ldap_gateway(nursery, gateway, slapd.port, {"name": "key-auth"})
    seen = upstream(await call(port, "/request", [("apikey", "Mouse"), ("authorization", ldap())]))
    assert seen["x-credential-identifier"] == "einstein"
    assert not {"x-anonymous-consumer", "x-consumer-id", "x-consumer-username"} & set(seen)


async def test_logical_and_with_only_the_api_key_is_ldap_auths_401(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port, {"name": "key-auth"})
    assert_401(await call(port, "/request", [("apikey", "Mouse")]))


@pytest.mark.parametrize("headers", [[("authorization", ldap())], []], ids=["only-ldap", "none"])
async def test_logical_and_without_the_api_key_is_key_auths_401(nursery, gateway, slapd, headers):
    port = await ldap_gateway(nursery, gateway, slapd.port, {"name": "key-auth"})
    reply = await call(port, "/request", headers)
    assert (reply.status, reply.header("www-authenticate")) == (401, "Key")


@pytest.mark.parametrize(("key", "ldap_credentials", "expected"), [
    (True, True, ("Mickey", "0b9a5c1e-0000-4000-8000-00000000a11c")),
    (True, False, ("Mickey", "0b9a5c1e-0000-4000-8000-00000000a11c")),
    (False, True, (None, "einstein")),
    (False, False, ("no-body", None)),
], ids=["both", "key-only", "ldap-only", "none"])
async def test_logical_or_takes_the_first_that_authenticates(nursery, gateway, slapd, key, ldap_credentials,
                                                             expected):
    port = await ldap_gateway(nursery, gateway, slapd.port, {"name": "key-auth", "config": {"anonymous": "no-body"}},
                              anonymous="no-body")
    headers = ([("apikey", "Mouse")] if key else []) + ([("authorization", ldap())] if ldap_credentials else [])
    seen = upstream(await call(port, "/request", headers))
    assert (seen.get("x-consumer-username"), seen.get("x-credential-identifier")) == expected
    assert ("x-anonymous-consumer" in seen) == (expected[0] == "no-body")


# ---- the cache -------------------------------------------------------------------------------------------------------


async def test_a_successful_bind_is_remembered_for_cache_ttl(nursery, gateway, slapd):
    relay = Relay(slapd.port)
    port = await ldap_gateway(nursery, gateway, await nursery.start(relay.serve), cache_ttl=0.4)
    for _ in range(3):
        upstream(await call(port, "/request", [("authorization", ldap())]))
    assert len(relay.binds) == 1
    await trio.sleep(0.45)
    upstream(await call(port, "/request", [("authorization", ldap())]))
    assert len(relay.binds) == 2


async def test_a_refused_bind_is_remembered_too(nursery, gateway, slapd):
    relay = Relay(slapd.port)
    port = await ldap_gateway(nursery, gateway, await nursery.start(relay.serve))
    for _ in range(2):
        assert_401(await call(port, "/request", [("authorization", ldap(password="wrong"))]))
    assert len(relay.binds) == 1


async def test_each_username_and_password_is_bound_on_its_own(nursery, gateway, slapd):
    relay = Relay(slapd.port)
    port = await ldap_gateway(nursery, gateway, await nursery.start(relay.serve))
    upstream(await call(port, "/request", [("authorization", ldap())]))
    assert_401(await call(port, "/request", [("authorization", ldap(password="password2"))]))
    upstream(await call(port, "/request", [("authorization", ldap("newton", "apple"))]))
    assert len(relay.binds) == 3


async def test_concurrent_requests_with_the_same_credentials_wait_for_one_bind(nursery, gateway, slapd):
    relay = Relay(slapd.port)
    port = await ldap_gateway(nursery, gateway, await nursery.start(relay.serve))
    statuses = []

    async def one() -> None:
        statuses.append((await call(port, "/request", [("authorization", ldap())])).status)

    async with trio.open_nursery() as requests:
        for _ in range(5):
            requests.start_soon(one)
    assert (statuses, len(relay.binds)) == ([200] * 5, 1)


def test_waiting_for_another_requests_bind_lasts_at_most_kongs_lock_timeout():
    """kong/global.lua:23-26: LOCK_OPTS timeout 5, the resty.lock mlcache's run_callback waits on."""
    assert handler.LOCK_TIMEOUT_S == 5.0


async def test_requests_waiting_for_a_silent_servers_bind_give_up_at_the_lock_timeout(nursery, gateway, monkeypatch):
    """kong/resty/mlcache/init.lua:651-656 ("could not acquire callback lock: timeout") raised by access.lua:189-190,
    answered 500 by kong/init.lua:406-417: each request waits at most the lock timeout for the others' binds (which
    fail uncached against a silent server), then its own bind's timeout. Lock timeout shortened to 0.5 s here."""
    monkeypatch.setattr(handler, "LOCK_TIMEOUT_S", 0.5)
    silent = Scripted(None)  # accepts, reads, never answers
    port = await ldap_gateway(nursery, gateway, await nursery.start(silent.serve), timeout=200)
    answered: list[float] = []
    started = trio.current_time()

    async def one() -> None:
        assert_500(await call(port, "/request", [("authorization", ldap())]))
        answered.append(trio.current_time() - started)

    with trio.move_on_after(0.5 + 0.2 + 0.4):  # lock + bind + slack; one after another, the 9th would need 1.8 s
        async with trio.open_nursery() as requests:
            for _ in range(9):
                requests.start_soon(one)
    assert len(answered) == 9, [round(t, 2) for t in answered]
    assert silent.connections < 9  # the last ones gave up waiting rather than binding


async def test_plugins_with_the_same_server_base_dn_attribute_and_ttl_share_outcomes(nursery, gateway, slapd):
    """Kong's cache key names no route: another route's plugin finds the bind already made"""
    relay = Relay(slapd.port)
    ldap_port = await nursery.start(relay.serve)
    routes = [{"paths": ["/a"], "plugins": [plugin(ldap_port)]},
              {"paths": ["/b"], "plugins": [plugin(ldap_port, hide_credentials=True)]}]
    port = await start_gateway(nursery, gateway, routes)
    upstream(await call(port, "/a", [("authorization", ldap())]))
    upstream(await call(port, "/b", [("authorization", ldap())]))
    assert len(relay.binds) == 1


def test_the_cache_key_and_credential_id_are_kongs():
    config = LdapAuthConfig(ldap_host="LDAP.example.com", base_dn="dc=example,dc=com", attribute="uid", cache_ttl=2)
    policy = LdapAuth(config, Directory(parse_config("{}", "t.yml")))
    digest = hashlib.sha256(b"ldap.example.com:389:dc=example,dc=com:uid:2:einstein:password").hexdigest()
    assert policy.cache_key(b"einstein", b"password") == "ldap_auth_cache:" + digest


# ---- connections -----------------------------------------------------------------------------------------------------


async def test_connections_are_kept_alive_between_binds(nursery, gateway, slapd):
    relay = Relay(slapd.port)
    port = await ldap_gateway(nursery, gateway, await nursery.start(relay.serve))
    upstream(await call(port, "/request", [("authorization", ldap())]))
    upstream(await call(port, "/request", [("authorization", ldap("newton", "apple"))]))
    assert (relay.connections, len(relay.binds)) == (1, 2)


async def test_a_connection_idle_past_keepalive_is_not_reused(nursery, gateway, slapd):
    relay = Relay(slapd.port)
    port = await ldap_gateway(nursery, gateway, await nursery.start(relay.serve), keepalive=50)
    upstream(await call(port, "/request", [("authorization", ldap())]))
    await trio.sleep(0.06)
    upstream(await call(port, "/request", [("authorization", ldap("newton", "apple"))]))
    assert relay.connections == 2


async def test_start_tls_binds_over_tls(nursery, gateway, slapd):
    relay = Relay(slapd.port)
    port = await ldap_gateway(nursery, gateway, await nursery.start(relay.serve), start_tls=True)
    upstream(await call(port, "/request", [("authorization", ldap())]))
    assert_401(await call(port, "/request", [("authorization", ldap(password="wrong"))]))
    assert relay.requests[0].endswith(b"1.3.6.1.4.1.1466.20037")
    assert relay.binds == []  # the binds went encrypted
    assert relay.connections == 1


async def test_ldaps_binds_over_tls(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.tls_port, ldaps=True)
    upstream(await call(port, "/request", [("authorization", ldap())]))
    assert_401(await call(port, "/request", [("authorization", ldap(password="wrong"))]))


@pytest.mark.parametrize(("host", "tls"), [("127.0.0.1", "ldaps"), ("localhost", "start_tls")])
async def test_verify_ldap_host_accepts_a_certificate_the_trusted_cas_issued_for_the_host(
        nursery, gateway, slapd, monkeypatch, host, tls):
    monkeypatch.setenv("SSL_CERT_FILE", str(slapd.ca_file))
    ldap_port = slapd.tls_port if tls == "ldaps" else slapd.port
    port = await ldap_gateway(nursery, gateway, ldap_port, ldap_host=host, verify_ldap_host=True, **{tls: True})
    upstream(await call(port, "/request", [("authorization", ldap())]))


@pytest.mark.parametrize("tls", ["ldaps", "start_tls"])
async def test_verify_ldap_host_refuses_an_untrusted_certificate_with_401(nursery, gateway, slapd, tls):
    """Kong: a failed TLS handshake fails the bind (401), it does not error"""
    ldap_port = slapd.tls_port if tls == "ldaps" else slapd.port
    port = await ldap_gateway(nursery, gateway, ldap_port, verify_ldap_host=True, **{tls: True})
    assert_401(await call(port, "/request", [("authorization", ldap())]))


async def test_tls_to_a_server_that_speaks_plain_ldap_is_401(nursery, gateway, slapd):
    port = await ldap_gateway(nursery, gateway, slapd.port, ldaps=True, timeout=2000)
    assert_401(await call(port, "/request", [("authorization", ldap())]))


# ---- the server down, slow or odd: Kong's 500 ------------------------------------------------------------------------


async def test_a_server_that_cannot_be_reached_is_500(nursery, gateway):
    port = await ldap_gateway(nursery, gateway, free_port())
    assert_500(await call(port, "/request", [("authorization", ldap())]))


async def test_a_server_that_cannot_be_reached_is_500_even_with_anonymous(nursery, gateway):
    port = await ldap_gateway(nursery, gateway, free_port(), anonymous="no-body")
    assert_500(await call(port, "/request", [("authorization", ldap())]))


async def test_without_credentials_the_server_is_not_needed(nursery, gateway):
    port = await ldap_gateway(nursery, gateway, free_port(), anonymous="no-body")
    assert upstream(await call(port, "/request"))["x-anonymous-consumer"] == "true"


async def test_a_failed_connection_is_remembered_for_cache_ttl_as_kong_caches_the_miss(nursery, gateway, slapd):
    ldap_port = free_port()
    port = await ldap_gateway(nursery, gateway, ldap_port, cache_ttl=0.5)
    assert_500(await call(port, "/request", [("authorization", ldap())]))
    relay = Relay(slapd.port, ldap_port)
    await nursery.start(relay.serve)  # the server is back
    assert_500(await call(port, "/request", [("authorization", ldap())]))
    assert relay.connections == 0
    await trio.sleep(0.5)
    upstream(await call(port, "/request", [("authorization", ldap())]))
    assert relay.connections == 1


async def test_a_server_silent_past_the_timeout_is_500_and_not_remembered(nursery, gateway):
    silent = Scripted(None)
    port = await ldap_gateway(nursery, gateway, await nursery.start(silent.serve), timeout=150)
    for _ in range(2):
        started = trio.current_time()
        assert_500(await call(port, "/request", [("authorization", ldap())]))
        assert 0.15 <= trio.current_time() - started < 1.5
    assert silent.connections == 2


# a SEQUENCE header, the rest never sent: a 2 GiB answer (4 length bytes), and 0x80 (BER's indefinite form), which
# Kong reads as 128 bytes to come
UNFINISHED = {"huge-length": bytes.fromhex("30847fffffff"), "indefinite-length": bytes.fromhex("3080")}


@pytest.mark.parametrize("answer", list(UNFINISHED.values()), ids=list(UNFINISHED))
async def test_an_answer_announcing_more_than_the_server_sends_is_500_and_not_remembered(nursery, gateway, answer):
    """kong/plugins/ldap-auth/ldap.lua:34-55, 72-78: receive(packet_len) times out, parse_ldap_result(nil) raises in
    the cache callback (not cached), access.lua:189-190: 500. The gateway does not wait for an answer over
    MAX_RESPONSE_BYTES: it is the same server error at once."""
    server = Scripted([answer, answer])
    port = await ldap_gateway(nursery, gateway, await nursery.start(server.serve), timeout=100)
    for _ in range(2):
        with trio.fail_after(2):
            assert_500(await call(port, "/request", [("authorization", ldap())]))
    assert server.connections == 2


async def test_an_answer_announcing_more_than_the_server_sends_is_500_even_with_anonymous(nursery, gateway):
    """kong/plugins/ldap-auth/access.lua:312: do_authentication raises before the anonymous consumer is set."""
    server = Scripted([UNFINISHED["huge-length"]])
    port = await ldap_gateway(nursery, gateway, await nursery.start(server.serve), timeout=100, anonymous="no-body")
    with trio.fail_after(2):
        assert_500(await call(port, "/request", [("authorization", ldap())]))


async def test_a_server_that_declines_start_tls_is_500(nursery, gateway):
    server = Scripted([START_TLS_DECLINED])
    port = await ldap_gateway(nursery, gateway, await nursery.start(server.serve), start_tls=True)
    assert_500(await call(port, "/request", [("authorization", ldap())]))


async def test_a_bind_refused_by_a_server_is_401_whatever_the_code(nursery, gateway):
    server = Scripted([BIND_REFUSED])
    port = await ldap_gateway(nursery, gateway, await nursery.start(server.serve))
    assert_401(await call(port, "/request", [("authorization", ldap())]))


@pytest.mark.parametrize("answer", ["300c02010178070a010004000400", "3005020101610000"],
                         ids=["not-a-bind-response", "malformed"])
async def test_an_answer_that_is_no_bind_response_is_401(nursery, gateway, answer):
    server = Scripted([bytes.fromhex(answer)])
    port = await ldap_gateway(nursery, gateway, await nursery.start(server.serve))
    assert_401(await call(port, "/request", [("authorization", ldap())]))


async def test_a_connection_that_answered_more_than_asked_is_not_reused(nursery, gateway):
    """Kong reads one message per bind and lua's setkeepalive refuses a socket with unread data, so the next bind gets
    a new connection and its own answer; a kept connection's leftover success let a wrong password through."""
    server = Doubling()
    port = await ldap_gateway(nursery, gateway, await nursery.start(server.serve))
    upstream(await call(port, "/request", [("authorization", ldap())]))
    assert_401(await call(port, "/request", [("authorization", ldap(password="wrong"))]))
    assert server.connections == 2


# ---- reading the header, sans I/O ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (b"ldap ZWluc3RlaW46cGFzc3dvcmQ=", (b"einstein", b"password")),
    (b"LDAP ZWluc3RlaW46cGFzc3dvcmQ", (b"einstein", b"password")),  # no padding: ngx.decode_base64 takes it
    (b" \tldap   ZWluc3RlaW46cGFzc3dvcmQ=", (b"einstein", b"password")),
    (b"ldap ZWluc3RlaW46cGFzc3dvcmQ=garbage", (b"einstein", b"password")),  # read up to the first "="
    (b"ldap OnBhc3N3b3Jk", (b"", b"password")),  # ":password": an empty username
    (b"ldap YTpiOmM=", (b"a", b"b:c")),  # split at the first colon
    (b"ldap YTpiCg==", (b"a", b"b")),  # "a:b\n": "$" also matches before a final newline
    (b"ldap YQpiOmM=", None),  # "a\nb:c": "." stops at a newline
    (b"ldap ZWluc3RlaW46", None),  # "einstein:": no password
    (b"ldapZWluc3RlaW46cGFzc3dvcmQ=", None),  # no space after the scheme
    (b"basic ZWluc3RlaW46cGFzc3dvcmQ=", None),
    (b"ldap !!!!", None),
])
def test_credentials_are_read_as_kong_reads_them(value, expected):
    assert read_credentials(value, scheme_pattern("ldap")) == expected


def test_header_type_is_a_pattern_as_in_kong():
    assert read_credentials(b"x-ldap YTpi", scheme_pattern("x.ldap")) == (b"a", b"b")


def test_an_unsafe_username_is_escaped_in_x_credential_identifier():
    from gateway.policies.ldap_auth.handler import CredentialIdentity
    assert CredentialIdentity("k", b"a\rb\x00c").upstream_headers == [(b"x-credential-identifier", b"a%0Db%00c")]


def accepting_policy(**config: Any) -> LdapAuth:
    """ldap-auth whose cache already holds a successful bind of einstein:password (no LDAP server is contacted)."""
    policy = LdapAuth(LdapAuthConfig(ldap_host="127.0.0.1", ldap_port=1, base_dn=PEOPLE_DN, attribute="uid",
                                     **config), Directory(parse_config("{}", "t.yml")), cache=handler.BindCache())
    policy.cache.keep(policy.cache_key(b"einstein", b"password"), handler.ACCEPTED, 0, trio.current_time())
    return policy


def bare_exchange(headers: list[tuple[bytes, bytes]]) -> Any:
    """What authenticate_awaited reads and hide_credentials rewrites of an exchange: its request's headers."""
    return SimpleNamespace(request=SimpleNamespace(headers=headers))


async def test_proxy_authorization_spelled_with_an_underscore_is_read_as_kongs_get_header():
    """kong/plugins/ldap-auth/access.lua:244-245 reads both headers with kong.request.get_header, which is
    kong/tools/http.lua:561 ngx.var["http_" .. replace_dashes(name)]: $http_proxy_authorization matches a
    `proxy_authorization` line (kong/templates/nginx_kong.lua:30 underscores_in_headers on)."""
    ex = bare_exchange([(b"proxy_authorization", ldap().encode())])
    found = await accepting_policy().authenticate_awaited(ex)
    assert isinstance(found, handler.CredentialIdentity)
    assert found.upstream_headers == [(b"x-credential-identifier", b"einstein")]


async def test_hide_credentials_removes_only_the_headers_of_the_exact_names():
    """kong/plugins/ldap-auth/access.lua:274-275 clear_header(AUTHORIZATION), clear_header(PROXY_AUTHORIZATION):
    ngx.req.clear_header removes the lines whose name has the same length and letters, any case
    (lua-nginx-module src/ngx_http_lua_headers_in.c:212-213), so a `proxy_authorization` line that authenticated
    still goes upstream."""
    ex = bare_exchange([(b"proxy_authorization", ldap().encode()), (b"authorization", b"other")])
    found = await accepting_policy(hide_credentials=True).authenticate_awaited(ex)
    assert isinstance(found, handler.CredentialIdentity)
    assert found.upstream_headers == [(b"x-credential-identifier", b"einstein")]
    assert ex.request.headers == [(b"proxy_authorization", ldap().encode())]


# ---- configuration ---------------------------------------------------------------------------------------------------

SERVICE = "services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/]}]}]\n"
REQUIRED = "ldap_host: ldap.example.com, base_dn: 'dc=example,dc=com', attribute: uid"


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(SERVICE + text, "t.yml"), "t.yml")
    return [m.removeprefix("t.yml: ") for m in info.value.messages]


def test_kongs_defaults():
    runtime = compile_config(parse_config(SERVICE + f"plugins: [{{name: ldap-auth, config: {{{REQUIRED}}}}}]",
                                          "t.yml"), "t.yml")
    [policy] = runtime.router.match(b"GET", b"/", None, []).payload.policies
    assert isinstance(policy, LdapAuth)
    assert (policy.server.port, policy.server.tls, policy.server.verify) == (389, False, False)
    assert (policy.server.timeout, policy.server.keepalive, policy.ttl, policy.hide) == (10.0, 60.0, 60, False)
    assert policy.unauthorized.extra == [(b"www-authenticate", b"LDAP")]


@pytest.mark.parametrize(("timeout", "keepalive", "expected"), [(0, None, (60.0, 60.0)), (None, 0, (60.0, 0.0)),
                                                                 (0.9, 1500, (60.0, 1.5)), (1500.7, 10, (1.5, 0.01))])
def test_timeout_and_keepalive_mean_what_ngx_makes_of_them(timeout, keepalive, expected):
    """settimeout: whole milliseconds, 0 (or nil) for ngx's 60 s default; setkeepalive: nil for 60 s, 0 for ever"""
    config = LdapAuthConfig(ldap_host="h", base_dn="b", attribute="uid", timeout=timeout, keepalive=keepalive)
    policy = LdapAuth(config, Directory(parse_config("{}", "t.yml")))
    assert (policy.server.timeout, policy.server.keepalive) == expected


@pytest.mark.parametrize(("keepalive", "seconds"), [(0.5, 0.0), (-0.5, 0.0), (1500.7, 1.5), (-1, -1.0),
                                                    (-1e300, -1.0), (1e300, -1.0)])
def test_keepalive_is_whole_milliseconds_as_setkeepalive_reads_it(keepalive, seconds):
    """kong/plugins/ldap-auth/access.lua:116 sock:setkeepalive(conf.keepalive); lua-nginx-module's
    ngx_http_lua_socket_tcp_setkeepalive: `(ngx_msec_t) luaL_checkinteger(L, 2)` truncates toward zero, 0 is no
    timer (kept for ever); a negative count (or one past 2^63, INT64_MIN on x86-64) is a timer already expired: not
    kept (the gateway's -1.0)."""
    config = LdapAuthConfig(ldap_host="h", base_dn="b", attribute="uid", keepalive=keepalive)
    policy = LdapAuth(config, Directory(parse_config("{}", "t.yml")))
    assert policy.server.keepalive == seconds


def test_a_negative_keepalive_is_accepted_as_kong_accepts_it():
    """kong/plugins/ldap-auth/schema.lua:24: keepalive is a number without bounds, and setkeepalive(-1) does not
    raise."""
    runtime = compile_config(parse_config(
        SERVICE + f"plugins: [{{name: ldap-auth, config: {{{REQUIRED}, keepalive: -1}}}}]", "t.yml"), "t.yml")
    [policy] = runtime.router.match(b"GET", b"/", None, []).payload.policies
    assert isinstance(policy, LdapAuth) and policy.server.keepalive < 0


async def test_with_a_negative_keepalive_no_connection_is_reused(nursery, gateway, slapd):
    """lua-nginx-module ngx_http_lua_socket_tcp_setkeepalive: ngx_add_timer(c->read, (ngx_msec_t) -1) sets a timer
    that has already expired, and ngx_http_lua_socket_keepalive_close_handler closes the connection on it."""
    relay = Relay(slapd.port)
    port = await ldap_gateway(nursery, gateway, await nursery.start(relay.serve), keepalive=-1)
    upstream(await call(port, "/request", [("authorization", ldap())]))
    upstream(await call(port, "/request", [("authorization", ldap("newton", "apple"))]))
    assert relay.connections == 2


@pytest.mark.parametrize(("config", "expected"), [
    ("{ldap_host: h, attribute: uid}", "plugins[0].config.base_dn: required field is missing"),
    ("{base_dn: b, attribute: uid}", "plugins[0].config.ldap_host: required field is missing"),
    ("{ldap_host: h, base_dn: b}", "plugins[0].config.attribute: required field is missing"),
    (f"{{{REQUIRED}, ldaps: true, start_tls: true}}",
     "'ldaps' and 'start_tls' cannot be enabled simultaneously"),
    (f"{{{REQUIRED}, ldap_port: 65536}}", "plugins[0].config.ldap_port: expected"),
    ("{ldap_host: 'not a host', base_dn: b, attribute: uid}",
     "plugins[0].config.ldap_host: invalid value: not a host"),
    (f"{{{REQUIRED}, cache_ttl: -1}}", "plugins[0].config.cache_ttl: expected"),
    (f"{{{REQUIRED}, timeout: -1}}", "plugins[0].config.timeout: expected"),
    (f"{{{REQUIRED}, header_type: 'ldap('}}", "plugins[0].config.header_type: Kong reads it as a regular expression"),
    (f"{{{REQUIRED}, realm: \"a\\r\\nb\"}}", "plugins[0].config.realm: expected"),
    (f"{{{REQUIRED}, anonymous: ghost}}", "plugins[0].config.anonymous: no consumer with id or username 'ghost'"),
    (f"{{{REQUIRED}, bind_dn: x}}", "plugins[0].config.bind_dn is not supported by the gateway's ldap-auth plugin"),
], ids=["no-base-dn", "no-host", "no-attribute", "ldaps-and-start-tls", "port", "host", "negative-ttl",
        "negative-timeout", "bad-header-type", "realm-with-newline", "unknown-anonymous", "unknown-key"])
def test_config_errors_name_the_field(config, expected):
    messages = errors(f"plugins: [{{name: ldap-auth, config: {config}}}]")
    assert any(expected in m for m in messages), messages


def test_ldap_auth_cannot_be_configured_for_a_consumer():
    [message] = errors(f"consumers: [{{username: u}}]\n"
                       f"plugins: [{{name: ldap-auth, consumer: u, config: {{{REQUIRED}}}}}]")
    assert message.startswith("plugins[0].consumer: the ldap-auth plugin cannot be configured for a consumer")


def test_a_default_port_can_be_overridden():
    assert LdapAuthConfig(ldap_host="example.com", ldap_port=12345, base_dn="dc=example,dc=com",
                          attribute="cn").ldap_port == 12345

