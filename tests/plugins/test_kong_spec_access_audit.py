"""Kong 3.9.3's own spec tests of the access plugins, `it` by `it`, where no test of the gateway covered them:
key-auth (spec/03-plugins/09-key-auth), basic-auth (10-basic-auth), acl (18-acl), ip-restriction (17-ip-restriction),
bot-detection (21-bot-detection), correlation-id (11-correlation-id), request-size-limiting
(12-request-size-limiting). Each against a real gateway and a real echo backend."""

from __future__ import annotations

import json
import re
import socket

import pytest
import trio
from backends import Client, EchoBackend, raw_exchange, service
from plugin_helpers import call, plugin, seen

from gateway.config.consumers import kong_consumer_id

TIMEOUT = 10
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


async def serve(nursery, gateway, routes, settings=None, **doc):  # noqa: ANN001,ANN003,ANN201
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", routes)], **doc},
                         **(settings or {}))
    return backend, port


def route(path: str, *plugins: dict) -> dict:
    return {"paths": [path], "plugins": list(plugins)}


def msg(reply) -> str:  # noqa: ANN001
    return json.loads(reply.body)["message"]


def upstream_headers(reply) -> dict[str, str]:  # noqa: ANN001
    return {k: v[0] for k, v in seen(reply)["headers"].items()}


# === key-auth (spec/03-plugins/09-key-auth/02-access_spec.lua) ======================================================


async def test_key_auth_options_is_authenticated_when_run_on_preflight_is_true(nursery, gateway):
    """02-access_spec.lua "returns Unauthorized on OPTIONS requests if run_on_preflight is true"."""
    _, port = await serve(nursery, gateway, [route("/", plugin("key-auth"))])
    reply = await call(port, "/status/200", method="OPTIONS")
    assert (reply.status, msg(reply)) == (401, "No API key found in request")


