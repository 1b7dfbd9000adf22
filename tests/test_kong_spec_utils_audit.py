"""Kong 3.9.3's unit specs for the utilities the gateway re-implements, `it` by `it`: spec/01-unit/05-utils_spec.lua
(kong.tools.ip, uuid, validate_header_name), 06-timestamp_spec.lua (rate-limiting's period starts),
24-runloop_certificate_spec.lua (produce_wild_snis, as the handshake's certificate pick),
30-standardized_redis_config_spec.lua (the `redis` record of rate-limiting / response-ratelimiting)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from backends import free_port
from tls_helpers import Pki

sys.path.insert(0, str(Path(__file__).resolve().parent / "plugins"))
from plugin_helpers import http_codec, plugin, refused  # noqa: E402, F401 - http_codec: the fixture

from gateway.config import ConfigError, parse_config  # noqa: E402
from gateway.config.typedefs import header_name_problem, kong_address  # noqa: E402
from gateway.http.tls_contexts import ServerOptions, ServerTls, server_context  # noqa: E402
from gateway.policies.rate_limiting.schema import RateLimitingConfig  # noqa: E402
from gateway.ratelimit.windows import window_bounds  # noqa: E402
from gateway.runtime import compile_config  # noqa: E402

V6_ONE = "0000:0000:0000:0000:0000:0000:0000:0001"


def loads(doc: dict[str, Any]) -> None:
    compile_config(parse_config(json.dumps(doc), "c.yml"), "c.yml")


def one_route(**doc: Any) -> dict[str, Any]:
    return {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}], **doc}


# --- 05-utils_spec.lua: hostnames and ip addresses (kong.tools.ip, the gateway's typedefs.kong_address) -------------


def test_hostname_type_of_ipv4_and_ipv6_addresses():
    """05-utils_spec "checks valid IPv4 address types" and "checks valid IPv6 address types" (hostname_type, through
    normalize_ip's verdict: the kind decided by the characters)."""
    for address in ("123.123.123.123", "1.2.3.4", "1.2.3.4:80"):
        assert kong_address(address)[0] == "ipv4", address
    for address in ("::1", "2345::6789", "0001:0001:0001:0001:0001:0001:0001:0001", "[2345::6789]:80"):
        assert kong_address(address)[0] == "ipv6", address


def test_normalize_ipv4_drops_leading_zeros_and_reads_the_port():
    """05-utils_spec "normalizes IPv4 address types" and "fails normalizing bad IPv4 address types"."""
    assert kong_address("123.123.123.123") == ("ipv4", "123.123.123.123", None)
    assert kong_address("123.123.123.123:80") == ("ipv4", "123.123.123.123", 80)
    assert kong_address("001.001.001.001:00080") == ("ipv4", "1.1.1.1", 80)
    for bad in ("123.123:80", "123.123.123.999", "123.123.123.123:80a", "123.123.123.123.123:80",
                "123.123.123.123:99999"):
        assert isinstance(kong_address(bad), str), bad


def test_normalize_ipv6_expands_and_reads_a_bracketed_port():
    """05-utils_spec "normalizes IPv6 address types" and "fails normalizing bad IPv6 address types"."""
    assert kong_address("::1") == ("ipv6", V6_ONE, None)
    assert kong_address("[::1]") == ("ipv6", V6_ONE, None)
    assert kong_address("[::1]:80") == ("ipv6", V6_ONE, 80)
    assert kong_address(f"[{V6_ONE}]:80") == ("ipv6", V6_ONE, 80)
    for bad in ("::x", "[::x]:80", "[::1]:80a", "[::1]:99999"):
        assert isinstance(kong_address(bad), str), bad


_VALID_NAMES = ["hello.com", "hello.fr", "test.hello.com", "1991.io", "hello.COM", "HELLO.com", "123helloWORLD.com",
                "example.123", "example-api.com", "hello.abcd", "example_api.com", "localhost", "example.",
                "3B-ww4c5e180e575a65lsy2b", "-with-SUPER-MONKEYS-pc58ag80a8qai00g7n9n",
                "Hello-Another-Way--fc4qua05auwb3674vfr0b", "2-u9tlzr9756bt3uc0v", "MajiKoi5-783gue6qz075azm5e",
                "de-jg4avhby1noc0d", "d9juau41awczczp"]
_INVALID_NAMES = ["/example", ".example", "exam;ple", "example.com/org", "example-.org", "example.org-",
                  "hello..example.com", "hello-.example.com"]


def test_check_hostname_takes_names_and_punycode_and_refuses_bad_labels():
    """05-utils_spec "validates hostnames" (check_hostname: a name, with a port or not; a bad port refused)."""
    for name in _VALID_NAMES:
        assert kong_address(name) == ("name", name, None), name
        assert kong_address(f"{name}:80") == ("name", name, 80), name
        assert isinstance(kong_address(f"{name}:xx"), str), name
        assert isinstance(kong_address(f"{name}:99999"), str), name
    for name in _INVALID_NAMES:
        assert isinstance(kong_address(name), str), name
        assert isinstance(kong_address(f"{name}:80"), str), name


def test_normalize_ip_validates_addresses():
    """05-utils_spec "validates addresses" (normalize_ip: {host, type, port} or nil)."""
    assert kong_address("1.2.3.4:80") == ("ipv4", "1.2.3.4", 80)
    assert kong_address("1.2.3.4") == ("ipv4", "1.2.3.4", None)
    assert kong_address("[::1]:80") == ("ipv6", V6_ONE, 80)
    assert kong_address("::1") == ("ipv6", V6_ONE, None)
    assert kong_address("localhost:80") == ("name", "localhost", 80)
    assert kong_address("mashape.test") == ("name", "mashape.test", None)
    for bad in ("1.2.3.4:8x0", "1.2.3.400", "[::1]:8x0", ":x:1", "localhost:8x0", "mashape..test"):
        assert isinstance(kong_address(bad), str), bad


# --- 05-utils_spec.lua: is_valid_uuid (typedefs.uuid: the ids of a declarative config) -----------------------------


@pytest.mark.parametrize("uuid", ["cbb297c0-a956-486d-ad1d-f9b42df9465a", "cbb297c0-a956-486d-dd1d-f9b42df9465a",
                                  "00000000-0000-0000-0000-000000000000"],
                         ids=["jit-uuid", "invalid-variant", "null"])
def test_an_id_kong_takes_for_a_uuid_loads(uuid):
    """05-utils_spec "validates UUIDs from jit-uuid", "validates UUIDs with invalid variants for
    backwards-compatibility reasons", "considers the null UUID a valid one" (kong/tools/uuid.lua, schema uuid)."""
    loads({"services": [{"id": uuid, "name": "s", "url": "http://127.0.0.1:1"}]})


def test_an_id_with_a_missing_dash_is_no_uuid():
    """05-utils_spec "validates UUIDs from jit-uuid": `cbb297c0-a956486d-ad1d-f9b42df9465a` is not valid."""
    with pytest.raises(ConfigError, match="expected a UUID"):
        loads({"services": [{"id": "cbb297c0-a956486d-ad1d-f9b42df9465a", "name": "s", "url": "http://127.0.0.1:1"}]})


# --- 05-utils_spec.lua: validate_header_name (typedefs.header_name) ---------------------------------------------------


def test_a_header_name_takes_letters_digits_dash_and_underscore_only():
    """05-utils_spec "validate_header_name() validates header names": each byte 1..255 alone."""
    allowed = "_-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    for i in range(1, 256):
        c = chr(i)
        assert (header_name_problem(c) is None) == (c in allowed), i


# --- 06-timestamp_spec.lua: the period starts rate-limiting counts in -----------------------------------------------


def test_period_starts_of_2016_10_10_10_10_10():
    """06-timestamp_spec "should provide correct timestamp values" (kong/tools/timestamp.lua get_timestamps: the
    second, minute, hour, day, month and year a counter of rate-limiting's is keyed by)."""
    now = datetime(2016, 10, 10, 10, 10, 10, tzinfo=UTC).timestamp()
    base = now
    assert window_bounds("second", now + 0.5)[0] == base
    base -= 10
    assert window_bounds("minute", now)[0] == base
    base -= 10 * 60
    assert window_bounds("hour", now)[0] == base
    base -= 10 * 60 * 60
    assert window_bounds("day", now)[0] == base
    base -= 9 * 60 * 60 * 24
    assert window_bounds("month", now)[0] == base
    base -= (31 + 29 + 31 + 30 + 31 + 30 + 31 + 31 + 30) * 60 * 60 * 24
    assert window_bounds("year", now)[0] == base


# --- 24-runloop_certificate_spec.lua: produce_wild_snis, as the handshake's certificate pick ------------------------


def _server_tls(*names: str) -> tuple[ServerTls, dict[str, Any]]:
    options = ServerOptions()
    contexts = {n: server_context(options, [], n) for n in (*names, "default")}
    default = contexts.pop("default")
    return ServerTls(default, contexts, options), {**contexts, "default": default}


def test_a_two_label_name_looks_up_its_suffix_wildcard_only():
    """24-runloop_certificate_spec "produces suffix wildcard SNI": domain.test -> (nil, domain.*)."""
    tls, ctx = _server_tls("domain.*", "*.test")
    assert tls.select("domain.test") is ctx["domain.*"]


def test_a_name_looks_up_its_first_label_as_wildcard_before_its_last():
    """24-runloop_certificate_spec "produces prefix and suffix wildcard SNIs": www.domain.test -> (*.domain.test,
    www.domain.*), the prefix one first (find_certificate's bulk order)."""
    tls, ctx = _server_tls("*.domain.test", "www.domain.*")
    assert tls.select("www.domain.test") is ctx["*.domain.test"]
    tls, ctx = _server_tls("www.domain.*")
    assert tls.select("www.domain.test") is ctx["www.domain.*"]


def test_a_sub_subname_looks_up_one_label_wildcards_only():
    """24-runloop_certificate_spec "produces prefix and suffix wildcard SNIs on sub-subnames": foo.www.domain.test
    -> (*.www.domain.test, foo.www.domain.*): never *.domain.test nor foo.www.*."""
    tls, ctx = _server_tls("*.www.domain.test", "foo.www.domain.*")
    assert tls.select("foo.www.domain.test") is ctx["*.www.domain.test"]
    tls, ctx = _server_tls("foo.www.domain.*")
    assert tls.select("foo.www.domain.test") is ctx["foo.www.domain.*"]
    tls, ctx = _server_tls("*.domain.test", "foo.www.*")
    assert tls.select("foo.www.domain.test") is ctx["default"]


def test_a_wildcard_sni_sent_at_an_edge_is_looked_up_as_it_is():
    """24-runloop_certificate_spec "does not produce wildcard SNIs when input is wildcard": *.domain.test ->
    (*.domain.test, nil); domain.* -> (nil, domain.*)."""
    tls, ctx = _server_tls("*.domain.test", "domain.*")
    assert tls.select("*.domain.test") is ctx["*.domain.test"]
    assert tls.select("domain.*") is ctx["domain.*"]


@pytest.mark.parametrize(("sent", "configured"), [
    ("a*b.domain.test", "*.domain.test"),  # a `*` inside: no wildcard name at all
    ("*x.domain.test", "*.domain.test"),  # `*` first: looked up as it is (its own prefix form), no other
    ("www.domain.tes*", "www.domain.*"),  # `*` last: looked up as it is (its own suffix form), no other
], ids=["inner-star", "leading-star-label", "trailing-star-label"])
def test_a_sent_name_holding_a_star_gets_no_derived_wildcard(sent, configured):
    """24-runloop_certificate_spec "does not produce wildcard SNIs when input is wildcard"; certificate.lua:142-171
    produce_wild_snis: a name with a `*` derives no other wildcard name (`elseif not wild_idx`), so
    find_certificate (:270-324) looks up only the name itself, then `*`, then serves the default certificate."""
    tls, ctx = _server_tls(configured)
    assert tls.select(sent) is ctx["default"]


def test_a_sent_name_holding_a_star_falls_to_the_star_sni_before_the_default():
    """certificate.lua:283-296 find_certificate: the bulk lookup of a name holding a `*` is the name, then
    DEFAULT_SNI `*`; a wildcard it would match were it a plain label is not looked up."""
    tls, ctx = _server_tls("*.domain.test", "*")
    assert tls.select("a*b.domain.test") is ctx["*"]


def test_a_sent_wildcard_of_two_labels_finds_the_sni_of_that_name():
    """certificate.lua:144-145: `*.test` sent is its own prefix lookup, `snis:*.test`, which finds the sni `*.test`
    (a name a plain `x.test` never derives: its prefix form needs three labels)."""
    tls, ctx = _server_tls("*.test")
    assert tls.select("*.test") is ctx["*.test"]
    assert tls.select("x.test") is ctx["default"]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


async def test_an_sni_with_an_inner_star_gets_the_default_certificate_on_the_wire(gateway, nursery, pki, tmp_path):
    """The same at a real TLS listener: a client sending SNI `a*b.wildcard.test` gets Kong's default certificate
    (certificate.lua:142-171, 270-324), not the `*.wildcard.test` one."""
    import socket
    import ssl

    from cryptography import x509

    wild = pki.issue("wild.test")
    tls_port = free_port()
    cert, key = pki.files(tmp_path, "default", "default.test")
    await gateway({"services": [{"name": "s", "url": "http://127.0.0.1:1"}],
                   "certificates": [{"cert": wild[0], "key": wild[1], "snis": ["*.wildcard.test"]}]},
                  listen=[f"127.0.0.1:{free_port()}", f"127.0.0.1:{tls_port} ssl"], ssl_cert=cert, ssl_cert_key=key)

    def handshake(name: str) -> str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
        san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return san.value.get_values_for_type(x509.DNSName)[0]

    import trio
    assert await trio.to_thread.run_sync(handshake, "x.wildcard.test") == "wild.test"
    assert await trio.to_thread.run_sync(handshake, "a*b.wildcard.test") == "default.test"


# --- 30-standardized_redis_config_spec.lua: the `redis` record (kong/tools/redis/schema.lua) --------------------------


def test_a_minimal_redis_record_takes_kongs_defaults():
    """30-standardized_redis_config_spec "accepts minimal redis config (populates defaults)"."""
    redis = msgspec.convert({"second": 1, "redis": {"host": "localhost"}}, RateLimitingConfig).redis
    assert (redis.host, redis.port, redis.timeout, redis.username, redis.password, redis.database, redis.ssl,
            redis.ssl_verify, redis.server_name) == ("localhost", 6379, 2000, None, None, 0, False, False, None)


def test_a_full_redis_record_is_kept_as_given():
    """30-standardized_redis_config_spec "full redis config"."""
    given = {"host": "localhost", "port": 9900, "timeout": 3333, "username": "test", "password": "testXXX",
             "database": 5, "ssl": True, "ssl_verify": True, "server_name": "example.test"}
    for name, limits in (("rate-limiting", {"second": 1}), ("response-ratelimiting", {"limits": {"v": {"second": 1}}})):
        loads(one_route(plugins=[plugin(name, policy="redis", redis=given, **limits)]))
    redis = msgspec.convert({"second": 1, "redis": given}, RateLimitingConfig).redis
    assert msgspec.structs.asdict(redis) == given


def test_an_empty_redis_password_is_taken():
    """30-standardized_redis_config_spec "allows empty strings on password" (len_min = 0)."""
    loads(one_route(plugins=[plugin("rate-limiting", second=1, policy="redis", redis={"host": "localhost",
                                                                                     "password": ""})]))
    config = msgspec.convert({"second": 1, "redis": {"host": "h", "password": ""}}, RateLimitingConfig)
    assert config.redis.password == ""


@pytest.mark.parametrize(("field", "value"), [
    ("host", ""), ("port", -5), ("timeout", -5), ("username", 1), ("password", 4), ("database", "abc"),
    ("ssl", "abc"), ("ssl_verify", "xyz")])
def test_each_bad_redis_field_is_refused(field, value):
    """30-standardized_redis_config_spec "rejects invalid config": each of its eight fields (server_name
    `test-test` is taken)."""
    assert f"config.redis.{field}" in refused(plugin("rate-limiting", second=1, redis={"host": "h", field: value}))
    loads(one_route(plugins=[plugin("rate-limiting", second=1, redis={"host": "h", "server_name": "test-test"})]))


@pytest.mark.parametrize("name", ["rate-limiting", "response-ratelimiting"])
@pytest.mark.parametrize("host", ["::ffff:10.0.0.1", "fe80::1%eth0", "\u0661\u0660.\u0660.\u0660.\u0661"],
                         ids=["ipv4-mapped-ipv6", "ipv6-scope-id", "arabic-indic-digits"])
def test_a_redis_host_kongs_normalize_ip_refuses_is_refused(name, host):
    """kong/tools/redis/schema.lua: redis.host is typedefs.host (typedefs.lua:24-35 validate_host -> kong.tools.ip
    normalize_ip, ip.lua:165-218, 121-158): an IPv6 address is 8 groups of hex digits only (no dotted IPv4 tail, no
    %scope), `%d` is an ASCII digit. Kong: "invalid value: <host>"."""
    limits = {"second": 1} if name == "rate-limiting" else {"limits": {"v": {"second": 1}}}
    assert f"config.redis.host: invalid value: {host}" in refused(plugin(name, policy="redis", redis={"host": host},
                                                                          **limits))


@pytest.mark.parametrize("name", ["rate-limiting", "response-ratelimiting"])
def test_a_redis_host_kongs_normalize_ipv6_expands_is_taken(name):
    """ip.lua:185-193 normalize_ipv6: a leading `:` gets a `0` before it, so `:1:2:3:4:5:6:7` is the 8 groups
    0:1:2:3:4:5:6:7, an address typedefs.host (typedefs.lua:24-35) takes."""
    limits = {"second": 1} if name == "rate-limiting" else {"limits": {"v": {"second": 1}}}
    loads(one_route(plugins=[plugin(name, policy="redis", redis={"host": ":1:2:3:4:5:6:7"}, **limits)]))


@pytest.mark.parametrize(("server_name", "problem"), [
    (":1:2:3:4:5:6:7", "must not be an IP"),  # normalize_ipv6 takes it: an address
    ("::ffff:10.0.0.1", "invalid value: ::ffff:10.0.0.1"),  # normalize_ipv6 refuses it: no address, no name
])
def test_a_redis_server_name_is_judged_by_kongs_normalize_ip(server_name, problem):
    """redis.server_name is typedefs.sni (typedefs.lua:154-169 validate_sni): "invalid value" for what
    normalize_ip refuses, "must not be an IP" for an address it takes."""
    assert f"config.redis.server_name: {problem}" in refused(
        plugin("rate-limiting", second=1, policy="redis", redis={"host": "h", "ssl": True, "server_name": server_name}))
