"""ldap-auth's bind cache per host, as Kong's kong.cache is per node: each worker's L1 over the state keeper's
kong_db_cache dictionary (L2), against a real slapd (tests/ldap_server.py) behind a Relay that counts the binds.

Two LdapAuth instances stand for two workers: each has its own L1 (BindCache) and its own SharedState; the
SharedStates share one keeper, in-process (as `gateway run` has it) or over a real ZeroMQ bus. The last two tests run
`gateway start --workers 2` and send the same credentials through each worker, before and after a reload.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import zmq
from backends import free_port
from e2e_helpers import Backend, GatewayNode, HttpConn, Reply, conns_per_worker
from ldap_server import (
    PEOPLE_DN,
    slapd_fixture,  # noqa: F401 - the slapd fixture
)
from test_auth_ldap_auth import Relay, close_kept_connections, ldap

from gateway.config import parse_config
from gateway.keeper.process import serve_keeper
from gateway.keeper.state import Keeper
from gateway.policies.consumers import Directory
from gateway.policies.ldap_auth.client import Unavailable
from gateway.policies.ldap_auth.handler import (
    HOST_DICTIONARY,
    BindCache,
    CredentialIdentity,
    LdapAuth,
    config_load,
    decode_entry,
    encode_entry,
)
from gateway.policies.ldap_auth.schema import LdapAuthConfig
from gateway.state.shared import SharedState

CONFIG = """
_format_version: '3.0'
services: [{name: s, url: 'http://127.0.0.1:9'}]
routes: [{name: r, service: s, paths: ['/']}]
"""
RIGHT = ldap().encode()
WRONG = ldap(password="wrong").encode()


def worker(ldap_port: int, shared: Any, **config: Any) -> LdapAuth:
    """One worker's ldap-auth: its own L1, the host's L2 through `shared`."""
    cfg = LdapAuthConfig(ldap_host="127.0.0.1", ldap_port=ldap_port, base_dn=PEOPLE_DN, attribute="uid", **config)
    return LdapAuth(cfg, Directory(parse_config("{}", "t.yml")), BindCache(), shared=shared)


def key_of(policy: LdapAuth, value: bytes = RIGHT) -> str:
    user, _, password = base64.b64decode(value.split()[1]).partition(b":")
    return policy.cache_key(user, password)


def l1_end(policy: LdapAuth, value: bytes = RIGHT) -> float:
    """When the worker's L1 entry for these credentials ends (trio.current_time)."""
    return policy.cache.entries[key_of(policy, value)][1]


@pytest.fixture
async def keeper(nursery: trio.Nursery) -> Keeper:
    nursery.start_soon(close_kept_connections)
    return Keeper(parse_config(CONFIG), workers=2)


async def in_process(nursery: trio.Nursery, keeper: Keeper, worker_id: str) -> SharedState:
    """A worker's SharedState talking to `keeper` in-process (the worker id is "<generation>.<index>")."""
    shared = SharedState(worker_id, 2)
    await nursery.start(shared.run_local, keeper)
    return shared


@pytest.fixture
async def relay(nursery: trio.Nursery, slapd: Any) -> Relay:  # noqa: F811 - the imported fixture
    relay = Relay(slapd.port)
    await nursery.start(relay.serve)
    return relay


@pytest.fixture
async def pair(nursery: trio.Nursery, keeper: Keeper, relay: Relay) -> tuple[LdapAuth, LdapAuth]:
    """Two workers of generation 1, binding through the relay."""
    one, two = await in_process(nursery, keeper, "1.0"), await in_process(nursery, keeper, "1.1")
    return worker(relay.port, one), worker(relay.port, two)


# ---- one host, two workers -------------------------------------------------------------------------------------------


async def test_the_second_worker_finds_an_accepted_bind_without_binding(pair, relay):
    first, second = pair
    assert isinstance(await first._check(RIGHT), CredentialIdentity)
    found = await second._check(RIGHT)
    assert isinstance(found, CredentialIdentity) and found.credential_id == key_of(first)
    assert len(relay.binds) == 1


async def test_the_second_worker_finds_a_refused_bind_without_binding(pair, relay):
    first, second = pair
    assert await first._check(WRONG) is None
    assert await second._check(WRONG) is None
    assert len(relay.binds) == 1


async def test_the_second_worker_finds_an_unavailable_server_without_connecting(nursery, keeper, slapd):  # noqa: F811
    ldap_port = free_port()
    first = worker(ldap_port, await in_process(nursery, keeper, "1.0"))
    second = worker(ldap_port, await in_process(nursery, keeper, "1.1"))
    with pytest.raises(Unavailable):
        await first._check(RIGHT)
    relay = Relay(slapd.port, ldap_port)
    await nursery.start(relay.serve)  # the server is back: Kong's neg_ttl still holds the miss, for every worker
    with pytest.raises(Unavailable, match="remembered for cache_ttl"):
        await second._check(RIGHT)
    assert relay.connections == 0


