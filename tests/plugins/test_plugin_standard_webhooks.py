"""standard-webhooks through the gateway (in-process, real sockets), from Kong's spec
(spec/03-plugins/44-standard-webhooks): a webhook reaches the upstream only with a fresh timestamp, a body and the
right signature; everything else is Kong's 400 "Bad request"."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import msgspec
import pytest
from plugin_helpers import call, http_codec, plugin, refused, seen, start  # noqa: F401 - http_codec: the fixture

from gateway.policies.standard_webhooks.handler import lua_number, lua_string, signature
from gateway.policies.standard_webhooks.schema import StandardWebhooksConfig

SECRET = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # Kong's spec values
MESSAGE_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
BODY = b'{"foo":"bar"}'


def sign(ts: int | str, body: bytes = BODY, secret: str = SECRET, webhook_id: str = MESSAGE_ID) -> str:
    """The Standard Webhooks signature, computed here independently of the gateway's code."""
    mac = hmac.new(secret.encode(), f"{webhook_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


async def webhooks_gateway(nursery, gateway, **config: object) -> int:  # noqa: ANN001
    _, port = await start(nursery, gateway, [{"paths": ["/"], "plugins": [
        plugin("standard-webhooks", secret_v1=SECRET, **config)]}])
    return port


async def post(port: int, headers: dict[str, str], body: bytes = BODY):  # noqa: ANN201
    return await call(port, "/", [("content-type", "application/json"), *headers.items()], "POST", body)


def assert_400(reply) -> None:  # noqa: ANN001
    assert reply.status == 400, (reply.status, reply.body)
    assert reply.json()["message"] == "Bad request"


async def test_rejects_missing_headers(nursery, gateway):
    port = await webhooks_gateway(nursery, gateway)
    assert_400(await post(port, {"webhook-id": MESSAGE_ID, "webhook-timestamp": str(int(time.time()))}))


async def test_rejects_invalid_timestamp(nursery, gateway):
    port = await webhooks_gateway(nursery, gateway)
    assert_400(await post(port, {"webhook-id": MESSAGE_ID, "webhook-signature": "asdf", "webhook-timestamp": "XYZ"}))


async def test_rejects_missing_body(nursery, gateway):
    port = await webhooks_gateway(nursery, gateway)
    ts = int(time.time())
    assert_400(await post(port, {"webhook-id": MESSAGE_ID, "webhook-signature": sign(ts, b""),
                                 "webhook-timestamp": str(ts)}, b""))


async def test_accepts_correct_signature_and_forwards_the_body(nursery, gateway):
    port = await webhooks_gateway(nursery, gateway)
    ts = int(time.time())
    reply = await post(port, {"webhook-id": MESSAGE_ID, "webhook-signature": sign(ts), "webhook-timestamp": str(ts)})
    got = seen(reply)
    assert got["body"] == BODY.decode()
    assert got["headers"]["webhook-id"] == [MESSAGE_ID]


async def test_fails_because_the_timestamp_tolerance_is_exceeded(nursery, gateway):
    port = await webhooks_gateway(nursery, gateway)
    ts = int(time.time()) - 6 * 60
    assert_400(await post(port, {"webhook-id": MESSAGE_ID, "webhook-signature": sign(ts),
                                 "webhook-timestamp": str(ts)}))


async def test_a_timestamp_within_a_configured_tolerance_passes(nursery, gateway):
    port = await webhooks_gateway(nursery, gateway, tolerance_second=3600)
    ts = int(time.time()) - 6 * 60
    seen(await post(port, {"webhook-id": MESSAGE_ID, "webhook-signature": sign(ts), "webhook-timestamp": str(ts)}))


async def test_a_timestamp_in_the_future_passes_as_in_kong(nursery, gateway):
    """Kong checks only `now - ts > tolerance_second`."""
    port = await webhooks_gateway(nursery, gateway)
    ts = int(time.time()) + 24 * 3600
    seen(await post(port, {"webhook-id": MESSAGE_ID, "webhook-signature": sign(ts), "webhook-timestamp": str(ts)}))


@pytest.mark.parametrize("change", ["body", "id", "secret", "timestamp"])
async def test_a_signature_over_anything_else_is_refused(nursery, gateway, change):
    port = await webhooks_gateway(nursery, gateway)
    ts = int(time.time())
    given = {"body": sign(ts, b'{"foo":"baz"}'), "id": sign(ts, webhook_id="msg_other"),
             "secret": sign(ts, secret="another-secret"), "timestamp": sign(ts - 1)}[change]
    assert_400(await post(port, {"webhook-id": MESSAGE_ID, "webhook-signature": given,
                                 "webhook-timestamp": str(ts)}))


async def test_a_list_of_signatures_is_not_read_as_in_kong(nursery, gateway):
    """The Standard Webhooks spec allows "v1,a v1,b"; Kong compares the header with its one signature."""
    port = await webhooks_gateway(nursery, gateway)
    ts = int(time.time())
    assert_400(await post(port, {"webhook-id": MESSAGE_ID, "webhook-signature": f"v1,AAAA {sign(ts)}",
                                 "webhook-timestamp": str(ts)}))


async def test_the_timestamp_is_signed_as_lua_writes_the_number_it_read(nursery, gateway):
    """Kong signs `tonumber(ts)` written back by Lua: "0x10" was read as 16 and is signed as "16"."""
    port = await webhooks_gateway(nursery, gateway, tolerance_second=10**10)
    seen(await post(port, {"webhook-id": MESSAGE_ID, "webhook-signature": sign(16), "webhook-timestamp": "0x10"}))


@pytest.mark.parametrize("sent", ["inf", "NaN"])
async def test_a_timestamp_of_inf_or_nan_is_refused_even_signed(nursery, gateway, sent):
    """A deliberate deviation (README): LuaJIT reads them and Kong's age check never refuses them, so a webhook signed
    with one could be replayed without end; here they are no number."""
    port = await webhooks_gateway(nursery, gateway)
    assert_400(await post(port, {"webhook-id": MESSAGE_ID, "webhook-signature": sign(sent.lower()),
                                 "webhook-timestamp": sent}))


async def test_the_first_of_repeated_headers_is_the_one_read_as_in_kong(nursery, gateway):
    port = await webhooks_gateway(nursery, gateway)
    ts = int(time.time())
    reply = await call(port, "/", [("webhook-id", MESSAGE_ID), ("webhook-id", "msg_other"),
                                   ("webhook-timestamp", str(ts)), ("webhook-timestamp", "1"),
                                   ("webhook-signature", sign(ts)), ("webhook-signature", "v1,AAAA")], "POST", BODY)
    seen(reply)


async def test_a_body_over_the_limit_is_refused_as_a_missing_one(nursery, gateway):
    port = await webhooks_gateway(nursery, gateway)
    ts = int(time.time())
    body = b"x" * (1024 * 1024 + 1)
    assert_400(await post(port, {"webhook-id": MESSAGE_ID, "webhook-signature": sign(ts, body),
                                 "webhook-timestamp": str(ts)}, body))


@pytest.mark.parametrize(("text", "number"), [
    (b"1700000000", 1700000000.0), (b" 17\t", 17.0), (b"+5", 5.0), (b"-5", -5.0), (b"1e3", 1000.0), (b"12.5", 12.5),
    (b".5", 0.5), (b"5.", 5.0), (b"0x10", 16.0), (b"0X1p4", 16.0), (b"0x.8", 0.5),
    (b"XYZ", None), (b"", None), (b"1_000", None), (b"inf", None), (b"nan", None), (b"0x", None), (b"1e", None),
    (b"--1", None), (b"1 2", None), (b"0x1p99999", None), (b"9" * 5000, None), (b"1e999", None),
])
def test_timestamps_are_read_as_luas_tonumber_reads_them(text: bytes, number: float | None):
    """As gateway.policies.luanumber reads them (LuaJIT's lj_strscan), but for what is not finite: no number here."""
    assert lua_number(text) == number


async def test_a_timestamp_past_the_double_range_is_a_400_not_a_500(nursery, gateway):
    """0x1p99999 made float.fromhex raise OverflowError: the plugin's 500."""
    port = await webhooks_gateway(nursery, gateway)
    assert_400(await post(port, {"webhook-id": MESSAGE_ID, "webhook-signature": sign("inf"),
                                 "webhook-timestamp": "0x1p99999"}))


def test_a_long_timestamp_that_is_no_number_is_read_in_linear_time():
    started = time.process_time()  # CPU time: a busy host's other work does not count
    assert lua_number(b"1" * 30000 + b"x") is None
    assert time.process_time() - started < 2.0  # (quadratic: about 10 s)


@pytest.mark.parametrize(("number", "text"), [(1700000000.0, b"1700000000"), (16.0, b"16"), (12.5, b"12.5"),
                                              (1e15, b"1e+15"), (0.0, b"0")])
def test_numbers_are_written_as_lua_writes_them(number: float, text: bytes):
    assert lua_string(number) == text


def test_the_signature_is_v1_and_the_base64_of_the_hmac():
    keyed = hmac.new(SECRET.encode(), digestmod=hashlib.sha256)
    assert signature(keyed, MESSAGE_ID.encode(), b"1700000000", BODY).decode() == sign(1700000000)
    assert signature(keyed, MESSAGE_ID.encode(), b"1700000000", BODY).decode() == sign(1700000000)  # unchanged


def test_the_plugin_cannot_be_configured_for_a_consumer():
    """Kong's schema: consumer = typedefs.no_consumer."""
    config = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
              "consumers": [{"username": "bob"}],
              "plugins": [{"name": "standard-webhooks", "consumer": "bob", "config": {"secret_v1": "x"}}]}
    from gateway.config import ConfigError, parse_config
    from gateway.runtime import compile_config

    with pytest.raises(ConfigError, match="cannot be configured for a consumer"):
        compile_config(parse_config(msgspec.json.encode(config).decode()))


