"""LimitSpec from the plugin config, bucket capacities, and the payloads' msgpack round trip."""

import msgspec
import pytest

from gateway.policies.rate_limiting.schema import RateLimitingConfig, RedisConfig
from gateway.ratelimit import FallbackUsage, Grant, LeaseRequest, LimitSpec, ReturnedLease, Window


def test_windows_come_in_period_order_with_their_limits():
    spec = LimitSpec.from_plugin(RateLimitingConfig(hour=1000, second=5, minute=100))
    assert spec.windows == (Window("second", 5), Window("minute", 100), Window("hour", 1000))


def test_a_fractional_limit_admits_as_many_as_kong_does():
    assert LimitSpec.from_plugin(RateLimitingConfig(minute=2.5)).windows == (Window("minute", 3),)


def test_bucket_settings_are_carried_over():
    spec = LimitSpec.from_plugin(msgspec.convert({"algorithm": "limit-req", "rate": 10, "burst": 20, "nodelay": False,
                                                  "fault_tolerant": False}, RateLimitingConfig))
    assert (spec.algorithm, spec.rate, spec.burst, spec.nodelay, spec.fault_tolerant) == \
        ("limit-req", 10.0, 20, False, False)
    assert spec.bucketed and spec.paced


def test_token_bucket_holds_burst_tokens_and_at_least_one():
    assert LimitSpec(algorithm="token-bucket", rate=5, burst=100).capacity == 100
    assert LimitSpec(algorithm="token-bucket", rate=5, burst=0).capacity == 1


def test_limit_req_holds_burst_plus_the_request_in_service():
    assert LimitSpec(algorithm="limit-req", rate=10, burst=20).capacity == 21


def test_fixed_window_has_no_bucket_and_no_pacing():
    spec = LimitSpec(windows=(Window("second", 1),))
    assert not spec.bucketed and not spec.paced


def test_specs_are_hashable_values():
    a = LimitSpec(windows=(Window("second", 1),))
    assert a == LimitSpec(windows=(Window("second", 1),)) and hash(a) == hash(LimitSpec(windows=(Window("second", 1),)))


def test_payloads_round_trip_through_msgpack():
    spec = LimitSpec(windows=(Window("minute", 10),), algorithm="token-bucket", rate=2.0, burst=3)
    for payload in (LeaseRequest("k", spec, "w1", 5, 2), Grant("k", 3, (7,), (60.0,), 1.5, 60.0, 0.0, 0.25),
                    ReturnedLease("k", "w1", 2, 1, 1.5), FallbackUsage("k", "w1", spec, (4,), 4, 2.0)):
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(payload), type=type(payload)) == payload


def test_payloads_are_compact_arrays():
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(ReturnedLease("k", "w1", 2, 1, 1.5))) == ["k", "w1", 2, 1, 1.5]


def test_a_spec_without_any_limit_is_refused():
    with pytest.raises(ValueError, match="at least one window"):
        LimitSpec()


def test_a_bucket_without_a_rate_is_refused():
    with pytest.raises(ValueError, match="rate"):
        LimitSpec(algorithm="token-bucket")


def test_an_unknown_algorithm_is_refused_with_the_known_ones_named():
    with pytest.raises(ValueError, match="fixed-window, token-bucket, limit-req"):
        LimitSpec(windows=(Window("second", 1),), algorithm="sliding")


def test_policy_cluster_is_refused_with_a_pointer_to_redis():
    with pytest.raises(ValueError, match="use policy redis"):
        RateLimitingConfig(minute=10, policy="cluster")


def test_kong_redis_shorthands_fill_the_nested_record_and_may_not_disagree_with_it():
    cfg = RateLimitingConfig(minute=10, policy="redis", redis_host="r1", redis_port=6380, redis_database=2)
    assert (cfg.redis.host, cfg.redis.port, cfg.redis.database) == ("r1", 6380, 2)
    assert LimitSpec.from_plugin(cfg, "p").store == "p"
    with pytest.raises(ValueError, match="redis_port .* and redis.port .* disagree"):
        RateLimitingConfig(minute=10, policy="redis", redis_port=6380, redis=RedisConfig(host="r", port=6381))
    with pytest.raises(ValueError, match="set redis.host"):
        RateLimitingConfig(minute=10, policy="redis")
    with pytest.raises(ValueError, match="sync_rate can only be used with the redis policy"):
        RateLimitingConfig(minute=10, sync_rate=1)