# header, query, body, route (key_in_header, key_in_query, key_in_body as t/f), status: Kong's table, row by row
COMBINATIONS = [
    ("right", "right", "right", "ttt", 200), ("right", "right", "right", "ttf", 200),
    ("right", "right", "right", "tff", 200), ("right", "right", "right", "fff", 401),
    ("right", "right", "right", "fft", 200), ("right", "right", "right", "tft", 200),
    ("right", "right", "right", "ftf", 200),
    ("right", "right", "wrong", "ttt", 200), ("right", "right", "wrong", "ttf", 200),
    ("right", "right", "wrong", "tff", 200), ("right", "right", "wrong", "fff", 401),
    ("right", "right", "wrong", "fft", 401), ("right", "right", "wrong", "tft", 200),
    ("right", "right", "wrong", "ftf", 200),
    ("right", "wrong", "wrong", "ttt", 200), ("right", "wrong", "wrong", "ttf", 200),
    ("right", "wrong", "wrong", "tff", 200), ("right", "wrong", "wrong", "fff", 401),
    ("right", "wrong", "wrong", "fft", 401), ("right", "wrong", "wrong", "tft", 200),
    ("right", "wrong", "wrong", "ftf", 401),
    ("wrong", "wrong", "wrong", "ttt", 401), ("wrong", "wrong", "wrong", "ttf", 401),
    ("wrong", "wrong", "wrong", "tff", 401), ("wrong", "wrong", "wrong", "fff", 401),
    ("wrong", "wrong", "wrong", "fft", 401), ("wrong", "wrong", "wrong", "tft", 401),
    ("wrong", "wrong", "wrong", "ftf", 401),
    ("wrong", "wrong", "right", "ttt", 401), ("wrong", "wrong", "right", "ttf", 401),
    ("wrong", "wrong", "right", "tff", 401), ("wrong", "wrong", "right", "fff", 401),
    ("wrong", "wrong", "right", "fft", 200), ("wrong", "wrong", "right", "tft", 401),
    ("wrong", "wrong", "right", "ftf", 401),
    ("right", "wrong", "right", "ttt", 200), ("right", "wrong", "right", "ttf", 200),
    ("right", "wrong", "right", "tff", 200), ("right", "wrong", "right", "fff", 401),
    ("right", "wrong", "right", "fft", 200), ("right", "wrong", "right", "tft", 200),
    ("right", "wrong", "right", "ftf", 401),
    ("wrong", "right", "wrong", "ttt", 401), ("wrong", "right", "wrong", "ttf", 401),
    ("wrong", "right", "wrong", "tff", 401), ("wrong", "right", "wrong", "fff", 401),
    ("wrong", "right", "wrong", "fft", 401), ("wrong", "right", "wrong", "tft", 401),
    ("wrong", "right", "wrong", "ftf", 200),
    (None, None, None, "ttt", 401), (None, None, None, "ttf", 401), (None, None, None, "tff", 401),
    (None, None, None, "fff", 401), (None, None, None, "fft", 401), (None, None, None, "tft", 401),
    (None, None, None, "ftf", 401),
    (None, None, "wrong", "ttt", 401), (None, None, "wrong", "ttf", 401), (None, None, "wrong", "tff", 401),
    (None, None, "wrong", "fff", 401), (None, None, "wrong", "fft", 401), (None, None, "wrong", "tft", 401),
    (None, None, "wrong", "ftf", 401),
    (None, "wrong", "wrong", "ttt", 401), (None, "wrong", "wrong", "ttf", 401),
    (None, "wrong", "wrong", "tff", 401), (None, "wrong", "wrong", "fff", 401),
    (None, "wrong", "wrong", "fft", 401), (None, "wrong", "wrong", "tft", 401),
    (None, "wrong", "wrong", "ftf", 401),
    ("wrong", "wrong", None, "ttt", 401), ("wrong", "wrong", None, "ttf", 401),
    ("wrong", "wrong", None, "tff", 401), ("wrong", "wrong", None, "fff", 401),
    ("wrong", "wrong", None, "fft", 401), ("wrong", "wrong", None, "tft", 401),
    ("wrong", "wrong", None, "ftf", 401),
    (None, "wrong", None, "ttt", 401), (None, "wrong", None, "ttf", 401), (None, "wrong", None, "tff", 401),
    (None, "wrong", None, "fff", 401), (None, "wrong", None, "fft", 401), (None, "wrong", None, "tft", 401),
    (None, "wrong", None, "ftf", 401),
    ("wrong", None, "wrong", "ttt", 401), ("wrong", None, "wrong", "ttf", 401),
    ("wrong", None, "wrong", "tff", 401), ("wrong", None, "wrong", "fff", 401),
    ("wrong", None, "wrong", "fft", 401), ("wrong", None, "wrong", "tft", 401),
    ("wrong", None, "wrong", "ftf", 401),
    ("right", "right", None, "ttt", 200), ("right", "right", None, "ttf", 200),
    ("right", "right", None, "tff", 200), ("right", "right", None, "fff", 401),
    ("right", "right", None, "fft", 401), ("right", "right", None, "tft", 200),
    ("right", "right", None, "ftf", 200),
    ("right", None, None, "ttt", 200), ("right", None, None, "ttf", 200), ("right", None, None, "tff", 200),
    ("right", None, None, "fff", 401), ("right", None, None, "fft", 401), ("right", None, None, "tft", 200),
    ("right", None, None, "ftf", 401),
    (None, None, "right", "ttt", 200), (None, None, "right", "ttf", 401), (None, None, "right", "tff", 401),
    (None, None, "right", "fff", 401), (None, None, "right", "fft", 200), (None, None, "right", "tft", 200),
    (None, None, "right", "ftf", 401),
    ("right", None, "right", "ttt", 200), ("right", None, "right", "ttf", 200),
    ("right", None, "right", "tff", 200), ("right", None, "right", "fff", 401),
    ("right", None, "right", "fft", 200), ("right", None, "right", "tft", 200),
    ("right", None, "right", "ftf", 401),
    (None, "right", None, "ttt", 200), (None, "right", None, "ttf", 200), (None, "right", None, "tff", 401),
    (None, "right", None, "fff", 401), (None, "right", None, "fft", 401), (None, "right", None, "tft", 401),
    (None, "right", None, "ftf", 200),
    (None, "right", "wrong", "ttt", 200), (None, "right", "wrong", "ttf", 200),
    (None, "right", "wrong", "tff", 401), (None, "right", "wrong", "fff", 401),
    (None, "right", "wrong", "fft", 401), (None, "right", "wrong", "tft", 401),
    (None, "right", "wrong", "ftf", 200),
    ("right", "wrong", None, "ttt", 200), ("right", "wrong", None, "ttf", 200),
    ("right", "wrong", None, "tff", 200), ("right", "wrong", None, "fff", 401),
    ("right", "wrong", None, "fft", 401), ("right", "wrong", None, "tft", 200),
    ("right", "wrong", None, "ftf", 401),
    ("right", None, "wrong", "ttt", 200), ("right", None, "wrong", "ttf", 200),
    ("right", None, "wrong", "tff", 200), ("right", None, "wrong", "fff", 401),
    ("right", None, "wrong", "fft", 401), ("right", None, "wrong", "tft", 200),
    ("right", None, "wrong", "ftf", 401),
    (None, "wrong", "right", "ttt", 401), (None, "wrong", "right", "ttf", 401),
    (None, "wrong", "right", "tff", 401), (None, "wrong", "right", "fff", 401),
    (None, "wrong", "right", "fft", 200), (None, "wrong", "right", "tft", 200),
    (None, "wrong", "right", "ftf", 401),
    ("wrong", "right", None, "ttt", 401), ("wrong", "right", None, "ttf", 401),
    ("wrong", "right", None, "tff", 401), ("wrong", "right", None, "fff", 401),
    ("wrong", "right", None, "fft", 401), ("wrong", "right", None, "tft", 401),
    ("wrong", "right", None, "ftf", 200),
    ("wrong", None, "right", "ttt", 401), ("wrong", None, "right", "ttf", 401),
    ("wrong", None, "right", "tff", 401), ("wrong", None, "right", "fff", 401),
    ("wrong", None, "right", "fft", 200), ("wrong", None, "right", "tft", 401),
    ("wrong", None, "right", "ftf", 401),
]


