"""The circuit-breaker as README.md's "Shared state" paragraph describes it (the guide's plugin: no Kong source):
thresholds checked on every outcome, failure_threshold beside error_threshold, probe permits that last as long as a
probe can, one config per upstream, Kong's plugin scoping (a route the plugin does not run for is neither blocked
nor counted), timeouts mid-response counted, and a sweep that cuts only the opened upstream's requests."""

from __future__ import annotations

import h11
import pytest
import trio
import yaml
from backends import _Backend, one_event_then_silence

from gateway.breaker import Breaker, BreakerBoard, BreakerConfig, State
from gateway.breaker.config import PROBE_MARGIN_S
from gateway.breaker.messages import single
from gateway.config import parse_config
from gateway.policies.circuit_breaker.schema import CircuitBreakerConfig
from gateway.runtime import ConfigError, Runtime, compile_config

# ---- a backend whose answer depends on the path ---------------------------------------------------------------------


class PathBackend(_Backend):
    """/fail: 500; /stall: a 200 head promising 100 bytes, 10 of them, then silence; /sse: one event then silence;
    anything else: 200."""

    def __init__(self) -> None:
        super().__init__("paths")
        self.closed_streams = 0

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            seen = await self._read_request(stream, conn)
            if seen is None:
                return
            path = seen.target.split("?")[0]
            if path.endswith("/stall"):
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
                    (b"content-length", b"100")])) + conn.send(h11.Data(data=b"x" * 10)))
                while await stream.receive_some(1024):
                    pass
                return
            if path.endswith("/sse"):
                await one_event_then_silence(stream, conn)
                self.closed_streams += 1
                return
            status = 500 if path.endswith("/fail") else 200
            body = b'{"ok": %s}' % (b"false" if status == 500 else b"true")
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())])) +
                conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()


async def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a new connection: (status, body); status 0 when the response was cut."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    status, body = 0, b""
    try:
        with trio.fail_after(timeout):
            await stream.send_all(conn.send(h11.Request(method="GET", target=path, headers=[("host", "gw.test")])) +
                                  conn.send(h11.EndOfMessage()))
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    try:
                        data = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        return 0, body
                    if not data:
                        return (0, body) if status == 0 or conn.their_state is not h11.DONE else (status, body)
                    try:
                        conn.receive_data(data)
                    except h11.RemoteProtocolError:
                        return 0, body
                    continue
                if isinstance(ev, h11.Response):
                    status = ev.status_code
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    return status, body
                elif isinstance(ev, h11.ConnectionClosed):
                    return 0, body
    except h11.RemoteProtocolError:
        return 0, body
    finally:
        await trio.aclose_forcefully(stream)


async def open_event_stream(port: int, path: bytes) -> trio.SocketStream:
    """A client's event stream through the gateway, its first event (PathBackend's "data: one") received."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET %s HTTP/1.1\r\nHost: gw.test\r\nAccept: text/event-stream\r\n\r\n" % path)
    received = b""
    with trio.fail_after(5):
        while b"data: one" not in received:
            received += await stream.receive_some(4096)
    return stream


def compiled(doc: dict) -> Runtime:
    cfg = parse_config(yaml.safe_dump({"_format_version": "3.0", **doc}), "kong.yml")
    return compile_config(cfg, "kong.yml")


UPSTREAM = [{"name": "up", "targets": [{"target": "127.0.0.1:9"}]}]
TWO_ROUTES = [{"name": "s", "url": "http://up", "routes": [{"name": "a", "paths": ["/a"]},
                                                          {"name": "b", "paths": ["/b"]}]}]
TRIPS_AT_ONCE = {"error_threshold": 1, "volume_threshold": 1, "half_open_timeout": 30000}


# ---- the state machine -----------------------------------------------------------------------------------------------


def test_window_thresholds_trip_when_a_success_brings_the_volume_up():
    """README: "Closed -> open when, within a rolling 10 s window, requests >= `volume_threshold` and failures >=
    `error_threshold`", whatever the last outcome was: five failures then five successes within a second meet both
    defaults (10 requests, 5 failures), as Hystrix's health snapshot sees them. (Across workers this is the usual
    order: a worker's failures leave within 20 ms, its successes only every 0.2 s.)"""
    breaker = Breaker("up|a:1", BreakerConfig(error_threshold=5, volume_threshold=10))
    for i in range(5):
        breaker.record(False, 0.1 * i)
    for i in range(4):
        breaker.record(True, 0.5 + 0.1 * i)
    assert breaker.state is State.CLOSED  # 9 requests: below the volume threshold
    breaker.record(True, 0.9)
    assert breaker.state is State.OPEN


