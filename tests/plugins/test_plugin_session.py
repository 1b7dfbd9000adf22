"""Kong's session plugin through the in-process gateway (spec/03-plugins/30-session/01-access_spec.lua and
03-session_spec.lua's cases with cookie storage): the cookies a response sets, and what a cookie does for the next
request."""

from __future__ import annotations

import json

import msgspec
import pytest
from plugin_helpers import call, http_codec, plugin, refused, start  # noqa: F401 - http_codec: the fixture

from gateway.config.consumers import kong_consumer_id as consumer_id
from gateway.policies.session import handler as session_handler
from gateway.policies.session.lifecycle import Session, Settings
from gateway.policies.session.schema import SessionConfig

SECRET = "a-long-random-session-secret-for-the-tests"
CREDENTIAL = "4fd6b3d8-6c3e-4a5a-9d09-0b6c1b2a9c01"
CONSUMERS = [
    {"username": "coop", "keyauth_credentials": [{"key": "kong", "id": CREDENTIAL}]},
    {"username": "anon"},
]
# Kong's spec: the anonymous consumer is turned away, so only a key or a session gets in
TERMINATE_ANON = {"name": "request-termination", "consumer": "anon",
                  "config": {"status_code": 403, "message": "So it goes."}}
EXPIRED = "Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0"


async def session_gateway(nursery, gateway, terminate=True, key_auth=None, **config):  # noqa: ANN001,ANN003,ANN201
    """key-auth (anonymous: anon) and a session plugin with `config` on every path."""
    plugins = [plugin("session", secret=SECRET, **config),
               {"name": "key-auth", "config": {"anonymous": "anon", **(key_auth or {})}}]
    doc = {"consumers": CONSUMERS, "plugins": [TERMINATE_ANON] if terminate else []}
    return await start(nursery, gateway, [{"paths": ["/"], "plugins": plugins}], **doc)


def upstream(reply) -> dict[str, str]:  # noqa: ANN001
    """The headers the echo backend received, one value each."""
    assert reply.status == 200, (reply.status, reply.body)
    return {name: value for name, value in reply.json()["headers"]}


def message(reply) -> dict:  # noqa: ANN001
    body = json.loads(reply.body)
    body.pop("request_id", None)
    return body


def set_cookies(reply) -> list[str]:  # noqa: ANN001
    return [v for k, v in reply.headers if k == "set-cookie"]


def cookie_header(reply) -> str:  # noqa: ANN001
    """The Cookie header a browser sends back after this response."""
    return "; ".join(line.split(";", 1)[0] for line in set_cookies(reply))


async def login(port: int, target: str = "/") -> str:
    reply = await call(port, target, headers=[("apikey", "kong")])
    assert reply.status == 200, reply.body
    return cookie_header(reply)


def sealed(data: list, audience: str = "default", **config: object) -> str:
    """A cookie made directly with the session lifecycle (as if an earlier request had saved it)."""
    settings = Settings(msgspec.convert({"secret": SECRET, "audience": audience, **config}, SessionConfig))
    session = Session(settings, lambda name: None)
    session.open(int(session_handler.clock()))
    session.set_data(data)
    session.set_subject("coop")
    assert session.save(int(session_handler.clock())) is None
    return "; ".join(line.split(";", 1)[0] for line in session.set_cookies.values())


@pytest.fixture
def clock(monkeypatch):  # noqa: ANN001,ANN201
    """The session plugin's clock, moved by hand: `clock.now += seconds`."""
    class Clock:
        now = 1_800_000_000.0

        def __call__(self) -> float:
            return self.now
    fake = Clock()
    monkeypatch.setattr(session_handler, "clock", fake)
    return fake


# --- a new session ----------------------------------------------------------------------------------------------


async def test_a_key_authenticated_request_gets_a_session_cookie_with_kongs_attributes(nursery, gateway):
    _, port = await session_gateway(nursery, gateway)
    reply = await call(port, headers=[("apikey", "kong")])
    assert reply.status == 200
    [cookie] = set_cookies(reply)
    assert cookie.split("; ")[0].split("=")[0] == "session"
    assert cookie.split("; ")[1:] == ["Path=/", "SameSite=Strict", "Secure", "HttpOnly"]