async def test_key_auth_every_combination_of_key_places_and_key_in_settings(nursery, gateway):
    """02-access_spec.lua "combination #1 .. #168 (... => ttt) works": the key in header / query / body (right,
    wrong, none) against the seven key_in_header / key_in_query / key_in_body settings; a 401 says `Key`."""
    assert len(COMBINATIONS) == 168
    routes = [route(f"/{flags}", plugin("key-auth", key_in_header=flags[0] == "t", key_in_query=flags[1] == "t",
                                        key_in_body=flags[2] == "t"))
              for flags in ("ttt", "ttf", "tff", "fff", "fft", "tft", "ftf")]
    _, port = await serve(nursery, gateway, routes, consumers=[
        {"username": "bob", "keyauth_credentials": [{"key": "right"}]}])
    wrong = []
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            for i, (header, query, body, path, status) in enumerate(COMBINATIONS, 1):
                headers = [("content-type", FORM)] + ([("apikey", header)] if header else [])
                target = f"/{path}" + (f"?apikey={query}" if query else "")
                reply = await client.request("POST", target, headers=headers,
                                             body=f"apikey={body}".encode() if body else b"")
                challenge = reply.header("www-authenticate")
                if reply.status != status or (status == 401 and challenge != "Key"):
                    wrong.append((i, header, query, body, path, reply.status, challenge))
    assert wrong == []


async def test_key_auth_a_key_with_a_ttl_authenticates_until_it_ends(nursery, gateway):
    """02-access_spec.lua "auto-expiring keys" "authenticate for up to 'ttl'": DB-less, a credential's ttl is the
    Unix time it ends at (kong/db/strategies/off/init.lua process_ttl_field: `entity.ttl - ngx.time()`, no entity
    once that is not above 0): 200 before, 401 "Unauthorized" after."""
    import time
    ends = int(time.time() + 1.5)  # 0.5 to 1.5 s away: the first request is well before it
    _, port = await serve(nursery, gateway, [route("/", plugin("key-auth"))], consumers=[
        {"username": "Jafar", "keyauth_credentials": [{"key": "kong", "ttl": ends}]}])
    assert (await call(port, "/status/200", [("apikey", "kong")])).status == 200
    await trio.sleep(max(0.0, ends - time.time()) + 0.05)
    reply = await call(port, "/status/200", [("apikey", "kong")])
    assert (reply.status, msg(reply), reply.header("www-authenticate")) == (401, "Unauthorized", "Key")


