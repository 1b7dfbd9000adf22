"""Kong 3.x's deprecated plugin fields as exports carry them: http-log's, statsd's and datadog's `retry_count` (every
Kong 2.x `db_export` writes 10), and rate-limiting's `redis_<field>` shorthands beside the `redis` record they
replaced (a 3.x export writes both spellings), read as Kong reads them."""

from __future__ import annotations

import json
import logging
import textwrap

import pytest

from gateway.config import ConfigError, parse_config
from gateway.runtime import Runtime, compile_config

RETRY_WARNING = "config.retry_count no longer works, please use config.queue.max_retry_time instead"


def compiled(text: str, name: str = "kong.yml") -> Runtime:
    return compile_config(parse_config(textwrap.dedent(text), name), name)


def test_retry_count_10_of_a_kong_2x_export_loads_silently(caplog: pytest.LogCaptureFixture):
    """Kong 2.8.0's http-log schema: `retry_count = { type = "integer", default = 10 }`, so every 2.x export carries
    it. Kong 3.x keeps it as deprecated with `old_default = 10` (kong/plugins/http-log/schema.lua:17-23, the same in
    statsd/schema.lua:198-203 and datadog/schema.lua:91-97): validate_field warns only for a value other than
    old_default, and kong/tools/queue.lua:465 does nothing else with it."""
    caplog.set_level(logging.WARNING)
    runtime = compiled("""
        _format_version: "2.1"
        plugins:
        - name: http-log
          config: {http_endpoint: "http://127.0.0.1:9/log", retry_count: 10, queue_size: 1, flush_timeout: 2,
                   headers: ~, custom_fields_by_lua: ~}
        - {name: statsd, config: {retry_count: 10}}
        - {name: datadog, config: {retry_count: ~}}
        """)
    assert [p.queue.config.max_batch_size for p in runtime.global_loggers] == [1, 1, 1]
    assert RETRY_WARNING not in caplog.text


def test_another_retry_count_is_ignored_with_kongs_deprecation_line(caplog: pytest.LogCaptureFixture):
    """kong/db/schema/init.lua:898-907 (validate_field) logs the field's deprecation message for a value other than
    old_default; the queue's retries stay queue.max_retry_time's (kong/tools/queue.lua:465-470 only warns)."""
    caplog.set_level(logging.WARNING)
    runtime = compiled("""
        plugins:
        - {name: http-log, config: {http_endpoint: "http://127.0.0.1:9/log", retry_count: 3}}
        - {name: statsd, config: {retry_count: 0}}
        - {name: datadog, config: {retry_count: 5}}
        """)
    assert [p.queue.config.max_retry_time for p in runtime.global_loggers] == [60.0, 60.0, 60.0]
    for plugin in ("http-log", "statsd", "datadog"):
        assert f"{plugin}: {RETRY_WARNING} (deprecated after 4.0)" in caplog.text


def rate_limiting(**config: object) -> str:
    """A file with one global rate-limiting plugin (policy redis) with these config keys besides."""
    return json.dumps({"plugins": [{"name": "rate-limiting", "config": {"minute": 10, "policy": "redis", **config}}]})


def redis_of(**config: object) -> tuple[object, ...]:
    """(host, port, ssl) of the Redis a global rate-limiting plugin with these config keys counts in."""
    (store,) = compiled(rate_limiting(**config), "kong.json").stores.values()
    settings = store.settings
    return settings.host, settings.port, settings.ssl


def test_a_3x_export_writing_both_redis_spellings_alike_loads():
    """A 3.x export writes each shorthand back from its `redis` field (kong/db/schema/init.lua:1862-1879), nulls
    included; equal values pass validate_deprecation_exclusiveness (init.lua:1745-1768)."""
    assert redis_of(redis={"host": "127.0.0.1", "port": 6380, "database": 0, "timeout": 2000, "ssl": False,
                           "ssl_verify": False, "username": None, "password": None, "server_name": None},
                    redis_host="127.0.0.1", redis_port=6380, redis_database=0, redis_timeout=2000, redis_ssl=False,
                    redis_ssl_verify=False, redis_username=None, redis_password=None, redis_server_name=None) == \
        ("127.0.0.1", 6380, False)


def test_a_shorthand_disagreeing_with_its_field_given_at_the_default_is_refused_with_kongs_message():
    """kong/db/schema/init.lua:1753-1767 compares the shorthand with `redis.port` as the file gives it (before any
    default is filled in): 6379 written out is a value, and a 6380 beside it is Kong's mismatch."""
    with pytest.raises(ConfigError) as info:
        compiled(rate_limiting(redis={"host": "127.0.0.1", "port": 6379}, redis_port=6380), "kong.json")
    assert info.value.messages == [
        "kong.json: plugins[0].config.redis_port: both deprecated and new field are used but their values mismatch: "
        "redis_port = 6380 vs redis.port = 6379; remove redis_port (deprecated), or give both the same value"]


def test_a_shorthand_fills_its_field_left_out_or_null():
    """The shorthand's value is merged under `redis` with null_aware_table_merge (init.lua:1843-1851,
    kong/tools/table.lua:53-68): a field the file leaves out, or gives null, takes it."""
    assert redis_of(redis={"host": "127.0.0.1"}, redis_port=6380) == ("127.0.0.1", 6380, False)
    assert redis_of(redis={"host": "127.0.0.1", "port": None}, redis_port=6380) == ("127.0.0.1", 6380, False)
    assert redis_of(redis=None, redis_host="127.0.0.1") == ("127.0.0.1", 6379, False)


def test_a_redis_field_given_false_wins_over_its_shorthand():
    """validate_deprecation_exclusiveness checks `if new_field_value and ...` (init.lua:1758), so a field given false
    is never a mismatch, and the merge keeps the value the field was given (null_aware_table_merge)."""
    assert redis_of(redis={"host": "127.0.0.1", "ssl": False}, redis_ssl=True) == ("127.0.0.1", 6379, False)