async def test_cookie_settings_shape_the_set_cookie(nursery, gateway):
    _, port = await session_gateway(nursery, gateway, cookie_name="da_cookie", cookie_same_site="Lax",
                                    cookie_http_only=False, cookie_secure=False, cookie_path="/api",
                                    cookie_domain="example.test")
    [cookie] = set_cookies(await call(port, headers=[("apikey", "kong")]))
    name_value, *attributes = cookie.split("; ")
    assert name_value.startswith("da_cookie=")
    assert attributes == ["Domain=example.test", "Path=/api", "SameSite=Lax"]


async def test_an_anonymous_request_gets_no_session(nursery, gateway):
    _, port = await session_gateway(nursery, gateway, terminate=False)
    reply = await call(port)
    assert upstream(reply)["x-anonymous-consumer"] == "true"
    assert set_cookies(reply) == []


async def test_remember_sets_a_persistent_remember_cookie_after_the_session_cookie(nursery, gateway):
    _, port = await session_gateway(nursery, gateway, remember=True, remember_rolling_timeout=3600)
    session_cookie, remember_cookie = set_cookies(await call(port, headers=[("apikey", "kong")]))
    assert session_cookie.startswith("session=") and "Expires=" not in session_cookie
    parts = remember_cookie.split("; ")
    assert parts[0].startswith("remember=")
    assert parts[1:5] == ["Path=/", "SameSite=Strict", "Secure", "HttpOnly"]
    assert parts[5].startswith("Expires=") and parts[5].endswith(" GMT")
    assert parts[6] == "Max-Age=3600"


async def test_response_headers_describe_the_new_session(nursery, gateway):
    _, port = await session_gateway(nursery, gateway, response_headers=["id", "timeout", "audience", "subject"])
    reply = await call(port, headers=[("apikey", "kong")])
    assert len(reply.header("session-id") or "") == 43  # 32 random bytes, base64url
    assert (reply.header("session-timeout"), reply.header("session-audience"), reply.header("session-subject")) \
        == ("900", "default", "coop")


# --- the cookie as authentication ---------------------------------------------------------------------------------


async def test_the_cookie_alone_authenticates_the_next_request(nursery, gateway):
    _, port = await session_gateway(nursery, gateway)
    assert (await call(port)).status == 403  # anonymous: request-termination's answer
    reply = await call(port, headers=[("cookie", await login(port))])
    assert reply.status == 200
    assert set_cookies(reply) == []  # a fresh session is not saved again


async def test_a_session_request_carries_the_consumer_headers_upstream(nursery, gateway):
    _, port = await session_gateway(nursery, gateway)
    seen = upstream(await call(port, headers=[("cookie", await login(port))]))
    assert seen["x-consumer-id"] == consumer_id("coop")
    assert seen["x-consumer-username"] == "coop"
    assert seen["x-credential-identifier"] == CREDENTIAL
    assert not {"x-anonymous-consumer", "x-consumer-custom-id", "x-authenticated-groups"} & set(seen)


async def test_stored_groups_reach_upstream_as_x_authenticated_groups(nursery, gateway):
    _, port = await session_gateway(nursery, gateway)
    cookie = sealed([consumer_id("coop"), CREDENTIAL, ["agents", "doubleagents"]])
    seen = upstream(await call(port, headers=[("cookie", cookie)]))
    assert seen["x-authenticated-groups"] == "agents, doubleagents"


@pytest.mark.parametrize(("always", "groups", "status"), [(True, ["gold"], 200), (True, ["lead"], 403),
                                                          (False, ["gold"], 403)])