# === basic-auth (spec/03-plugins/10-basic-auth/03-access_spec.lua) ==================================================


async def test_basic_auth_anonymous_named_by_username_and_the_spec_realm_cases(nursery, gateway):
    """03-access_spec.lua "works with wrong credentials and username in anonymous", "consumer cache consistency"
    (its first half: the anonymous consumer's id and username upstream), "returns 401 Unauthorized on password only",
    "on username only", "returns 401 for valid Base64 encoding" (all with realm test-realm)."""
    consumers = [{"username": "bob", "basicauth_credentials": [{"username": "bob", "password": "kong"}]},
                 {"username": "no-body"}]
    _, port = await serve(nursery, gateway, [route("/anon", plugin("basic-auth", anonymous="no-body")),
                                             route("/realm", plugin("basic-auth", realm="test-realm"))],
                          consumers=consumers)
    got = upstream_headers(await call(port, "/anon/request"))
    assert (got["x-anonymous-consumer"], got["x-consumer-username"], got["x-consumer-id"]) == (
        "true", "no-body", kong_consumer_id("no-body"))
    for value in ("Basic a29uZw==", "Basic Ym9i", "Basic adXNlcjEyMzpwYXNzd29yZDEyMw==", "foobar"):
        reply = await call(port, "/realm/status/200", [("authorization", value)])
        assert (reply.status, msg(reply), reply.header("www-authenticate")) == (
            401, "Unauthorized", 'Basic realm="test-realm"'), value


# === acl (spec/03-plugins/18-acl/02-access_spec.lua) ================================================================

ACL_CONSUMERS = [
    {"username": "consumer1", "keyauth_credentials": [{"key": "apikey123"}]},
    {"username": "consumer2", "keyauth_credentials": [{"key": "apikey124"}], "acls": [{"group": "admin"}]},
    {"username": "consumer3", "keyauth_credentials": [{"key": "apikey125"}],
     "acls": [{"group": "pro"}, {"group": "hello"}]},
    {"username": "consumer4", "keyauth_credentials": [{"key": "apikey126"}],
     "acls": [{"group": "free"}, {"group": "hello"}]},
    {"username": "consumer5", "keyauth_credentials": [{"key": "apikey127"}], "acls": [{"group": "acl_group1"}]},
]


async def test_acl_multi_lists_and_always_use_authenticated_groups_fallback(nursery, gateway):
    """02-access_spec.lua "Multi lists": "should work when allowed" (pro+hello under allow admin,pro; the header
    either order), "should fail when not allowed", "should fail when denied", "should work when not denied",
    "should not work when one of the ACLs denied", "should work when one of the ACLs is allowed", "should not work
    when at least one of the ACLs denied"; "Simple lists" "should fail denied and with no authenticated groups"
    (deny without an authentication plugin: 401) and "should work when not denied"; "always_use_authenticated_groups"
    "if authenticated_groups is not set, fallback to use acl groups"."""
    ka = plugin("key-auth")
    routes = [route("/acl3", ka, plugin("acl", deny=["admin"])),
              route("/acl3d", plugin("acl", deny=["none"])),
              route("/acl4", ka, plugin("acl", allow=["admin", "pro"])),
              route("/acl5", ka, plugin("acl", deny=["admin", "pro"])),
              route("/acl6", ka, plugin("acl", deny=["admin", "pro", "hello"])),
              route("/acl7", ka, plugin("acl", allow=["admin", "pro", "hello"])),
              route("/acl17", ka, plugin("acl", allow=["acl_group1"], always_use_authenticated_groups=True))]
    _, port = await serve(nursery, gateway, routes, consumers=ACL_CONSUMERS)
    key = lambda k: [("apikey", k)]  # noqa: E731
    assert (await call(port, "/acl3/request?apikey=apikey123")).status == 200
    assert upstream_headers(await call(port, "/acl3/status/200", key("apikey123")))["x-consumer-groups"] == ""
    reply = await call(port, "/acl3/status/200", key("apikey124"))
    assert (reply.status, msg(reply)) == (403, "You cannot consume this service")
    reply = await call(port, "/acl3d/status/200")
    assert (reply.status, msg(reply)) == (401, "Unauthorized")
    got = upstream_headers(await call(port, "/acl4/request", key("apikey125")))
    assert got["x-consumer-groups"] in ("pro, hello", "hello, pro") and "x-authenticated-groups" not in got
    for path, apikey, status in (("/acl4", "apikey126", 403), ("/acl5", "apikey125", 403),
                                 ("/acl5", "apikey126", 200), ("/acl6", "apikey126", 403),
                                 ("/acl7", "apikey126", 200), ("/acl6", "apikey125", 403)):
        reply = await call(port, f"{path}/request", key(apikey))
        assert reply.status == status, (path, apikey)
        if status == 403:
            assert msg(reply) == "You cannot consume this service"
    got = upstream_headers(await call(port, "/acl17/request", key("apikey127")))
    assert got["x-consumer-groups"] == "acl_group1" and "x-authenticated-groups" not in got
    reply = await call(port, "/acl17/request", key("apikey126"))
    assert (reply.status, msg(reply)) == (403, "You cannot consume this service")