@pytest.mark.parametrize(("config", "message"), [
    ({}, "secret_v1: required field is missing"),
    ({"secret_v1": ""}, 'secret_v1: length must be at least 1'),
    ({"secret_v1": 123}, "secret_v1: expected non-empty text, got 123"),
    ({"secret_v1": "x", "tolerance_second": -1}, "tolerance_second: expected int >= 0, got -1"),
    ({"secret_v1": "x", "tolerance_second": 1.5}, "tolerance_second: expected int >= 0, got 1.5"),
])
def test_config_errors_name_the_field(config: dict, message: str):
    assert message in refused(plugin("standard-webhooks", **config))


def test_kongs_defaults():
    config = StandardWebhooksConfig(secret_v1="abc123")
    assert config.tolerance_second == 5 * 60


async def test_webhook_headers_past_the_100th_header_line_are_missing(nursery, gateway):
    """Kong: internal.lua:36 `kong.request.get_headers()` holds only the first 100 lines (pdk/request.lua:664-668),
    so a webhook whose three headers come after 110 other lines is "missing required headers": 400
    (internal.lua:40-43)."""
    _, port = await start(nursery, gateway, [{"paths": ["/"], "plugins": [
        plugin("standard-webhooks", secret_v1=SECRET)]}])
    ts = int(time.time())
    filler = [(f"x-filler-{i}", "v") for i in range(110)]
    reply = await call(port, "/", [("content-type", "application/json"), *filler, ("webhook-id", MESSAGE_ID),
                                   ("webhook-timestamp", str(ts)), ("webhook-signature", sign(ts))], "POST", BODY)
    assert reply.status == 400, (reply.status, reply.body[:200])
    assert reply.json()["message"] == "Bad request"
