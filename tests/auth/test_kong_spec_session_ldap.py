"""Kong's session and ldap-auth plugins where this gateway differed from Kong (kong/plugins/session,
kong/plugins/ldap-auth; spec/03-plugins/30-session, spec/03-plugins/20-ldap-auth), and how the two meet.

The session plugin reads a logout body with kong.request.get_body (kong/plugins/session/session.lua), which reads
nothing from a body nginx wrote to a temporary file: one past 1.25 x client_body_buffer_size (Kong's 8k) after the
request head. The ldap-auth cases run against a real slapd (tests/ldap_server.py).
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import pytest
import trio
from auth_helpers import call, http_codec, start, upstream  # noqa: F401 - http_codec: the fixture
from ldap_server import PEOPLE_DN, close_kept_connections, slapd_fixture  # noqa: F401 - the slapd fixture

from gateway.config.consumers import kong_consumer_id
from gateway.policies.session import handler as session_handler
from gateway.policies.session.lifecycle import Session, Settings
from gateway.policies.session.schema import SessionConfig

SECRET = "a-long-random-session-secret-for-the-tests"
CREDENTIAL = "4fd6b3d8-6c3e-4a5a-9d09-0b6c1b2a9c01"
CONSUMERS = [{"username": "coop", "keyauth_credentials": [{"key": "kong", "id": CREDENTIAL}]},
             {"username": "anon"}]
EXPIRED = "Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0"




def set_cookies(reply: Any) -> list[str]:
    return [v for k, v in reply.headers if k == "set-cookie"]


async def session_gateway(nursery: trio.Nursery, gateway: Any, *others: dict[str, Any], **config: Any) -> int:
    """The session plugin (with `config`), `others`, and key-auth with anonymous on the one route."""
    plugins = [{"name": "session", "config": {"secret": SECRET, **config}}, *others,
               {"name": "key-auth", "config": {"anonymous": "anon"}}]
    _, port = await start(nursery, gateway, [{"paths": ["/"], "plugins": plugins}], consumers=CONSUMERS)
    return port


async def login(port: int) -> str:
    """The Cookie header a browser sends after logging in with key-auth."""
    reply = await call(port, headers=[("apikey", "kong")])
    assert reply.status == 200, reply.body
    return "; ".join(line.split(";", 1)[0] for line in set_cookies(reply))


def padded_form(size: int) -> bytes:
    """A form body of exactly `size` bytes whose first argument is session_logout."""
    head = b"session_logout=1&pad="
    return head + b"x" * (size - len(head))


# ---- session: the logout body --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [8192, 64 * 1024])
async def test_a_logout_body_logs_out(nursery, gateway, size):
    """session.lua's logout: read_body_for_logout finds logout_post_arg in the body. (Kong reads only a body nginx
    kept in memory, about 10 KiB by default; the gateway reads up to 1 MiB, as its other plugins do.)"""
    port = await session_gateway(nursery, gateway, read_body_for_logout=True)
    reply = await call(port, headers=[("cookie", await login(port)),
                                      ("content-type", "application/x-www-form-urlencoded")],
                       method="POST", body=padded_form(size))
    assert (reply.status, reply.body) == (200, b"")
    assert set_cookies(reply)[0].endswith(EXPIRED)


async def test_a_logout_query_arg_logs_out_whatever_the_body_size(nursery, gateway):
    """The query argument is checked before the body is (session.lua), so no body limit applies to it."""
    port = await session_gateway(nursery, gateway, read_body_for_logout=True)
    reply = await call(port, "/?session_logout", headers=[("cookie", await login(port)),
                                                          ("content-type", "application/x-www-form-urlencoded")],
                       method="POST", body=padded_form(64 * 1024))
    assert (reply.status, reply.body) == (200, b"")


# ---- session and ldap-auth -------------------------------------------------------------------------------------------


def ldap(user: str = "einstein", password: str = "password") -> str:
    return "ldap " + base64.b64encode(f"{user}:{password}".encode()).decode()


def ldap_auth(port: int, **config: Any) -> dict[str, Any]:
    return {"name": "ldap-auth", "config": {"ldap_host": "127.0.0.1", "ldap_port": port, "base_dn": PEOPLE_DN,
                                            "attribute": "uid", **config}}


async def test_an_ldap_credential_without_a_consumer_gets_no_session(nursery, gateway, slapd):
    """header_filter.lua saves a session only `if consumer_id`: ldap-auth authenticates a credential without a
    consumer (kong.client.authenticate(nil, credential)), so no cookie is set."""
    nursery.start_soon(close_kept_connections)
    port = await session_gateway(nursery, gateway, ldap_auth(slapd.port, anonymous="anon"))
    reply = await call(port, headers=[("authorization", ldap())])
    assert upstream(reply)["x-credential-identifier"] == "einstein"
    assert set_cookies(reply) == []


async def test_a_session_passes_ldap_auth_with_anonymous_without_a_bind(nursery, gateway, slapd):
    """ldap-auth's logical OR (access.lua): kong.client.get_credential() is the session's credential, so the plugin
    returns at once, even with bad LDAP credentials."""
    nursery.start_soon(close_kept_connections)
    port = await session_gateway(nursery, gateway, ldap_auth(slapd.port, anonymous="anon"))
    reply = await call(port, headers=[("cookie", await login(port)), ("authorization", ldap(password="wrong"))])
    seen = upstream(reply)
    assert (seen["x-consumer-username"], seen["x-credential-identifier"]) == ("coop", CREDENTIAL)


async def test_without_anonymous_ldap_auth_replaces_the_sessions_consumer(nursery, gateway, slapd):
    """ldap-auth's logical AND: it authenticates again and set_consumer(nil, credential) clears the consumer headers
    the session set; header_filter.lua then has no consumer and saves no session. Without LDAP credentials the
    session alone does not pass: 401."""
    nursery.start_soon(close_kept_connections)
    port = await session_gateway(nursery, gateway, ldap_auth(slapd.port))
    cookie = sealed([kong_consumer_id("coop"), CREDENTIAL])
    reply = await call(port, headers=[("cookie", cookie), ("authorization", ldap())])
    seen = upstream(reply)
    assert seen["x-credential-identifier"] == "einstein"
    assert not {"x-consumer-id", "x-consumer-username"} & set(seen)
    assert set_cookies(reply) == []
    refused = await call(port, headers=[("cookie", cookie)])
    assert (refused.status, refused.header("www-authenticate")) == (401, "LDAP")


def sealed(data: list[Any]) -> str:
    """A session cookie for `data` (consumer id, credential id), as an earlier request would have saved it."""
    settings = Settings(msgspec.convert({"secret": SECRET}, SessionConfig))
    session = Session(settings, lambda name: None)
    session.open(int(session_handler.clock()))
    session.set_data(data)
    assert session.save(int(session_handler.clock())) is None
    return "; ".join(line.split(";", 1)[0] for line in session.set_cookies.values())