# === ip-restriction (spec/03-plugins/17-ip-restriction/02-access_spec.lua) ==========================================

XFF_SETTINGS = {"real_ip_header": "X-Forwarded-For", "real_ip_recursive": True, "trusted_ips": ["0.0.0.0/0", "::/0"]}
REAL_IP_SETTINGS = {"real_ip_recursive": True, "trusted_ips": ["0.0.0.0/0", "::/0"]}


async def test_ip_restriction_x_forwarded_for_cases_of_the_ipv4_suite(nursery, gateway):
    """02-access_spec.lua (real_ip_header X-Forwarded-For, recursive, every address trusted): deny "allows without
    any X-Forwarded-For and allowed IP", "allows with allowed X-Forwarded-For header", "blocks with not allowed
    X-Forwarded-For header"; allow "blocks without any X-Forwarded-For and not allowed IP", "block with not
    allowed X-Forwarded-For header", "allows with allowed X-Forwarded-For header", "allows with allowed complex
    X-Forwarded-For header"; "#regression handles a CIDR entry with 0.0.0.0/0"; "takes precedence over an allowed
    CIDR range"; "blocks an IP on a allowed CIDR range"."""
    routes = [route("/r7", plugin("ip-restriction", deny=["127.0.0.4"])),
              route("/r6", plugin("ip-restriction", allow=["127.0.0.4"])),
              route("/r8", plugin("ip-restriction", allow=["0.0.0.0/0"])),
              route("/r10", plugin("ip-restriction", allow=["127.0.0.0/24"], deny=["127.0.0.1"])),
              route("/r11", plugin("ip-restriction", allow=["127.0.0.0/24"], deny=["127.0.0.0/24"]))]
    _, port = await serve(nursery, gateway, routes, XFF_SETTINGS)
    xff = lambda v: [("x-forwarded-for", v)]  # noqa: E731
    assert upstream_headers(await call(port, "/r7/request"))["x-real-ip"] == "127.0.0.1"
    assert upstream_headers(await call(port, "/r7/request", xff("127.0.0.3")))["x-real-ip"] == "127.0.0.3"
    for path, headers, status in (("/r7", xff("127.0.0.4"), 403), ("/r6", [], 403), ("/r6", xff("127.0.0.3"), 403),
                                  ("/r6", xff("127.0.0.4"), 200), ("/r6", xff("127.0.0.4, 127.0.0.3"), 200),
                                  ("/r8", [], 200), ("/r10", [], 403), ("/r11", [], 403)):
        reply = await call(port, f"{path}/status/200", headers)
        assert reply.status == status, (path, headers)
        if status == 403:
            assert msg(reply).startswith("IP address not allowed")


