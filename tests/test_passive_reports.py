"""Passive health checks hear a failed try as Kong reports it: a try that is retried as a TCP failure
(kong/init.lua Kong.balancer: get_last_failure, report_tcp_failure), the request's last try in the log phase by its
$upstream_status (kong/runloop/handler.lua: report_http_status, report_timeout for 504): a refused connect there is
nginx's 502, an HTTP status counted only when listed in passive.unhealthy.http_statuses."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from backends import BadBackend, EchoBackend, free_port, service
from backends import request as call
from e2e_helpers import GatewayNode, request, wait_for

from gateway.config import parse_config
from gateway.runtime import compile_config


async def test_a_retried_try_is_a_tcp_failure_and_the_last_one_an_http_502(tmp_path: Path) -> None:
    first, second, last = (f"127.0.0.1:{free_port()}" for _ in range(3))  # nothing listens: connects refused
    retried = {"passive": {"unhealthy": {"tcp_failures": 1}}}  # (502 not among Kong's default http_statuses)
    counted = {"passive": {"unhealthy": {"http_failures": 1, "http_statuses": [502]}}}
    gw = GatewayNode(tmp_path / "gw", {
        "upstreams": [{"name": "two", "healthchecks": retried, "targets": [{"target": first}, {"target": second}]},
                      {"name": "one", "healthchecks": counted, "targets": [{"target": last}]}],
        "services": [{"name": "s2", "url": "http://two", "retries": 1, "routes": [{"paths": ["/two"]}]},
                     {"name": "s1", "url": "http://one", "retries": 0, "routes": [{"paths": ["/one"]}]}]})
    try:
        with trio.fail_after(30):
            await gw.start(workers=1)
            assert (await request(gw.port, "GET", "/two")).status == 502  # both tried, both refused
            assert (await request(gw.port, "GET", "/one")).status == 502

            async def one_down() -> bool:
                return not (await gw.targets())[f"one|{last}"]["healthy"]
            await wait_for(one_down, 5, interval=0.1, what="the last try's 502 counted as an HTTP failure")
            states = await gw.targets()
            # the retried try's target is out (tcp_failures 1); the last try's 502 is not listed: still in
            assert sorted(states[f"two|{t}"]["healthy"] for t in (first, second)) == [False, True]
            answer = await request(gw.port, "GET", "/one")
            assert (answer.status, answer.json()["message"]) == (503, "failure to get a peer from the ring-balancer")
    finally:
        gw.cleanup()


def test_workers_report_traffic_when_only_passive_successes_count() -> None:
    """A passive healthy.successes alone counts in Kong (it clears the probes' failures and can bring a target back),
    so workers report outcomes for it; with no passive threshold at all they report nothing (no cost)."""
    def group(passive: dict) -> bool:
        doc = {"upstreams": [{"name": "u", "healthchecks": {"passive": passive}, "targets": [{"target": "a:1"}]}]}
        return compile_config(parse_config(json.dumps(doc))).groups["u"].passive

    assert group({"healthy": {"successes": 2}})
    assert group({"unhealthy": {"timeouts": 1}})
    assert not group({})


async def test_a_target_that_closes_without_answering_is_a_passive_tcp_failure(nursery, gateway):
    """nginx's "upstream prematurely closed connection": a failed try (Kong reports it retried as a TCP failure, the
    last one by its 502); it was reported to nobody, though a close while the request was written counted."""
    closer = BadBackend("close")
    await nursery.start(closer.serve)
    echo = EchoBackend("alive")
    await nursery.start(echo.serve)
    checks = {"passive": {"unhealthy": {"tcp_failures": 1}}}
    up = {"name": "pair", "algorithm": "round-robin", "healthchecks": checks,
          "targets": [{"target": f"127.0.0.1:{closer.port}"}, {"target": f"127.0.0.1:{echo.port}"}]}
    port = await gateway({"services": [service("svc", "http://pair", retries=1)], "upstreams": [up]})
    with trio.fail_after(10):
        statuses = []
        for i in range(6):
            statuses.append((await call(port, "GET", f"/r{i}")).status)
            # the keeper hears the report and tells the workers (however busy the host: once, after the failure)
            await trio.sleep(0.5 if len(closer.requests) == 1 and len(statuses) <= 2 else 0.05)
    assert statuses == [200] * 6  # every GET that hit `closer` went on to `echo`
    # Kong: the try on `closer` was a TCP failure (tcp_failures 1): unhealthy, it gets no more requests
    assert len(closer.requests) == 1


async def test_the_last_try_closed_without_an_answer_counts_as_nginxs_502(nursery, gateway):
    closer = BadBackend("close")
    await nursery.start(closer.serve)
    checks = {"passive": {"unhealthy": {"http_failures": 1, "http_statuses": [502]}}}
    up = {"name": "one", "healthchecks": checks, "targets": [{"target": f"127.0.0.1:{closer.port}"}]}
    port = await gateway({"services": [service("svc", "http://one", retries=0)], "upstreams": [up]})
    with trio.fail_after(10):
        first = await call(port, "GET", "/a")
        await trio.sleep(0.2)  # (the keeper hears the report)
        second = await call(port, "GET", "/b")
    assert first.status == 502
    assert second.status == 503, (second.status, second.body)
    # Kong's log phase reported $upstream_status 502 (listed): the only target is unhealthy, no peer is left
    assert (second.status, second.json()["message"]) == (503, "failure to get a peer from the ring-balancer")
    assert len(closer.requests) == 1


async def test_a_post_not_tried_again_is_reported_by_its_502_not_as_a_tcp_failure(nursery, gateway) -> None:
    """With passive.unhealthy.tcp_failures 1 and Kong's default http_statuses, a POST whose target closes without
    answering gets 502 and leaves the target healthy in Kong (the log phase reports $upstream_status 502, not
    listed): the next POST reaches the target again (another 502). nginx tries a sent POST no further
    (ngx_http_upstream_next's non_idempotent rule), so the try is the request's last, reported in Kong's log phase
    (kong/runloop/handler.lua report_http_status). It was a TCP failure: the target went unhealthy, the next POST a
    503 "failure to get a peer"."""
    closer = BadBackend("close")
    await nursery.start(closer.serve)
    checks = {"passive": {"unhealthy": {"tcp_failures": 1}}}
    up = {"name": "one", "healthchecks": checks, "targets": [{"target": f"127.0.0.1:{closer.port}"}]}
    port = await gateway({"services": [service("svc", "http://one")], "upstreams": [up]})  # retries: Kong's 5
    with trio.fail_after(10):
        first = await call(port, "POST", "/a", body=b"x")
        tried = len(closer.requests)
        await trio.sleep(0.3)  # (the keeper hears the report, if any)
        second = await call(port, "POST", "/b", body=b"y")
    assert first.status == 502
    assert tried == 1  # a POST that was sent is not tried again (nginx's non_idempotent rule)
    assert second.status == 502, (second.status, second.body)  # Kong: still healthy, the POST reaches it again
    assert len(closer.requests) == 2