async def test_acl_decides_by_the_groups_a_session_stored_as_kongs_authenticated_groups(nursery, gateway, always,
                                                                                        groups, status):
    """Kong's session sets ngx.ctx.authenticated_groups; acl decides by them when the request has no credential, or
    with always_use_authenticated_groups (coop's own group is bronze; its session carries a credential)."""
    consumers = [{**CONSUMERS[0], "acls": [{"group": "bronze"}]}, CONSUMERS[1]]
    plugins = [plugin("session", secret=SECRET), plugin("key-auth", anonymous="anon"),
               plugin("acl", allow=["gold"], always_use_authenticated_groups=always)]
    _, port = await start(nursery, gateway, [{"paths": ["/"], "plugins": plugins}], consumers=consumers)
    reply = await call(port, headers=[("cookie", sealed([consumer_id("coop"), CREDENTIAL, groups]))])
    assert reply.status == status, reply.body
    if status == 200:  # admitted by them: X-Authenticated-Groups upstream, not X-Consumer-Groups
        seen = upstream(reply)
        assert seen["x-authenticated-groups"] == "gold" and "x-consumer-groups" not in seen


async def test_request_headers_go_upstream_with_the_session(nursery, gateway):
    _, port = await session_gateway(nursery, gateway, request_headers=["audience", "subject", "absolute-timeout"])
    seen = upstream(await call(port, headers=[("cookie", await login(port))]))
    assert (seen["session-audience"], seen["session-subject"]) == ("default", "coop")
    assert 86390 <= int(seen["session-absolute-timeout"]) <= 86400


async def test_a_chunked_session_over_4_kb_authenticates(nursery, gateway):
    _, port = await session_gateway(nursery, gateway)
    groups = [f"{i:04d}-" + "".join(f"{(i * 7919 + j) % 65536:04x}" for j in range(12)) for i in range(150)]
    cookie = sealed([consumer_id("coop"), CREDENTIAL, groups])
    assert [pair.split("=")[0] for pair in cookie.split("; ")][:2] == ["session", "session2"]
    seen = upstream(await call(port, headers=[("cookie", cookie)]))
    assert seen["x-authenticated-groups"] == ", ".join(groups)


# --- what is no session -------------------------------------------------------------------------------------------


async def test_a_tampered_cookie_is_no_session(nursery, gateway):
    _, port = await session_gateway(nursery, gateway)
    name, value = (await login(port)).split("=", 1)
    tampered = value[:-5] + ("A" if value[-5] != "A" else "B") + value[-4:]
    reply = await call(port, headers=[("cookie", f"{name}={tampered}")])
    assert (reply.status, message(reply)) == (403, {"message": "So it goes."})


async def test_a_cookie_sealed_with_another_secret_is_no_session(nursery, gateway):
    _, port = await session_gateway(nursery, gateway)
    cookie = sealed([consumer_id("coop"), CREDENTIAL], secret="some-other-secret")
    assert (await call(port, headers=[("cookie", cookie)])).status == 403


async def test_a_session_for_another_audience_is_no_session(nursery, gateway):
    _, port = await session_gateway(nursery, gateway, audience="billing")
    cookie = sealed([consumer_id("coop"), CREDENTIAL], audience="default")
    assert (await call(port, headers=[("cookie", cookie)])).status == 403


async def test_a_new_session_keeps_the_other_audiences_of_the_cookie(nursery, gateway):
    _, port = await session_gateway(nursery, gateway, audience="billing")
    other = sealed([consumer_id("coop"), CREDENTIAL], audience="default")
    both = cookie_header(await call(port, headers=[("cookie", other), ("apikey", "kong")]))
    settings = Settings(msgspec.convert({"secret": SECRET, "audience": "default"}, SessionConfig))
    value = both.split("=", 1)[1]
    reopened = Session(settings, lambda name: value if name == "session" else None)
    assert reopened.open(int(session_handler.clock())) is None
    assert [entry[1] for entry in reopened.data] == ["default", "billing"]


async def test_an_idle_session_expires_after_idling_timeout(nursery, gateway, clock):
    _, port = await session_gateway(nursery, gateway, idling_timeout=60, rolling_timeout=0)
    cookie = await login(port)
    clock.now += 61
    assert (await call(port, headers=[("cookie", cookie)])).status == 403