async def test_ip_restriction_ipv6_addresses_from_x_real_ip(nursery, gateway):
    """02-access_spec.lua, the IPv6 suite (X-Real-IP, every address trusted): "blocks a request when the IPv6 is
    denied", "allows a request when the IPv6 is not denied" (remote_addr ::1), "blocks the IPv6 with CIDR", "blocks
    an IPv6 on a allowed IPv6 CIDR range", "takes precedence over an allowed IPv6", "blocks a request when the IPv6
    is not allowed", "allows a allowed IPv6", "#regression handles a CIDR entry with ::/0"."""
    routes = [route("/1", plugin("ip-restriction", deny=["::1", "::2"])),
              route("/2", plugin("ip-restriction", deny=["::2"])),
              route("/3", plugin("ip-restriction", deny=["fe80::/8"])),
              route("/4", plugin("ip-restriction", allow=["::2"])),
              route("/5", plugin("ip-restriction", allow=["::1"])),
              route("/6", plugin("ip-restriction", allow=["::/0"])),
              route("/7", plugin("ip-restriction", allow=["::1"], deny=["::1"])),
              route("/8", plugin("ip-restriction", allow=["::1/128"], deny=["::1"]))]
    _, port = await serve(nursery, gateway, routes, REAL_IP_SETTINGS)
    for path, ip, status in (("/1", "::1", 403), ("/2", "::1", 200), ("/3", "fe80::1", 403), ("/8", "::1", 403),
                             ("/7", "::1", 403), ("/4", "::1", 403), ("/5", "::1", 200), ("/6", "::1", 200)):
        reply = await call(port, f"{path}/request", [("x-real-ip", ip)])
        assert reply.status == status, (path, ip)
        if status == 403:
            assert msg(reply) == f"IP address not allowed: {ip}"
        else:
            assert upstream_headers(reply)["x-real-ip"] == ip


async def test_ip_restriction_ipv6_x_forwarded_for_lists(nursery, gateway):
    """02-access_spec.lua, the third suite (X-Forwarded-For, recursive, all trusted; deny ::4 / allow ::4): "allows
    with allowed X-Forwarded-For header", "blocks with not allowed ...", "blocks with blocked complex ...", "allows
    with allowed complex ..." (the client the list's first address, every one being trusted)."""
    routes = [route("/deny", plugin("ip-restriction", deny=["::4"])),
              route("/allow", plugin("ip-restriction", allow=["::4"]))]
    _, port = await serve(nursery, gateway, routes, XFF_SETTINGS)
    for path, value, status, client in (("/deny", "::3", 200, "::3"), ("/deny", "::4", 403, None),
                                        ("/deny", "::4, ::3", 403, None), ("/deny", "::3, ::4", 200, "::3"),
                                        ("/allow", "::3", 403, None), ("/allow", "::4", 200, "::4"),
                                        ("/allow", "::4, ::3", 200, "::4"), ("/allow", "::3, ::4", 403, None)):
        reply = await call(port, f"{path}/request", [("x-forwarded-for", value)])
        assert reply.status == status, (path, value)
        if client is not None:
            assert upstream_headers(reply)["x-real-ip"] == client


# === bot-detection (spec/03-plugins/21-bot-detection/01-access_spec.lua) ============================================

CHROME = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_5) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/50.0.2661.102 Safari/537.36")


async def test_bot_detection_the_spec_agents_on_routes_and_globally(nursery, gateway):
    """01-access_spec.lua "allows regular requests" (none, Chrome, HelloWorld, curl/7.43.0), "blocks bots"
    (Googlebot, facebookexternalhit/1.1), "blocks denied user-agents" (deny HelloWorld), "allows allowed
    user-agents" (allow facebookexternalhit/1.1); "configured global" "allows regular requests"."""
    routes = [route("/bot", plugin("bot-detection")), route("/bot2", plugin("bot-detection", deny=["HelloWorld"])),
              route("/bot3", plugin("bot-detection", allow=["facebookexternalhit/1.1"])), route("/plain")]
    _, port = await serve(nursery, gateway, routes)
    ua = lambda v: [("user-agent", v)]  # noqa: E731
    for path, headers, status in (
            ("/bot", [], 200), ("/bot", ua(CHROME), 200), ("/bot", ua("HelloWorld"), 200),
            ("/bot", ua("curl/7.43.0"), 200), ("/bot", ua("Googlebot/2.1 (+http://www.google.com/bot.html)"), 403),
            ("/bot", ua("facebookexternalhit/1.1"), 403), ("/bot2", ua("HelloWorld"), 403),
            ("/bot3", ua("facebookexternalhit/1.1"), 200)):
        reply = await call(port, f"{path}/request", headers)
        assert reply.status == status, (path, headers)
        if status == 403:
            assert msg(reply) == "Forbidden"
    _, port = await serve(nursery, gateway, [route("/")], plugins=[plugin("bot-detection")])
    for headers in ([], ua(CHROME), ua("HelloWorld"), ua("curl/7.43.0")):
        assert (await call(port, "/request", headers)).status == 200


