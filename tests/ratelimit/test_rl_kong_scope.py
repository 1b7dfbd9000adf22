"""rate-limiting's counters are Kong's: keyed by the plugin's own route and service and the identifier, never by the
plugin's id, consumer or limits (kong/plugins/rate-limiting/policies/init.lua:50-72, get_service_and_route_ids and
get_local_key: `ratelimit:<route_id>:<service_id>:<identifier>:<period_date>:<period>`, EMPTY_UUID for a missing
route or service; the redis policy's key is the same one). Instances of one route and service therefore count on one
counter, each comparing it with its own limits (handler.lua get_usage) and adding to the periods it limits
(init.lua:304-317: `if limits[period]`)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from e2e_helpers import Backend, GatewayNode
from redis_server import RedisProcess, find_redis, running_redis

from gateway.config import parse_config
from gateway.policies.rate_limiting.handler import EMPTY_UUID
from gateway.ratelimit import Ledger, LimitSpec, ReturnedLease, Window
from gateway.ratelimit.ledger import RECHECK_S
from gateway.ratelimit.redis_client import RedisSettings, RedisStore
from gateway.ratelimit.spec import counter_of, spec_tag
from gateway.runtime import compile_config
from gateway.telemetry.entities import kong_id

T0 = 1_700_000_040.0  # a whole minute (UTC)
GLOBAL = f"{EMPTY_UUID}:{EMPTY_UUID}"  # the scope of an instance on no route and no service
ROUTE = f"{kong_id('routes', 'r')}:{EMPTY_UUID}"
SERVICE = f"{EMPTY_UUID}:{kong_id('services', 's')}"
ALICE = kong_id("consumers", "alice")
CLIENT = "10.0.0.1"


# ---- the key: the plugin's route and service, never its id or consumer ----------------------------------------------


def rl(limit: float, limit_by: str = "ip", **where: str) -> dict[str, Any]:
    return {"name": "rate-limiting", **where, "config": {"day": limit, "limit_by": limit_by}}


def doc_with(plugins: list[dict[str, Any]], route_plugins: tuple[dict[str, Any], ...] = (),
             service_plugins: tuple[dict[str, Any], ...] = (), mcp: bool = False) -> dict[str, Any]:
    """Service s with route r (GET /), consumer alice, and the plugins given at the top level, on r and on s."""
    route = {"name": "r", "paths": ["/"], "plugins": list(route_plugins), **({"mcp": True} if mcp else {})}
    return {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [route],
                          "plugins": list(service_plugins)}],
            "consumers": [{"username": "alice"}], "plugins": plugins}


def instances(doc: dict[str, Any]) -> tuple[Any, Any]:
    """(the rate-limiting instance a request to / runs without a consumer, the one it runs for alice)."""
    route = compile_config(parse_config(json.dumps(doc))).router.match(b"GET", b"/", None, []).payload
    chains = route.consumer_policies
    (anyone,) = [p for p in route.policies if p.name == "rate-limiting"]
    (alices,) = [p for p in (chains.whole(ALICE) if chains is not None else route.policies)
                 if p.name == "rate-limiting"]
    return anyone, alices


def request_from(ip: str) -> SimpleNamespace:
    return SimpleNamespace(consumer=None, client_ip=ip, request=SimpleNamespace(headers=[]))


@pytest.mark.parametrize(("doc", "scope"), [
    (doc_with([rl(3), rl(5, consumer="alice")]), GLOBAL),
    (doc_with([rl(5, route="r", consumer="alice")], route_plugins=(rl(3),)), ROUTE),
    (doc_with([rl(5, service="s", consumer="alice")], service_plugins=(rl(3),)), SERVICE),
], ids=["global-and-consumer", "route-and-route-consumer", "service-and-service-consumer"])
def test_an_instance_and_a_consumers_on_the_same_route_and_service_count_on_one_counter(doc, scope):
    """get_local_key (init.lua:66-72) holds conf.route_id and conf.service_id, never the consumer: alice's instance
    and the one for everyone else key the client's address alike, `<route id>:<service id>|<identifier>`; each has
    its own limits (5 and 3), so its own lease keys (the spec's tag before the counter)."""
    anyone, alices = instances(doc)
    ex = request_from(CLIENT)
    assert counter_of(anyone.key(ex)) == counter_of(alices.key(ex)) == f"{scope}|{CLIENT}"
    assert anyone.key(ex) == spec_tag(anyone.spec) + f"{scope}|{CLIENT}" != alices.key(ex)


def test_a_routes_instance_and_a_services_count_apart():
    """A route's instance (route_id set, service_id EMPTY_UUID) and a service's (the other way round) are two keys in
    Kong: nested plugins have their parent's id only."""
    doc = doc_with([], route_plugins=(rl(3),), service_plugins=(rl(3, consumer="alice"),))
    anyone, alices = instances(doc)
    assert counter_of(anyone.key(request_from(CLIENT))) == f"{ROUTE}|{CLIENT}"
    assert counter_of(alices.key(request_from(CLIENT))) == f"{SERVICE}|{CLIENT}"


def test_instances_with_equal_limits_share_one_lease_and_its_spec():
    """Equal specs are one object (LimitSpec.from_plugin), so the instances' keys are the same lease, spent on the
    lease table's identity check."""
    anyone, alices = instances(doc_with([rl(3), rl(3, consumer="alice")]))
    assert anyone.key(request_from(CLIENT)) == alices.key(request_from(CLIENT))
    assert anyone.spec is alices.spec


def test_limit_by_mcp_tool_counts_a_tool_on_the_scopes_counter():
    """limit_by mcp-tool: the tool's name is the identifier, after the same scope (a global and a consumer's
    instance count a tool on one counter)."""
    anyone, alices = instances(doc_with([rl(3, "mcp-tool"), rl(5, "mcp-tool", consumer="alice")], mcp=True))
    assert counter_of(anyone._key("search")) == counter_of(alices._key("search")) == f"{GLOBAL}|search"


# ---- the keeper: one counter, each spec's own limits ----------------------------------------------------------------


def per(*windows: tuple[str, int], store: str = "") -> LimitSpec:
    return LimitSpec(windows=tuple(Window(period, limit) for period, limit in windows), store=store)


def key_of(spec: LimitSpec, counter: str = f"{GLOBAL}|{CLIENT}") -> str:
    return spec_tag(spec) + counter


def take_all(ledger: Ledger, spec: LimitSpec, wall: float, worker: str = "w") -> int:
    """Tokens of `spec`'s key granted to `worker` until the ledger gives none at `wall`."""
    total = 0
    while granted := ledger.grant(key_of(spec), spec, 1, 0.0, wall, worker).granted:  # type: ignore[union-attr]
        total += granted
    return total


def test_each_spec_compares_the_shared_count_with_its_own_limits():
    """handler.lua get_usage: usage is the counter's, compared with the instance's limit. The global instance (3 a
    day) admits 3; alice's (5) then 2 more on the same counter, and the global one none."""
    ledger, three, five = Ledger(), per(("day", 3)), per(("day", 5))
    assert take_all(ledger, three, T0) == 3
    assert take_all(ledger, five, T0) == 2
    assert take_all(ledger, three, T0) == 0


def test_a_spec_adds_only_to_the_periods_it_limits():
    """init.lua:304-317 increments `if limits[period]`: an instance limiting the minute adds nothing to the hour
    counter another instance reads, and the other way round."""
    ledger, minute, hour = Ledger(), per(("minute", 2)), per(("hour", 10))
    assert take_all(ledger, minute, T0) == 2
    assert take_all(ledger, hour, T0) == 10  # the minute's 2 are not in the hour's count
    assert take_all(ledger, minute, T0 + 60) == 2  # nor the hour's 10 in the next minute's


def test_tokens_given_back_return_only_to_the_windows_they_were_charged_to():
    """A spec limiting the minute gives back tokens: the minute counter goes down, the hour one another spec
    charged on the same counter does not."""
    ledger, minute, both = Ledger(), per(("minute", 10)), per(("minute", 10), ("hour", 100))
    assert ledger.grant(key_of(both), both, 3, 0.0, T0, "w").granted == 3  # type: ignore[union-attr]
    grant = ledger.grant(key_of(minute), minute, 2, 0.0, T0, "w")
    assert grant is not None and grant.granted == 2
    ledger.return_unused(ReturnedLease(key_of(minute), "w", 2, 0, grant.wall))
    assert ledger.usage(key_of(both), 0.0, T0) == {"minute": 3.0, "hour": 3.0}


def test_a_reload_changing_one_instances_limit_keeps_the_count():
    """Kong's key has no limits in it, so a reload raising a limit from 3 to 5 compares the count so far with 5: the
    new spec's key (a new tag) counts on the same counter."""
    ledger, before, after = Ledger(), per(("day", 3)), per(("day", 5))
    assert take_all(ledger, before, T0) == 3
    assert take_all(ledger, after, T0 + 1) == 2


def test_an_exhausted_window_is_asked_again_soon_while_another_specs_tokens_may_come_back():
    """Rule 9 of ledger.py over the counter: the global instance's worker holds the minute's 4 tokens unspent; alice's
    instance (4 a minute too, and an hour limit), refused, is told to ask again when they may come back (RECHECK_S),
    not at the minute's end."""
    ledger, mine, hers = Ledger(), per(("minute", 4)), per(("minute", 4), ("hour", 100))
    assert take_all(ledger, mine, T0 + 1, "w1") == 4
    grant = ledger.grant(key_of(hers), hers, 1, 0.0, T0 + 1, "w2")
    assert grant is not None and grant.granted == 0 and grant.retry <= RECHECK_S


def test_a_key_goes_when_its_windows_end_though_another_specs_window_of_its_counter_is_current():
    """Rule 10 of ledger.py: a key is dropped once none of its own windows is current; the day window another spec
    counts in keeps that spec's key, not this one."""
    ledger, second, day = Ledger(), per(("second", 5)), per(("day", 5))
    assert take_all(ledger, second, T0) == 5 and take_all(ledger, day, T0) == 5
    ledger.expire(0.0, T0 + 1.5)
    assert ledger.keys() == [key_of(day)]


def test_the_keys_of_every_spec_sharing_a_window_go_when_it_ends():
    """Rule 10 of ledger.py: each key is looked at when its first window ends, the one another spec's key began
    included (else the key would stay for ever)."""
    ledger, three, five = Ledger(), per(("minute", 3)), per(("minute", 5))
    assert take_all(ledger, three, T0) == 3 and take_all(ledger, five, T0) == 2
    ledger.expire(0.0, T0 + 60)
    assert ledger.keys() == []


def test_resetting_a_key_forgets_the_counter_for_every_spec_counting_on_it():
    ledger, three, five = Ledger(), per(("day", 3)), per(("day", 5))
    take_all(ledger, three, T0)
    take_all(ledger, five, T0)
    assert ledger.reset(key_of(three)) and ledger.keys() == []
    assert take_all(ledger, five, T0) == 5


def test_a_local_and_a_redis_instance_never_share_a_counter():
    """Kong's local policy counts in the host's shared dict, its redis policy in Redis: two stores. A redis spec's key
    has windows of its own here even before its store is known (then it grants as a local one)."""
    ledger, local, remote = Ledger(), per(("day", 3)), per(("day", 3), store="rl-redis")
    assert take_all(ledger, local, T0) == 3
    assert take_all(ledger, remote, T0) == 3


# ---- policy redis: the counter's windows in Redis, a claim per spec --------------------------------------------------


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    path, why = find_redis()
    if path is None:
        pytest.skip(why)
    with running_redis(tmp_path) as server:
        yield server


async def redis_take_all(ledger: Ledger, store: RedisStore, spec: LimitSpec) -> int:
    """Tokens of `spec`'s key granted until none is left, the due block calls run on `store` between grants."""
    total = 0
    for _ in range(100):
        grant = ledger.grant(key_of(spec), spec, 1, time.monotonic(), time.time(), "w")
        if grant is not None and not grant.granted:
            return total
        total += grant.granted if grant is not None else 0
        for key, _, call in ledger.remote_calls(time.monotonic(), time.time()):
            ledger.remote_applied(key, await store.take(call, len(call.keys) - 3), time.monotonic(), time.time())
    raise AssertionError("no end to the grants")


async def test_two_redis_instances_count_on_the_counters_windows_in_redis_each_with_its_own_limit(nursery, redis):
    """The redis policy's key is get_local_key's (init.lua:375-376): two instances on the same Redis share it. Each
    spec claims on the counter's windows as a claimant of its own, and Redis sums the claims: the global instance
    takes its 3 of the day, alice's the 2 her 5 leave."""
    if time.time() % 86400 > 86390:
        await trio.sleep(86400 - time.time() % 86400 + 0.1)  # stay within one day window
    store = RedisStore(RedisSettings("127.0.0.1", redis.port, 5000))
    await nursery.start(store.serve)
    ledger = Ledger(host="h1")
    three, five = per(("day", 3), store="global"), per(("day", 5), store="alice")
    for name in ("global", "alice"):
        ledger.add_store(name, "gateway:rl:")
    assert await redis_take_all(ledger, store, three) == 3
    assert await redis_take_all(ledger, store, five) == 2
    windows = [k for k in redis.command("KEYS", "gateway:rl:*|day|*").split(b"\r\n") if k.startswith(b"gateway")]
    assert windows == [f"gateway:rl:{GLOBAL}|{CLIENT}|day|{int(time.time() // 86400 * 86400)}".encode()]


# ---- end to end ------------------------------------------------------------------------------------------------------


def _get(port: int, key: str) -> int:
    """One GET / on a new connection with an apikey header: its status."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: x\r\napikey: {key}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


async def test_a_consumers_instance_counts_the_address_the_global_instance_counted(nursery, tmp_path: Path) -> None:
    """Global key-auth and rate-limiting {day: 3, limit_by: ip}, consumer alice's own {day: 5}: bob spends the
    address's 3 under the global instance (his 4th is refused); alice's instance, on the same counter, admits 2
    more (usage 3, then 4, of her 5) and refuses the next, as Kong does."""
    backend = Backend("b")
    await nursery.start(backend.serve)
    doc = {
        "services": [{"name": "s", "url": f"http://{backend.target}", "routes": [{"name": "r", "paths": ["/"]}]}],
        "consumers": [
            {"username": "alice", "keyauth_credentials": [{"key": "alice-key"}],
             "plugins": [{"name": "rate-limiting", "config": {"day": 5, "limit_by": "ip"}}]},
            {"username": "bob", "keyauth_credentials": [{"key": "bob-key"}]},
        ],
        "plugins": [{"name": "key-auth"}, {"name": "rate-limiting", "config": {"day": 3, "limit_by": "ip"}}],
    }
    gw = GatewayNode(tmp_path / "gw", doc, status_listen=None)
    try:
        await gw.start(workers=1)
        bob = [await trio.to_thread.run_sync(_get, gw.port, "bob-key") for _ in range(4)]
        alice = [await trio.to_thread.run_sync(_get, gw.port, "alice-key") for _ in range(3)]
    finally:
        gw.cleanup()
    assert (bob, alice) == ([200, 200, 200, 429], [200, 200, 429])