async def test_a_reloads_workers_do_not_find_the_outcomes_of_the_older_config_load(nursery, keeper, relay):
    old = worker(relay.port, await in_process(nursery, keeper, "1.0"))
    new = worker(relay.port, await in_process(nursery, keeper, "2.0"))
    await old._check(RIGHT)
    await new._check(RIGHT)
    assert len(relay.binds) == 2


async def test_an_l1_entry_filled_from_l2_ends_when_the_l2_entry_does(pair):
    first, second = pair
    first.ttl = 10.0
    await first._check(RIGHT)
    await trio.sleep(0.3)
    await second._check(RIGHT)
    assert l1_end(second) == pytest.approx(l1_end(first), abs=0.05)  # not 10 s from its own look-up
    assert l1_end(second) < trio.current_time() + 9.8


async def test_an_outcome_whose_l2_entry_has_ended_is_bound_again(pair, relay):
    first, second = pair
    first.ttl = second.ttl = 0.2
    await first._check(RIGHT)
    await trio.sleep(0.25)
    await second._check(RIGHT)
    assert len(relay.binds) == 2


async def test_with_cache_ttl_0_an_outcome_is_shared_until_the_config_is_reloaded(nursery, keeper, relay):
    first = worker(relay.port, await in_process(nursery, keeper, "1.0"), cache_ttl=0)
    second = worker(relay.port, await in_process(nursery, keeper, "1.1"), cache_ttl=0)
    await first._check(RIGHT)
    await second._check(RIGHT)
    assert (len(relay.binds), l1_end(second)) == (1, float("inf"))


async def test_an_l1_hit_does_not_ask_the_keeper(pair, monkeypatch):
    first, _ = pair
    fetches = []
    fetch = first.shared.cache_fetch

    async def counted(dictionary: str, key: str) -> bytes | None:
        fetches.append(key)
        return await fetch(dictionary, key)

    monkeypatch.setattr(first.shared, "cache_fetch", counted)
    for _ in range(3):
        await first._check(RIGHT)
    assert fetches == [config_load(first.shared) + ":" + key_of(first)]


async def test_concurrent_requests_of_a_worker_make_one_l2_look_up_and_one_bind(pair, relay, monkeypatch):
    first, _ = pair
    fetches = []
    fetch = first.shared.cache_fetch

    async def counted(dictionary: str, key: str) -> bytes | None:
        fetches.append(key)
        return await fetch(dictionary, key)

    monkeypatch.setattr(first.shared, "cache_fetch", counted)
    async with trio.open_nursery() as requests:
        for _ in range(5):
            requests.start_soon(first._check, RIGHT)
    assert (len(fetches), len(relay.binds)) == (1, 1)


async def test_l2_keys_are_kongs_key_after_the_config_load(pair, keeper):
    first, _ = pair
    await first._check(RIGHT)
    stored = keeper.caches[HOST_DICTIONARY]
    assert stored.get("g1:" + key_of(first), trio.current_time()) is not None


# ---- the keeper away, or an L2 that does not help --------------------------------------------------------------------


async def test_without_a_keeper_each_worker_binds_once_for_itself(relay, nursery):
    nursery.start_soon(close_kept_connections)
    first, second = worker(relay.port, SharedState("1.0", 2)), worker(relay.port, SharedState("1.1", 2))  # no keeper
    for policy in (first, second, first, second):
        assert isinstance(await policy._check(RIGHT), CredentialIdentity)
    assert len(relay.binds) == 2


async def test_without_shared_state_a_worker_has_its_l1_alone(relay, nursery):
    nursery.start_soon(close_kept_connections)
    first, second = worker(relay.port, None), worker(relay.port, None)
    for policy in (first, second, first):
        await policy._check(WRONG)
    assert len(relay.binds) == 2


async def test_a_host_cache_that_fails_is_a_miss_not_a_500(pair, relay, monkeypatch):
    first, _ = pair

    async def broken(dictionary: str, key: str) -> bytes | None:
        raise RuntimeError("the bus is in pieces")

    monkeypatch.setattr(first.shared, "cache_fetch", broken)
    monkeypatch.setattr(first.shared, "cache_store", lambda *args: 1 / 0)
    assert isinstance(await first._check(RIGHT), CredentialIdentity)
    assert isinstance(await first._check(RIGHT), CredentialIdentity)  # from L1
    assert len(relay.binds) == 1


async def test_an_l2_value_that_is_no_outcome_is_a_miss(pair, relay):
    first, _ = pair
    first.shared.cache_store(HOST_DICTIONARY, config_load(first.shared) + ":" + key_of(first), b"garbage", 0)
    assert isinstance(await first._check(RIGHT), CredentialIdentity)
    assert len(relay.binds) == 1


@pytest.mark.parametrize(("raw", "expected"), [
    (encode_entry("accepted", 1.7e9), ("accepted", 1.7e9)),
    (encode_entry("refused", 0), ("refused", 0.0)),
    (encode_entry("unavailable", 123.25), ("unavailable", 123.25)),
    (b"x 1.0", None),
    (b"a soon", None),
    (b"a nan", None),
    (b"a inf", None),
    (b"a -1.0", None),
    (b"", None),
])
def test_an_l2_value_is_an_outcome_and_its_wall_clock_end(raw, expected):
    assert decode_entry(raw) == expected