# === correlation-id (spec/03-plugins/11-correlation-id/01-access_spec.lua) ==========================================


async def test_correlation_id_custom_header_name_and_no_echo(nursery, gateway):
    """01-access_spec.lua "uses a custom header name" (Foo-Bar-Id, uuid#counter), "echo_downstream does not send
    uuid back to client if not asked", "preserves an already existing header" (Kong-Request-ID: foobar on a route
    whose header is Foo-Bar-Id: left alone upstream), "does not preserve an already existing empty header", "... with
    space only" (an empty or blank Foo-Bar-Id gets a new id)."""
    _, port = await serve(nursery, gateway, [route("/", plugin("correlation-id", header_name="Foo-Bar-Id"))])
    reply = await call(port, "/request")
    got = upstream_headers(reply)
    assert re.fullmatch(UUID + r"#\d+", got["foo-bar-id"])
    assert reply.header("foo-bar-id") is None and reply.header("kong-request-id") is None
    got = upstream_headers(await call(port, "/request", [("kong-request-id", "foobar")]))
    assert got["kong-request-id"] == "foobar"
    got = upstream_headers(await call(port, "/request", [("foo-bar-id", "")]))
    assert re.fullmatch(UUID + r"#\d+", got["foo-bar-id"])
    raw, _ = await raw_exchange(port, b"GET /request HTTP/1.1\r\nHost: x\r\nFoo-Bar-Id:  \r\nConnection: close\r\n\r\n")
    echoed = json.loads(raw.partition(b"\r\n\r\n")[2])
    sent = [v for k, v in echoed["headers"] if k == "foo-bar-id"]
    assert len(sent) == 1 and re.fullmatch(UUID + r"#\d+", sent[0]), sent