def test_failure_threshold_does_not_replace_error_threshold():
    """README: open when "requests >= `volume_threshold` and failures >= `error_threshold`; or after
    `failure_threshold` consecutive failures": two conditions. With error_threshold 50 and failure_threshold 3, ten
    requests of which five failed, never two in a row, meet neither (5 < 50 failures; runs of 1 < 3)."""
    cfg = CircuitBreakerConfig(error_threshold=50, volume_threshold=10, failure_threshold=3)
    breaker = Breaker("up|a:1", BreakerConfig.from_plugin(cfg))
    for i in range(10):
        breaker.record(i % 2 == 0, 0.1 * i)  # S F S F ...: 5 failures, never 2 in a row, the last a failure
    assert breaker.state is State.CLOSED
    breaker.record(False, 1.0)
    breaker.record(False, 1.1)
    assert breaker.state is State.OPEN  # F F F in a row: failure_threshold's own condition


def test_a_probe_still_in_flight_keeps_its_permit():
    """README: "in half-open the keeper grants exactly `half_open_max_calls` probe permits across all workers".
    With Kong's default service timeouts (60 s each, 5 retries) a probe may wait minutes: ten seconds after its
    grant its permit is still in flight, and no second probe goes to the target."""
    board = BreakerBoard({"up|a:1": BreakerConfig(error_threshold=1, volume_threshold=1, open_s=1.0,
                                                  half_open_max_calls=1)})
    board.record([single("up|a:1", False)], 0.0)
    updates, permits = board.tick(1.0)
    assert permits == ["up|a:1"]  # the one probe of this half-open spell, no outcome yet
    assert board.in_flight("up|a:1") == (1.0,)
    _, later = board.tick(11.5)
    assert later == [], "a second probe permit was granted while the first probe is still in flight"


def test_a_lost_permit_still_lapses_once_its_probe_cannot_be_running():
    """README: a permit whose probe has not reported after the services' connect_timeout x tries + write_timeout +
    read_timeout + 5 s is taken back (its worker wedged, its outcome lost), so half-open cannot wait for ever."""
    board = BreakerBoard({"up|a:1": BreakerConfig(error_threshold=1, volume_threshold=1, open_s=1.0,
                                                  probe_ttl_s=20.0)})
    board.record([single("up|a:1", False)], 0.0)
    assert board.tick(1.0)[1] == ["up|a:1"]
    assert board.tick(20.9)[1] == []
    assert board.tick(21.0)[1] == ["up|a:1"]


def test_a_reload_that_changes_only_the_probe_lifetime_keeps_the_breakers_state():
    """README (restart and reload): a breaker is kept across a reload while its config stays; a service's timeouts
    changing only the probe lifetime is not a new breaker (an open circuit stays open), and the new lifetime holds."""
    old = BreakerBoard({"up|a:1": BreakerConfig(error_threshold=1, volume_threshold=1, probe_ttl_s=20.0)})
    old.record([single("up|a:1", False)], 0.0)
    new = BreakerBoard({"up|a:1": BreakerConfig(error_threshold=1, volume_threshold=1, probe_ttl_s=90.0)})
    new.adopt(old)
    assert new.not_closed() == {"up|a:1": (State.OPEN, 0.0)}
    assert new.in_flight("up|a:1") == () and new._breakers["up|a:1"].config.probe_ttl_s == 90.0


# ---- configuration ---------------------------------------------------------------------------------------------------