async def test_a_session_of_a_consumer_that_is_gone_is_destroyed(nursery, gateway):
    _, port = await session_gateway(nursery, gateway)
    cookie = sealed(["2f3f1a1e-0000-4000-8000-000000000000", CREDENTIAL])
    reply = await call(port, headers=[("cookie", cookie)])
    assert reply.status == 403
    assert set_cookies(reply) == [f"session=; Path=/; SameSite=Strict; Secure; HttpOnly; {EXPIRED}"]


# --- refresh ------------------------------------------------------------------------------------------------------


async def test_past_three_quarters_of_rolling_timeout_the_session_is_saved_anew(nursery, gateway, clock):
    _, port = await session_gateway(nursery, gateway, idling_timeout=0, rolling_timeout=100)
    cookie = await login(port)
    clock.now += 75
    assert set_cookies(await call(port, headers=[("cookie", cookie)])) == []
    clock.now += 1
    reply = await call(port, headers=[("cookie", cookie)])
    assert reply.status == 200
    renewed = cookie_header(reply)
    assert renewed.startswith("session=") and renewed != cookie
    clock.now += 90  # past the first cookie's rolling timeout, within the renewed one's
    assert (await call(port, headers=[("cookie", cookie)])).status == 403
    assert (await call(port, headers=[("cookie", renewed)])).status == 200


async def test_a_minute_idle_the_session_is_touched(nursery, gateway, clock):
    _, port = await session_gateway(nursery, gateway, idling_timeout=100, rolling_timeout=0)
    cookie = await login(port)
    clock.now += 61
    touched = cookie_header(await call(port, headers=[("cookie", cookie)]))
    assert touched != cookie and touched[110 + 8:] == cookie[110 + 8:]  # a new header, the same ciphertext
    clock.now += 61  # 122 s after login: the first cookie idled out, the touched one was seen 61 s ago
    assert (await call(port, headers=[("cookie", cookie)])).status == 403
    assert (await call(port, headers=[("cookie", touched)])).status == 200


async def test_remember_brings_back_an_expired_session(nursery, gateway, clock):
    _, port = await session_gateway(nursery, gateway, remember=True, idling_timeout=60, rolling_timeout=0)
    cookies = await login(port)
    clock.now += 120
    reply = await call(port, headers=[("cookie", cookies)])
    assert reply.status == 200
    assert [c.split("=")[0] for c in set_cookies(reply)] == ["remember", "session"]


# --- logout -------------------------------------------------------------------------------------------------------


async def test_logout_by_delete_and_query_arg_expires_the_cookie_and_answers_200(nursery, gateway):
    backend, port = await session_gateway(nursery, gateway)
    cookie = await login(port)
    before = len(backend.requests)
    reply = await call(port, "/?session_logout=true", headers=[("cookie", cookie)], method="DELETE")
    assert (reply.status, reply.body) == (200, b"")
    assert set_cookies(reply) == [f"session=; Path=/; SameSite=Strict; Secure; HttpOnly; {EXPIRED}"]
    assert len(backend.requests) == before  # answered by the gateway


async def test_logout_expires_the_remember_cookie_too(nursery, gateway):
    _, port = await session_gateway(nursery, gateway, remember=True)
    cookie = await login(port)
    reply = await call(port, "/?session_logout", headers=[("cookie", cookie)], method="POST")
    assert [c.split("; ")[0] for c in set_cookies(reply)] == ["session=", "remember="]
    assert all(c.endswith(EXPIRED) for c in set_cookies(reply))


async def test_a_get_with_the_logout_arg_is_no_logout_by_default(nursery, gateway):
    _, port = await session_gateway(nursery, gateway)
    reply = await call(port, "/?session_logout=true", headers=[("cookie", await login(port))])
    assert upstream(reply)["x-consumer-username"] == "coop"


async def test_logout_methods_can_allow_get(nursery, gateway):
    _, port = await session_gateway(nursery, gateway, logout_methods=["GET"], logout_query_arg="bye")
    reply = await call(port, "/?bye", headers=[("cookie", await login(port))])
    assert (reply.status, reply.body) == (200, b"")
    assert set_cookies(reply)[0].endswith(EXPIRED)


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/x-www-form-urlencoded", b"session_logout=1"),
    ("application/json", json.dumps({"session_logout": True}).encode()),
])
async def test_logout_by_post_body_arg_with_read_body_for_logout(nursery, gateway, content_type, body):
    _, port = await session_gateway(nursery, gateway, read_body_for_logout=True)
    reply = await call(port, headers=[("cookie", await login(port)), ("content-type", content_type)],
                       method="POST", body=body)
    assert (reply.status, reply.body) == (200, b"")
    assert set_cookies(reply)[0].endswith(EXPIRED)