@pytest.mark.parametrize(("worker_id", "expected"), [("1.0", "g1"), ("12.3", "g12"), ("local", "glocal")])
def test_the_config_load_is_the_generation_of_the_worker_id(worker_id, expected):
    assert config_load(SharedState(worker_id, 1)) == expected


# ---- over a real bus -------------------------------------------------------------------------------------------------


async def test_two_workers_share_an_outcome_over_the_bus(tmp_path, relay, nursery):
    nursery.start_soon(close_kept_connections)
    bus = f"ipc://{tmp_path}/bus.sock"
    ctx = zmq.Context()
    ready = trio.Event()
    one, two = SharedState("1.0", 2), SharedState("1.1", 2)
    try:
        async with trio.open_nursery() as workers:
            workers.start_soon(serve_keeper, Keeper(parse_config(CONFIG), workers=2), bus, ready.set)
            await ready.wait()
            for shared in (one, two):
                await workers.start(shared.run_bus, ctx, bus)
            with trio.fail_after(5):
                await one.synced.wait()
                await two.synced.wait()
            first, second = worker(relay.port, one), worker(relay.port, two)
            await first._check(RIGHT)
            with trio.fail_after(5):  # the store is not acknowledged: until the keeper has read it
                while await two.cache_fetch(HOST_DICTIONARY, "g1:" + key_of(first)) is None:
                    await trio.sleep(0.01)
            assert isinstance(await second._check(RIGHT), CredentialIdentity)
            assert len(relay.binds) == 1
            workers.cancel_scope.cancel()
    finally:
        ctx.term()


# ---- gateway start --workers 2 ---------------------------------------------------------------------------------------


async def send(conn: HttpConn, authorization: str) -> Reply:
    """GET / with an Authorization header on a kept-alive connection (HttpConn.request sends no extra headers)."""
    if conn.conn.our_state is h11.DONE and conn.conn.their_state is h11.DONE:
        conn.conn.start_next_cycle()
    headers = [("host", f"127.0.0.1:{conn.port}"), ("authorization", authorization)]
    with trio.fail_after(10):
        await conn.stream.send_all(conn.conn.send(h11.Request(method="GET", target="/", headers=headers))
                                   + conn.conn.send(h11.EndOfMessage()))
        status, body = 0, bytearray()
        while True:
            event = conn.conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await conn.stream.receive_some(65536)
                if not chunk:
                    raise ConnectionError("closed before a complete response")
                conn.conn.receive_data(chunk)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Reply(status, {}, bytes(body))


@pytest.fixture
async def node(nursery: trio.Nursery, tmp_path: Path, relay: Relay) -> AsyncIterator[GatewayNode]:
    """`gateway start --workers 2` with ldap-auth binding through the relay."""
    backend = Backend("a")
    await nursery.start(backend.serve)
    doc = {"services": [{"name": "s", "url": f"http://{backend.target}", "routes": [{"name": "r", "paths": ["/"]}]}],
           "plugins": [{"name": "ldap-auth", "config": {"ldap_host": "127.0.0.1", "ldap_port": relay.port,
                                                        "base_dn": PEOPLE_DN, "attribute": "uid"}}]}
    gw = GatewayNode(tmp_path / "gw", doc)
    try:
        await gw.start(workers=2)
        yield gw
    finally:
        gw.cleanup()


async def one_conn_per_worker(gw: GatewayNode, generation: int) -> list[HttpConn]:
    """A connection to each worker of `generation` (those a connection of the other generation reached are closed)."""
    doc = await gw.status()
    workers = next(c for c in doc["tree"]["children"] if c["id"] == f"workers@{generation}")
    conns = await conns_per_worker(gw.port, [w["pid"] for w in workers["children"] if w["pid"]])
    return [c for cs in conns.values() for c in cs]


async def close(conns: list[HttpConn]) -> None:
    for conn in conns:
        await conn.aclose()


needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc (which worker is which)")


@needs_proc
async def test_on_a_two_worker_gateway_the_other_worker_does_not_bind_again(node, relay):
    first, second = conns = await one_conn_per_worker(node, 1)
    assert (await send(first, ldap())).status == 200
    await trio.sleep(0.3)  # the keeper reads the store, not acknowledged, within a bus hop
    assert (await send(second, ldap())).status == 200
    assert len(relay.binds) == 1
    await close(conns)


@needs_proc
async def test_after_a_reload_the_new_workers_bind_again(node, relay):
    old = await one_conn_per_worker(node, 1)
    assert (await send(old[0], ldap())).status == 200
    await close(old)
    out = await node.acli("reload")
    assert out.returncode == 0, out.stderr
    first, second = new = await one_conn_per_worker(node, 2)
    assert (await send(first, ldap())).status == 200
    await trio.sleep(0.3)
    assert (await send(second, ldap())).status == 200
    assert len(relay.binds) == 2  # one for generation 1, one for both workers of generation 2
    await close(new)