def test_the_probe_lifetime_follows_the_longest_service_the_plugin_covers():
    """README: a probe permit lasts connect_timeout x tries + write_timeout + read_timeout + 5 s of the services
    whose requests the plugin covers on the upstream, the longest of them."""
    runtime = compiled({
        "services": [{"name": "quick", "url": "http://up", "connect_timeout": 1000, "write_timeout": 2000,
                      "read_timeout": 3000, "retries": 1, "routes": [{"name": "q", "paths": ["/q"]}]},
                     {"name": "slow", "url": "http://up", "connect_timeout": 2000, "write_timeout": 3000,
                      "read_timeout": 40000, "retries": 2, "routes": [{"name": "s", "paths": ["/s"]}]}],
        "upstreams": UPSTREAM, "plugins": [{"name": "circuit-breaker", "config": {}}]})
    assert runtime.breakers["up|127.0.0.1:9"].probe_ttl_s == 2 * 3 + 3 + 40 + PROBE_MARGIN_S


def test_two_instances_with_different_configs_on_one_upstream_are_refused():
    """README: "one breaker per target for the whole gateway"; the project's rule: a key accepted does what it says.
    Two routes of one service each with an instance (Kong's scoping allows it): the second's thresholds would be
    dropped, so check-config refuses them, naming the file and both plugins."""
    doc = {"services": TWO_ROUTES, "upstreams": UPSTREAM,
           "plugins": [{"name": "circuit-breaker", "route": "a", "config": {"error_threshold": 1}},
                       {"name": "circuit-breaker", "route": "b", "config": {"error_threshold": 100}}]}
    with pytest.raises(ConfigError, match=r"kong\.yml: plugins\[0\] and plugins\[1\]: two circuit-breaker "
                                          r"instances with different configs run for requests to upstream 'up'"):
        compiled(doc)


def test_two_instances_with_the_same_config_on_one_upstream_share_its_breakers():
    """README: one breaker per target: two services on one upstream, each with an instance of the same config, are
    covered both, by one breaker per target."""
    runtime = compiled({
        "services": [{"name": "s1", "url": "http://up", "routes": [{"name": "a", "paths": ["/a"]}]},
                     {"name": "s2", "url": "http://up", "routes": [{"name": "b", "paths": ["/b"]}]}],
        "upstreams": UPSTREAM,
        "plugins": [{"name": "circuit-breaker", "service": "s1", "config": {"error_threshold": 3}},
                    {"name": "circuit-breaker", "service": "s2", "config": {"error_threshold": 3}}]})
    assert list(runtime.breakers) == ["up|127.0.0.1:9"] and runtime.breakers["up|127.0.0.1:9"].error_threshold == 3
    assert runtime.groups["up"].breakers


def test_a_global_instance_covers_every_upstream():
    """README (Kong's scoping): a global instance runs for every route, so every upstream routes reach has its
    breakers."""
    runtime = compiled({
        "services": [{"name": "s1", "url": "http://up", "routes": [{"name": "a", "paths": ["/a"]}]},
                     {"name": "s2", "url": "http://127.0.0.1:8", "routes": [{"name": "b", "paths": ["/b"]}]}],
        "upstreams": UPSTREAM, "plugins": [{"name": "circuit-breaker", "config": {}}]})
    assert sorted(runtime.breakers) == ["s2:127.0.0.1:8|127.0.0.1:8", "up|127.0.0.1:9"]


def test_a_service_without_routes_has_no_breakers():
    """README: breakers are for the requests the plugin runs for; a service no route reaches has none."""
    runtime = compiled({"services": [{"name": "s", "url": "http://up"}], "upstreams": UPSTREAM,
                        "plugins": [{"name": "circuit-breaker", "service": "s", "config": {}}]})
    assert runtime.breakers == {} and not runtime.groups["up"].breakers


@pytest.mark.parametrize("given", [{"half_open_timeout": 60000, "timeout": 1000},
                                   {"half_open_timeout": 30000, "timeout": 1000}])
def test_timeout_alias_and_half_open_timeout_disagreeing_is_refused(given):
    """README: "`half_open_timeout` (ms; `timeout` is an alias)": given both, with different values (even
    half_open_timeout at its default), one would be dropped without a word; check-config refuses them."""
    doc = {"services": TWO_ROUTES, "upstreams": UPSTREAM,
           "plugins": [{"name": "circuit-breaker", "service": "s", "config": given}]}
    with pytest.raises(ConfigError, match=r"kong\.yml: plugins\[0\]\.config: timeout \(1000\) and half_open_timeout "
                                          r"\(\d+\) disagree"):
        compiled(doc)