async def test_correlation_id_is_echoed_on_a_502_and_on_an_answer_of_a_later_plugin(nursery, gateway):
    """01-access_spec.lua "echo_downstream sends uuid back to client even when upstream timeouts" (502), "executes
    with echo_downstream when access did not execute" (request-termination 418: a UUID), "echoes incoming with
    echo_downstream when access did not execute" (the client's id)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cid = plugin("correlation-id", generator="uuid", echo_downstream=True)
    port = await gateway({"services": [
        service("down", f"http://127.0.0.1:{closed}", [route("/timeout", cid)]),
        service("tea", "http://127.0.0.1:1", [route("/tea", cid, plugin("request-termination", status_code=418,
                                                                        message="I'm a teapot"))])]})
    reply = await call(port, "/timeout/request")
    assert reply.status == 502 and re.fullmatch(UUID, reply.header("kong-request-id") or "")
    reply = await call(port, "/tea/request")
    assert reply.status == 418 and re.fullmatch(UUID, reply.header("kong-request-id") or "")
    reply = await call(port, "/tea/request", [("kong-request-id", "my very personal id")])
    assert (reply.status, reply.header("kong-request-id")) == (418, "my very personal id")


async def test_correlation_id_in_the_log_with_kongs_request_id(nursery, gateway, tmp_path):
    """01-access_spec.lua "log serializer" "contains the Correlation ID": the client's 1234 as correlation_id, and
    request.id 32 lower-case hex characters."""
    log = tmp_path / "file.log"
    _, port = await serve(nursery, gateway, [route("/", plugin("file-log", path=str(log), reopen=True),
                                                   plugin("correlation-id"))])
    assert (await call(port, "/", [("kong-request-id", "1234")])).status == 200
    with trio.fail_after(TIMEOUT):
        while not log.exists() or not log.read_text().strip():
            await trio.sleep(0.02)
    entry = json.loads(log.read_text())
    assert entry["correlation_id"] == "1234"
    assert re.fullmatch(r"[a-f0-9]{32}", entry["request"]["id"])


# === request-size-limiting (spec/03-plugins/12-request-size-limiting/01-access_spec.lua) ============================

UNITS = {"bytes": 1, "kilobytes": 1024, "megabytes": 1024 * 1024}


async def test_request_size_limiting_each_unit_with_content_length_and_chunked(nursery, gateway):
    """01-access_spec.lua "blocks if size is greater than limit when unit in <unit>", "works if size is less than
    limit when unit in <unit>" (TEST_SIZE 2, with Content-Length and chunked, where the chunked one at the limit
    itself passes), "[request body size < nginx_http_client_body_buffer_size]" (2 KiB chunked, with and without
    Expect: 100-continue: 200, 413, 417)."""
    routes = [route(f"/{unit}", plugin("request-size-limiting", allowed_payload_size=2, size_unit=unit))
              for unit in UNITS]
    _, port = await serve(nursery, gateway, routes)
    for unit, factor in UNITS.items():
        size = 2 * factor
        over = await call(port, f"/{unit}/request", method="POST", body=b"a" * (size + 1))
        assert (over.status, msg(over)) == (413, "Request size limit exceeded"), unit
        assert (await call(port, f"/{unit}/request", method="POST", body=b"a" * (size - 1))).status == 200, unit
        over = await call(port, f"/{unit}/request", method="GET", body=[b"a" * (size + 1)])
        assert (over.status, msg(over)) == (413, "Request size limit exceeded"), unit
        assert (await call(port, f"/{unit}/request", method="GET", body=[b"a" * size])).status == 200, unit
    expect = [("expect", "100-continue")]
    assert (await call(port, "/kilobytes/request", expect, method="GET", body=[b"a" * 2048])).status == 200
    over = await call(port, "/kilobytes/request", expect, method="GET", body=[b"a" * 2049])
    assert (over.status, msg(over)) == (417, "Request size limit exceeded")


async def test_request_size_limiting_default_unit_with_expect(nursery, gateway):
    """01-access_spec.lua "with Content-Length": "works if size is lower than limit (and Expect header)", "blocks if
    size is greater than limit (and Expect header)": 2 MiB passes, 2 MiB + 1 is 413, with Expect 417; and
    "without Content-Length" "[request body size > nginx_http_client_body_buffer_size]" the same four chunked."""
    _, port = await serve(nursery, gateway, [route("/", plugin("request-size-limiting", allowed_payload_size=2))])
    size = 2 * 1024 * 1024
    expect = [("expect", "100-continue")]
    for headers in ([], expect):
        assert (await call(port, "/request", headers, method="POST", body=b"a" * size)).status == 200
        over = await call(port, "/request", headers, method="POST", body=b"a" * (size + 1))
        assert (over.status, msg(over)) == (417 if headers else 413, "Request size limit exceeded")
        assert (await call(port, "/request", headers, method="GET", body=[b"a" * size])).status == 200
        over = await call(port, "/request", headers, method="GET", body=[b"a" * (size + 1)])
        assert (over.status, msg(over)) == (417 if headers else 413, "Request size limit exceeded")


async def test_request_size_limiting_requires_a_content_length_on_a_request_without_a_body(nursery, gateway):
    """01-access_spec.lua "Content-Length header required" "blocks if header is not provided": a GET with neither
    Content-Length nor Transfer-Encoding is 411 (handler.lua: headers["Transfer-Encoding"] ~= "chunked")."""
    _, port = await serve(nursery, gateway, [route("/", plugin("request-size-limiting", allowed_payload_size=2,
                                                               require_content_length=True))])
    reply = await call(port, "/request")
    assert (reply.status, msg(reply)) == (411, "A valid Content-Length header is required")
    assert (await call(port, "/request", method="GET", body=[b"abc"])).status == 200
