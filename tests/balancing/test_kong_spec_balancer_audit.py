"""Kong 3.9.3's balancer integration specs (spec/02-integration/05-proxy/10-balancer/), the `it` blocks no
existing test ported, against a real in-process gateway and real backends.

Kong's balancer_utils: upstreams with `slots: 10`, targets of weight 10, one request at a time (client_requests);
https_server counts per target the answers it gave ("ok": 2xx, "fail": the rest and the timed-out ones).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import h11
import pytest
import trio
from backends import request, service, upstream


@pytest.fixture
def http_codec() -> str:
    """One codec: balancing does not depend on it."""
    return "llhttp"


TIMEOUT = 10
SLOTS = 10


class KongServer:
    """Kong's spec https_server: a backend whose answer a test switches (`mode`): "ok" answers 200, "unhealthy"
    500, "timeout" holds the next request past the gateway's read timeout once, then answers 200 again.
    `ok`/`fail` count as https_server counts them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.mode = "ok"
        self.ok = 0
        self.fail = 0
        self.hold = 1.0
        self.status_ok = 0
        self.delay = 0.0  # https_server's delay: every proxied answer waits this long
        self.status_fail = 0

    @property
    def total(self) -> int:
        return self.ok + self.fail

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._on_conn, listeners, handler_nursery=nursery)

    async def _on_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                got_request = False
                path = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                        continue
                    if isinstance(event, h11.Request):
                        got_request = True
                        path = event.target
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                        return
                if not got_request:
                    return
                if path.startswith(b"/status"):  # the active checks' path, counted apart as https_server does
                    status = 500 if self.mode == "unhealthy" else 200
                    if status == 200:
                        self.status_ok += 1
                    else:
                        self.status_fail += 1
                    await stream.send_all(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % status)
                    return
                if self.mode == "timeout":
                    self.mode = "ok"  # https_server's /timeout: the next request only
                    self.fail += 1
                    await trio.sleep(self.hold)
                    return
                status = 500 if self.mode == "unhealthy" else 200
                if self.delay:
                    await trio.sleep(self.delay)
                if status == 200:
                    self.ok += 1
                else:
                    self.fail += 1
                body = b'{"ok":true}'
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
                    (b"content-length", b"%d" % len(body)), (b"x-backend", self.name.encode())])))
                await stream.send_all(conn.send(h11.Data(data=body)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def servers(nursery: trio.Nursery, count: int) -> list[KongServer]:
    started = []
    for i in range(count):
        server = KongServer(f"s{i + 1}")
        await nursery.start(server.serve)
        started.append(server)
    return started


def kong_upstream(name: str, targets: list[KongServer], **fields: Any) -> dict[str, Any]:
    return upstream(name, [t.port for t in targets], [10] * len(targets), slots=SLOTS, **fields)


async def client_requests(port: int, count: int, path: str = "/",
                          headers: list[tuple[str, str]] | None = None) -> tuple[int, int, int, Counter[str]]:
    """balancer_utils.client_requests: (oks, fails, last status), plus who answered each 200."""
    oks = fails = last = 0
    seen: Counter[str] = Counter()
    with trio.fail_after(TIMEOUT):
        for _ in range(count):
            reply = await request(port, "GET", path, headers=headers)
            last = reply.status
            if reply.status == 200:
                oks += 1
                seen[reply.header("x-backend")] += 1
            else:
                fails += 1
    return oks, fails, last, seen


# --- 01-healthchecks_spec.lua -------------------------------------------------------------------------------------


async def test_kong_generated_401_is_not_a_passive_health_failure(nursery, gateway):
    """01-healthchecks_spec.lua "do not count Kong-generated errors as failures": passive http_statuses {401, 500}
    and every threshold 1; a 401 made by an auth plugin (never proxied: kong/runloop/handler.lua:1621
    `if not ctx.KONG_PROXIED then return end`) takes no target out, so both keep serving."""
    s1, s2 = await servers(nursery, 2)
    checks = {"passive": {"healthy": {"successes": 1},
                          "unhealthy": {"http_statuses": [401, 500], "http_failures": 1, "tcp_failures": 1,
                                        "timeouts": 1}}}
    port = await gateway({
        "services": [service("svc", "http://balanced", connect_timeout=50,
                             plugins=[{"name": "key-auth", "config": {"key_names": ["apikey"]}}])],
        "upstreams": [kong_upstream("balanced", [s1, s2], healthchecks=checks)],
        "consumers": [{"username": "alice", "keyauth_credentials": [{"key": "k1"}]}]})
    oks, fails, last, _ = await client_requests(port, 1)
    assert (oks, fails, last) == (0, 1, 401)
    oks, fails, last, _ = await client_requests(port, SLOTS * 2, headers=[("apikey", "k1")])
    assert (oks, fails, last) == (SLOTS * 2, 0, 200)
    assert s1.ok > 0 and s2.ok > 0 and s1.fail == s2.fail == 0


async def test_passive_connection_timeout_takes_the_target_out_and_the_request_is_retried(nursery, gateway):
    """01-healthchecks_spec.lua "perform passive health checks -- connection #timeouts": passive timeouts = 1;
    server2 times out once (its request is retried on server1: every client request is a 200) and gets no more
    traffic: server1 1.5 * SLOTS oks, server2 SLOTS / 2 oks and 1 fail."""
    s1, s2 = await servers(nursery, 2)
    s2.hold = 1.0
    checks = {"passive": {"unhealthy": {"timeouts": 1}}}
    port = await gateway({"services": [service("svc", "http://balanced", read_timeout=300, write_timeout=300)],
                          "upstreams": [kong_upstream("balanced", [s1, s2], healthchecks=checks)]})
    oks1, fails1, _, _ = await client_requests(port, SLOTS)
    s2.mode = "timeout"
    oks2, fails2, _, _ = await client_requests(port, SLOTS)
    assert (s1.ok, s1.fail) == (SLOTS * 3 // 2, 0)
    assert (s2.ok, s2.fail) == (SLOTS // 2, 1)
    assert (oks1 + oks2, fails1 + fails2) == (SLOTS * 2, 0)


async def test_without_health_checks_a_failing_target_keeps_its_traffic(nursery, gateway):
    """01-healthchecks_spec.lua "does not perform health checks when disabled (#3304)": an upstream with Kong's
    default healthchecks (every threshold 0): a target answering 500 keeps getting every request, and 200 again
    after it recovers."""
    (s1,) = await servers(nursery, 1)
    port = await gateway({"services": [service("svc", "http://balanced")],
                          "upstreams": [kong_upstream("balanced", [s1])]})
    for healthy in (True, False, True):
        s1.mode = "ok" if healthy else "unhealthy"
        before = s1.total
        oks, fails, last, _ = await client_requests(port, 10)
        assert s1.total - before == 10
        assert (oks, fails, last) == ((10, 0, 200) if healthy else (0, 10, 500))


async def test_explicit_default_passive_block_counts_nothing(nursery, gateway):
    """Same spec, with Kong's defaults written out (passive http_statuses listing 500, http_failures 0): a 0
    threshold disables the count (lua-resty-healthcheck incr_counter: `limit == 0` never trips)."""
    (s1,) = await servers(nursery, 1)
    checks = {"passive": {"unhealthy": {"http_statuses": [429, 500, 503], "http_failures": 0, "tcp_failures": 0,
                                        "timeouts": 0}}}
    port = await gateway({"services": [service("svc", "http://balanced")],
                          "upstreams": [kong_upstream("balanced", [s1], healthchecks=checks)]})
    s1.mode = "unhealthy"
    oks, fails, last, _ = await client_requests(port, 10)
    assert (oks, fails, last, s1.fail) == (0, 10, 500, 10)
    s1.mode = "ok"
    oks, fails, last, _ = await client_requests(port, 10)
    assert (oks, fails, last) == (10, 0, 200)


async def test_consistent_hashing_passive_check_moves_the_key_off_its_failed_target(nursery, gateway):
    """01-healthchecks_spec.lua "Consistent-hashing ... passive healthcheck" (hash_on header `hashme`, passive
    http_failures 1, successes 1): every request of one key goes to one target; once that target fails (500 here,
    in the default http_statuses) it is out and the key's requests go to another target, all of them."""
    s = await servers(nursery, 3)
    checks = {"passive": {"type": "http", "healthy": {"successes": 1}, "unhealthy": {"http_failures": 1}}}
    port = await gateway({"services": [service("svc", "http://balanced")],
                          "upstreams": [kong_upstream("balanced", s, hash_on="header", hash_on_header="hashme",
                                                      healthchecks=checks)]})
    headers = [("hashme", "just a value")]
    _, _, _, seen = await client_requests(port, 9, headers=headers)
    assert len(seen) == 1 and sum(seen.values()) == 9
    first = next(x for x in s if x.name in seen)
    first.mode = "unhealthy"
    oks, fails, _, seen2 = await client_requests(port, 9, headers=headers)
    assert first.fail == 1 and (oks, fails) == (8, 1)
    assert len(seen2) == 1 and first.name not in seen2


@pytest.mark.parametrize("nfails", [1, 2, 3])
async def test_active_checks_up_then_down(nursery, gateway, nfails):
    """01-healthchecks_spec.lua "perform active health checks -- up then down" (nfails 1 to 3): active http_path
    /status, healthy.successes 1, unhealthy.http_failures nfails; server2 turns unhealthy after SLOTS / 2 requests
    each; once its probes fail nfails times, server1 takes every request: server1 15 oks, server2 5, no fails."""
    s1, s2 = await servers(nursery, 2)
    interval = 0.1
    checks = {"active": {"http_path": "/status", "healthy": {"interval": interval, "successes": 1},
                         "unhealthy": {"interval": interval, "http_failures": nfails}}}
    port = await gateway({"services": [service("svc", "http://balanced", connect_timeout=50)],
                          "upstreams": [kong_upstream("balanced", [s1, s2], healthchecks=checks)]})
    oks1, fails1, _, _ = await client_requests(port, SLOTS)
    s2.mode = "unhealthy"
    with trio.fail_after(TIMEOUT):
        while s2.status_fail < nfails:
            await trio.sleep(0.02)
    await trio.sleep(0.3)  # the verdict's way to the worker
    oks2, fails2, _, _ = await client_requests(port, SLOTS)
    assert (s1.ok, s2.ok, s1.fail, s2.fail) == (SLOTS * 3 // 2, SLOTS // 2, 0, 0)
    assert (oks1 + oks2, fails1 + fails2) == (SLOTS * 2, 0)
    assert s1.status_ok > 0 and s1.status_fail == 0


async def test_active_checks_detect_before_any_proxy_traffic(nursery, gateway):
    """01-healthchecks_spec.lua "perform active health checks -- can detect before any proxy traffic": server2
    unhealthy before the gateway starts (http_failures and tcp_failures 2): once its probes fail twice, server1
    gets all SLOTS * 2 requests and server2 none."""
    s1, s2 = await servers(nursery, 2)
    s2.mode = "unhealthy"
    checks = {"active": {"http_path": "/status", "healthy": {"interval": 0.1, "successes": 1},
                         "unhealthy": {"interval": 0.1, "http_failures": 2, "tcp_failures": 2}}}
    port = await gateway({"services": [service("svc", "http://balanced")],
                          "upstreams": [kong_upstream("balanced", [s1, s2], healthchecks=checks)]})
    with trio.fail_after(TIMEOUT):
        while s2.status_fail < 2:
            await trio.sleep(0.02)
    await trio.sleep(0.3)
    oks, fails, _, _ = await client_requests(port, SLOTS * 2)
    assert (oks, fails, s1.ok, s2.ok, s1.fail, s2.fail) == (SLOTS * 2, 0, SLOTS * 2, 0, 0, 0)


async def test_passive_checks_take_out_a_target_after_three_failures(nursery, gateway):
    """01-healthchecks_spec.lua "perform passive health checks", nfails = 3 (tests/health/test_passive_immediacy.py
    runs 1 and 2): server2 turns to 500 after SLOTS requests; exactly 3 of the next SLOTS reach it and fail."""
    s1, s2 = await servers(nursery, 2)
    checks = {"passive": {"unhealthy": {"http_failures": 3}}}
    port = await gateway({"services": [service("svc", "http://balanced")],
                          "upstreams": [kong_upstream("balanced", [s1, s2], healthchecks=checks)]})
    oks1, fails1, _, _ = await client_requests(port, SLOTS)
    s2.mode = "unhealthy"
    oks2, fails2, _, _ = await client_requests(port, SLOTS)
    assert (s2.ok, s2.fail, s1.fail) == (SLOTS // 2, 3, 0)
    assert (oks1 + oks2, fails1 + fails2) == (SLOTS * 2 - 3, 3)


# --- 03-consistent-hashing_spec.lua -------------------------------------------------------------------------------


async def test_hashing_on_multiple_headers_sends_every_request_to_one_target(nursery, gateway):
    """03-consistent-hashing_spec.lua "hashing on multiple headers": `hashme` sent twice; the two values are one
    key (nginx 1.23+ joins them), so one target gets all SLOTS * 2 requests."""
    s1, s2 = await servers(nursery, 2)
    port = await gateway({"services": [service("svc", "http://balanced")],
                          "upstreams": [kong_upstream("balanced", [s1, s2], hash_on="header",
                                                      hash_on_header="hashme")]})
    oks, _, _, seen = await client_requests(port, SLOTS * 2, headers=[("hashme", "1st value"),
                                                                       ("hashme", "2nd value")])
    assert oks == SLOTS * 2 and len(seen) == 1


async def test_hashing_on_a_missing_header_sends_every_request_to_one_target(nursery, gateway):
    """03-consistent-hashing_spec.lua "hashing on missing header": no `hashme` (and no fallback): Kong hashes
    nothing... its log says "value to hash: []" and one target gets every request."""
    s1, s2 = await servers(nursery, 2)
    port = await gateway({"services": [service("svc", "http://balanced")],
                          "upstreams": [kong_upstream("balanced", [s1, s2], hash_on="header",
                                                      hash_on_header="hashme")]})
    oks, _, _, seen = await client_requests(port, SLOTS * 2, headers=[("nothashme", "just a value")])
    assert oks == SLOTS * 2 and len(seen) == 1, seen


# --- 02-least-connections_spec.lua, 07-latency_spec.lua -----------------------------------------------------------


async def concurrent_load(port: int, clients: int, seconds: float) -> int:
    """The specs' threads: each sends requests one after the other on new connections until the time is up."""
    done = 0
    deadline = trio.current_time() + seconds

    async def client() -> None:
        nonlocal done
        while trio.current_time() < deadline:
            reply = await request(port, "GET", "/")
            assert reply.status == 200
            done += 1

    with trio.fail_after(seconds + TIMEOUT):
        async with trio.open_nursery() as n:
            for _ in range(clients):
                n.start_soon(client)
    return done


async def test_least_connections_balances_by_connections_in_flight(nursery, gateway):
    """02-least-connections_spec.lua "balances by least-connections": two targets of weight 100, one answering in
    100 ms, the other in 200 ms, under concurrent load: the fast one serves about twice as many (ratio near 2 +- 1)."""
    s1, s2 = await servers(nursery, 2)
    s1.delay, s2.delay = 0.1, 0.2
    port = await gateway({"services": [service("svc", "http://lc")],
                          "upstreams": [upstream("lc", [s1.port, s2.port], [100, 100],
                                                 algorithm="least-connections")]})
    await concurrent_load(port, 20, 1.2)
    assert s2.ok > 0
    assert 0.9 <= s1.ok / s2.ok <= 4, (s1.ok, s2.ok)  # (the spec's 2 +- 1, a margin for a loaded host)


async def test_latency_balances_by_latency(nursery, gateway):
    """07-latency_spec.lua "balances by latency": one target answering fast, the other ten times slower (the spec's
    100 ms and 1000 ms, scaled to 20 ms and 200 ms, its 2 s pauses to 0.4 s); one request per connection: 6 at
    once, a pause, 8 at once, a pause, 86 at once; the fast one serves more than 10 times as many."""
    s1, s2 = await servers(nursery, 2)
    s1.delay, s2.delay = 0.02, 0.2
    port = await gateway({"services": [service("svc", "http://lat")],
                          "upstreams": [upstream("lat", [s1.port, s2.port], [100, 100], algorithm="latency")]})

    async def one() -> None:
        assert (await request(port, "GET", "/ewma")).status == 200

    with trio.fail_after(TIMEOUT):
        for count, pause in ((6, 0.4), (8, 0.4), (86, 0.0)):
            async with trio.open_nursery() as n:
                for _ in range(count):
                    n.start_soon(one)
                await trio.sleep(pause)
    assert s1.ok + s2.ok == 100
    assert s1.ok > 5 * max(s2.ok, 1), (s1.ok, s2.ok)  # (the spec's 10x, a margin for a loaded host)