# ---- end to end (in-process gateway and keeper) ----------------------------------------------------------------------


async def test_a_response_body_that_times_out_counts_as_a_failure(gateway, nursery):
    """README: failures are "(5xx, connect failures, timeouts)". An upstream that sends its head and stalls mid-body
    for read_timeout is cut (nginx's "upstream timed out"); with error_threshold 1 / volume_threshold 1 that opens
    the circuit, as a mid-body break does."""
    backend = PathBackend()
    await nursery.start(backend.serve)
    port = await gateway({
        "services": [{"name": "s", "url": "http://up", "read_timeout": 300, "retries": 0,
                      "routes": [{"name": "r", "paths": ["/"]}]}],
        "upstreams": [{"name": "up", "targets": [{"target": f"127.0.0.1:{backend.port}"}]}],
        "plugins": [{"name": "circuit-breaker", "service": "s", "config": TRIPS_AT_ONCE}]})
    assert (await get(port, "/ok"))[0] == 200
    assert (await get(port, "/stall"))[0] == 0  # cut after read_timeout (visibly incomplete)
    await trio.sleep(0.5)  # outcomes leave within 20 ms, the keeper (in-process) answers at once
    status, body = await get(port, "/ok")
    assert status == 503, f"the stalled response's timeout was not counted against the target ({status} {body!r})"


async def test_a_body_timeout_leaves_passive_health_accounting_as_it_was(gateway, nursery):
    """Passive health checks keep Kong's accounting of a try whose body stalls (the breaker's failure is told to the
    breaker alone): with passive.unhealthy.timeouts 1, the sole target stays healthy and the next request is
    answered."""
    backend = PathBackend()
    await nursery.start(backend.serve)
    port = await gateway({
        "services": [{"name": "s", "url": "http://up", "read_timeout": 300, "retries": 0,
                      "routes": [{"name": "r", "paths": ["/"]}]}],
        "upstreams": [{"name": "up", "targets": [{"target": f"127.0.0.1:{backend.port}"}],
                       "healthchecks": {"passive": {"unhealthy": {"timeouts": 1}}}}],
        "plugins": [{"name": "circuit-breaker", "service": "s",
                     "config": {"error_threshold": 100, "volume_threshold": 100}}]})
    assert (await get(port, "/stall"))[0] == 0
    await trio.sleep(0.5)
    assert (await get(port, "/ok"))[0] == 200


async def _breaker_on_route_a_only(gateway, nursery) -> int:
    """A gateway whose service has routes a (/a) and b (/b) to one PathBackend, a circuit-breaker on route a only."""
    backend = PathBackend()
    await nursery.start(backend.serve)
    return await gateway({
        "services": [{"name": "s", "url": "http://up", "retries": 0,
                      "routes": [{"name": "a", "paths": ["/a"]}, {"name": "b", "paths": ["/b"]}]}],
        "upstreams": [{"name": "up", "targets": [{"target": f"127.0.0.1:{backend.port}"}]}],
        "plugins": [{"name": "circuit-breaker", "route": "a", "config": TRIPS_AT_ONCE}]})


async def test_a_route_without_the_plugin_is_not_blocked_by_another_routes_breaker(gateway, nursery):
    """README (Kong's scoping): "Per plugin name one instance applies, the first found in Kong's order: ... route,
    service, global". With an instance on route a only, the plugin does not run for route b of the same service:
    once a's circuit is open, b's requests still reach the target."""
    port = await _breaker_on_route_a_only(gateway, nursery)
    assert (await get(port, "/a/fail"))[0] == 500
    await trio.sleep(0.3)
    assert (await get(port, "/a/ok"))[0] == 503  # a's circuit is open, as configured
    status, body = await get(port, "/b/ok")
    assert status == 200, f"route b has no circuit-breaker, yet got {status} {body!r}"


async def test_a_route_without_the_plugin_is_not_counted_in_another_routes_breaker(gateway, nursery):
    """README (Kong's scoping): the plugin does not run for route b, so b's 500s say nothing to a's breaker, which
    stays closed."""
    port = await _breaker_on_route_a_only(gateway, nursery)
    for _ in range(3):
        assert (await get(port, "/b/fail"))[0] == 500
    await trio.sleep(0.3)
    assert (await get(port, "/a/ok"))[0] == 200


