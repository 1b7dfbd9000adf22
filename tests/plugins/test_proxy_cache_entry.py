"""proxy-cache's stored entries, sans-I/O: the encoding, and the entry as Kong's GET /proxy-cache/:cache_key shows it.
Also the plugin's config (Kong's 01-schema_spec.lua)."""

from __future__ import annotations

import json

import msgspec
from plugin_helpers import plugin, refused

from gateway.policies.proxy_cache import render_entry
from gateway.policies.proxy_cache.entry import VERSION, Entry, decode, encode


def entry(**fields: object) -> Entry:
    doc: dict = {"status": 200, "headers": [(b"content-type", b"application/json")], "body": b'{"a":1}',
                 "timestamp": 1_700_000_000, "ttl": 300}
    doc.update(fields)
    return Entry(**doc)


def test_an_entry_decodes_to_what_was_encoded():
    e = entry(req_body=b"")
    assert decode(encode(e)) == e


def test_bytes_that_are_not_an_entry_decode_to_none():
    assert decode(b"\x00garbage") is None
    assert decode(b"") is None


def test_entries_carry_kongs_format_version():
    assert decode(encode(entry())).version == VERSION == 1  # type: ignore[union-attr]


def test_an_entry_renders_as_kongs_admin_api_shows_it():
    raw = encode(entry(headers=[(b"content-type", b"application/json"), (b"x-cache-status", b"Miss")],
                       req_body=b""))
    assert render_entry(raw) == {
        "status": 200, "headers": {"content-type": "application/json", "x-cache-status": "Miss"},
        "body": '{"a":1}', "body_len": 7, "timestamp": 1_700_000_000, "ttl": 300, "version": 1, "req_body": ""}


def test_a_repeated_header_renders_as_a_list():
    raw = encode(entry(headers=[(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"set-cookie", b"c=3")]))
    assert render_entry(raw)["headers"] == {"set-cookie": ["a=1", "b=2", "c=3"]}  # type: ignore[index]


def test_an_entry_without_a_kept_request_body_renders_without_req_body():
    assert "req_body" not in render_entry(encode(entry()))  # type: ignore[operator]


def test_a_fractional_ttl_renders_as_a_number_and_a_whole_one_as_an_integer():
    assert render_entry(encode(entry(ttl=0.5)))["ttl"] == 0.5  # type: ignore[index]
    assert repr(render_entry(encode(entry(ttl=60.0)))["ttl"]) == "60"  # type: ignore[index]


def test_a_ttl_of_more_than_16_digits_renders_as_cjson_writes_it():
    """cjson writes 1e+20: the rendering keeps the double (an int that large could not travel in a bus frame)."""
    doc = render_entry(encode(entry(ttl=1e20)))
    assert doc["ttl"] == 1e20 and type(doc["ttl"]) is float  # type: ignore[index]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(doc)) == doc
    assert type(render_entry(encode(entry(ttl=9999999999999998.0)))["ttl"]) is int  # type: ignore[index]


def test_rendering_bytes_that_are_not_an_entry_gives_none():
    assert render_entry(b"nope") is None


# --- config (01-schema_spec.lua) -------------------------------------------------------------------------------------


def test_strategy_is_required():
    assert "config.strategy: required field is missing" in refused(plugin("proxy-cache"))


def test_memory_is_the_only_strategy():
    assert 'config.strategy: expected one of "memory", got "redis"' in refused(plugin("proxy-cache", strategy="redis"))


def test_response_code_values_are_between_100_and_900():
    assert "config.response_code[0]: expected int >= 100 and <= 900, got 99" in refused(
        plugin("proxy-cache", strategy="memory", response_code=[99]))


def test_response_code_may_not_be_empty():
    assert "config.response_code: length must be at least 1" in refused(
        plugin("proxy-cache", strategy="memory", response_code=[]))


def test_response_code_values_are_integers():
    assert "config.response_code[0]: expected int >= 100 and <= 900, got 123.5" in refused(
        plugin("proxy-cache", strategy="memory", response_code=[123.5]))
    assert "config.response_code: expected a list" in refused(
        plugin("proxy-cache", strategy="memory", response_code=""))


def test_cache_ttl_is_above_zero():
    assert "config.cache_ttl: expected int > 0, got -1" in refused(plugin("proxy-cache", strategy="memory",
                                                                         cache_ttl=-1))


def test_ttls_take_any_whole_number_a_double_holds():
    """Kong's integer is any number equal to its floor but infinity: 1e20 is one; 400 digits read as inf are not."""
    accepted(cache_ttl=10**20, storage_ttl=10**20)
    for field in ("cache_ttl", "storage_ttl"):
        assert f"config.{field}: expected an integer" in refused(plugin("proxy-cache", strategy="memory",
                                                                        **{field: 10**400}))


def test_request_methods_are_kongs_five():
    assert 'config.request_method[0]: expected one of "GET", "HEAD", "PATCH", "POST", "PUT", got "DELETE"' in \
        refused(plugin("proxy-cache", strategy="memory", request_method=["DELETE"]))


def test_a_dictionary_that_is_not_a_built_in_shared_dict_is_refused_naming_those():
    message = refused(plugin("proxy-cache", strategy="memory", memory={"dictionary_name": "my_cache"}))
    assert "config.memory.dictionary_name: missing shared dict 'my_cache'" in message
    assert "kong_db_cache" in message and "kong, kong_locks," in message


def test_unknown_response_headers_are_refused():
    assert "config.response_headers.Via: unknown field" in refused(
        plugin("proxy-cache", strategy="memory", response_headers={"Via": True}))


def accepted(**config: object) -> None:
    from gateway.config import parse_config
    from gateway.runtime import compile_config

    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
           "plugins": [plugin("proxy-cache", strategy="memory", **config)]}
    compile_config(parse_config(json.dumps(doc)))


def test_kongs_example_configs_are_accepted():
    for config in ({"strategy": "memory"},
                   {"strategy": "memory", "response_code": [200, 301], "request_method": ["GET"],
                    "content_type": ["application/json"]},
                   {"strategy": "memory", "content_type": ["application/*", "*/text", "*/*"]},
                   {"strategy": "memory", "content_type": ["application/json; charset=UTF-8"],
                    "vary_query_params": ["foo"], "vary_headers": ["foo"], "storage_ttl": 600},
                   {"strategy": "memory", "memory": {"dictionary_name": "kong"},
                    "response_headers": {"age": False, "X-Cache-Status": False, "X-Cache-Key": False}}):
        accepted(**{k: v for k, v in config.items() if k != "strategy"})