async def test_a_post_body_arg_is_no_logout_without_read_body_for_logout(nursery, gateway):
    _, port = await session_gateway(nursery, gateway)
    reply = await call(port, headers=[("cookie", await login(port)),
                                      ("content-type", "application/x-www-form-urlencoded")],
                       method="POST", body=b"session_logout=1")
    assert upstream(reply)["x-consumer-username"] == "coop"


async def test_a_logout_without_a_session_goes_on(nursery, gateway):
    _, port = await session_gateway(nursery, gateway)
    reply = await call(port, "/?session_logout=true", method="DELETE", headers=[("apikey", "kong")])
    assert upstream(reply)["x-consumer-username"] == "coop"


# --- config -------------------------------------------------------------------------------------------------------


def test_a_session_without_a_secret_is_refused():
    error = refused(plugin("session"))
    assert "plugins[0].config.secret: required by this gateway" in error
    assert "worker processes" in error


def test_storage_kong_is_refused():
    error = refused(plugin("session", secret=SECRET, storage="kong"))
    assert "plugins[0].config.storage: kong keeps sessions in Kong's database, which this gateway does not have" \
        in error


@pytest.mark.parametrize("key", ["bind", "cookie_prefix", "touch_threshold"])
def test_resty_session_options_kong_does_not_have_are_refused(key):
    assert f"plugins[0].config.{key} is not supported by the gateway's session plugin" in \
        refused(plugin("session", secret=SECRET, **{key: "x"}))


def test_an_empty_cookie_name_is_refused():
    assert "plugins[0].config.cookie_name" in refused(plugin("session", secret=SECRET, cookie_name=""))


def test_the_session_plugin_cannot_be_configured_for_a_consumer():
    from plugin_helpers import parse_config

    from gateway.config import ConfigError
    from gateway.runtime import compile_config
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
           "consumers": [{"username": "coop"}],
           "plugins": [{"name": "session", "consumer": "coop", "config": {"secret": SECRET}}]}
    with pytest.raises(ConfigError) as err:
        compile_config(parse_config(json.dumps(doc)))
    assert "the session plugin cannot be configured for a consumer" in str(err.value)


# --- the real gateway: `gateway start --workers 2` -----------------------------------------------------------------


@pytest.fixture
def node(tmp_path):  # noqa: ANN001,ANN201 - a factory; every gateway made is stopped by pid at the end
    from e2e_helpers import node_factory
    with node_factory(tmp_path) as make:
        yield make


async def test_a_session_made_by_one_worker_authenticates_in_the_other(nursery, node):
    import h11
    from backends import Client, EchoBackend, service
    from e2e_helpers import conns_per_worker

    backend = EchoBackend()
    await nursery.start(backend.serve)
    plugins = [plugin("session", secret=SECRET), {"name": "key-auth", "config": {"anonymous": "anon"}}]
    gw = node({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"], "plugins": plugins}])],
               "consumers": CONSUMERS, "plugins": [TERMINATE_ANON]})
    await gw.start(workers=2)
    clients = []
    for conns in (await conns_per_worker(gw.port, await gw.worker_pids())).values():
        client = Client(conns[0].stream)
        client.conn = h11.Connection(h11.CLIENT)
        clients.append(client)
    first, second = clients
    async with first, second:
        cookie = cookie_header(await first.request("GET", "/", headers=[("apikey", "kong")]))
        assert cookie.startswith("session=")
        assert upstream(await second.request("GET", "/", headers=[("cookie", cookie)]))["x-consumer-username"] \
            == "coop"
        assert (await second.request("GET", "/")).status == 403
    assert "Traceback" not in gw.log()