async def test_two_services_with_the_plugin_on_one_upstream_share_its_breakers(gateway, nursery):
    """README: "one breaker per target for the whole gateway": a failure through one service opens the target's
    circuit for the other service's requests too."""
    backend = PathBackend()
    await nursery.start(backend.serve)
    port = await gateway({
        "services": [{"name": "s1", "url": "http://up", "retries": 0, "routes": [{"name": "a", "paths": ["/a"]}]},
                     {"name": "s2", "url": "http://up", "retries": 0, "routes": [{"name": "b", "paths": ["/b"]}]}],
        "upstreams": [{"name": "up", "targets": [{"target": f"127.0.0.1:{backend.port}"}]}],
        "plugins": [{"name": "circuit-breaker", "service": "s1", "config": TRIPS_AT_ONCE},
                    {"name": "circuit-breaker", "service": "s2", "config": TRIPS_AT_ONCE}]})
    assert (await get(port, "/a/fail"))[0] == 500
    await trio.sleep(0.3)
    assert (await get(port, "/b/ok"))[0] == 503


async def test_sweep_force_shutdown_cuts_only_the_opened_targets_requests(gateway, nursery):
    """README: with sweep_force_shutdown the workers shut down the busy connections carrying requests to the
    target whose circuit opens, the target being `<upstream>|<host:port>`: a stream of another service, whose
    upstream (`up2`, no circuit-breaker) is at the same address, runs on."""
    backend = PathBackend()
    await nursery.start(backend.serve)
    target = [{"target": f"127.0.0.1:{backend.port}"}]
    port = await gateway({
        "services": [{"name": "cb", "url": "http://up", "retries": 0, "routes": [{"name": "cb", "paths": ["/cb"]}]},
                     {"name": "tg", "url": "http://up2", "routes": [{"name": "tg", "paths": ["/tg"]}]}],
        "upstreams": [{"name": "up", "targets": target}, {"name": "up2", "targets": target}],
        "plugins": [{"name": "circuit-breaker", "service": "cb",
                     "config": {**TRIPS_AT_ONCE, "sweep_force_shutdown": True}}]})
    stream = await open_event_stream(port, b"/tg/sse")
    try:
        assert (await get(port, "/cb/fail"))[0] == 500  # opens up's circuit (and sweeps)
        await trio.sleep(0.3)
        assert (await get(port, "/cb/ok"))[0] == 503  # it is open
        cut = False
        with trio.move_on_after(1.0):
            try:
                data = await stream.receive_some(4096)
                cut = not data or b"0\r\n\r\n" in data
            except trio.BrokenResourceError:
                cut = True
        assert not cut, "a stream of service tg (upstream up2, no circuit-breaker) was cut by up's circuit opening"
        assert backend.closed_streams == 0
    finally:
        await trio.aclose_forcefully(stream)


async def test_sweep_force_shutdown_cuts_the_opened_upstreams_stream(gateway, nursery):
    """README: "a response under way, an SSE stream for instance, is cut where the client can see it" when its
    target's circuit opens with sweep_force_shutdown: the stream of the covered upstream is cut."""
    backend = PathBackend()
    await nursery.start(backend.serve)
    port = await gateway({
        "services": [{"name": "cb", "url": "http://up", "retries": 0, "routes": [{"name": "cb", "paths": ["/cb"]}]}],
        "upstreams": [{"name": "up", "targets": [{"target": f"127.0.0.1:{backend.port}"}]}],
        "plugins": [{"name": "circuit-breaker", "service": "cb",
                     "config": {**TRIPS_AT_ONCE, "sweep_force_shutdown": True}}]})
    stream = await open_event_stream(port, b"/cb/sse")
    try:
        assert (await get(port, "/cb/fail"))[0] == 500  # opens up's circuit, and sweeps
        cut = False
        with trio.move_on_after(2.0):
            try:
                while data := await stream.receive_some(4096):
                    if b"0\r\n\r\n" in data:
                        break
                cut = True
            except trio.BrokenResourceError:
                cut = True
        assert cut, "the stream to the opened target ran on"
    finally:
        await trio.aclose_forcefully(stream)
