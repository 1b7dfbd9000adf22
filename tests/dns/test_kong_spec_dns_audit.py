"""Kong 3.9.3's DNS client specs (spec/01-unit/21-dns-client/, the legacy client Kong uses by default:
kong_defaults.lua `new_dns_client = off`) and spec/02-integration/05-proxy/05-dns_spec.lua, `it` by `it`, for what
tests/dns/test_dns_client.py and tests/test_kong_spec_dns_websockets.py do not cover yet; then the DNS errors in
lua-resty-dns v0.23's and ngx_lua's words, and the gateway's one deliberate difference (a retry's host is looked up
again, not only in the cache). Answers come from the scripted DNS server of tests/dns_server.py on real UDP and TCP
sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from dns_server import Answer, Query, Stream, a, aaaa, cname, records, reply, srv, start
from test_dns_client import KONG_ORDER, NOT_FOUND_ERROR, FakeClock, resolver_for

from gateway.dns.client import TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_SRV, DnsError, Resolver, open_resolver
from gateway.dns.sources import HostsEntry


def nxdomain(q: Query) -> list[Answer]:
    return [reply(q.id, q.name, q.type, rcode=3)]


# == 02-client_spec "iterating searches" ============================================================================


async def test_hosts_file_name_is_tried_bare_first_overriding_ndots() -> None:
    """02-client_spec "hosts file always resolves first, overriding `ndots`": a name of the hosts file is tried bare
    first for the types the hosts file has (no query), expanded first for the others."""
    async with trio.open_nursery() as nursery:
        server = await start(nursery, nxdomain)
        r = resolver_for(server, search=["one.com", "two.com"], ndots=1, order=KONG_ORDER,
                         hosts={"host": HostsEntry(ipv4="127.0.0.1", ipv6="::1")})
        assert [x.address for x in await r.resolve("host", TYPE_AAAA)] == ["::1"]
        assert [x.address for x in await r.resolve("host")] == ["127.0.0.1"]
        assert server.seen() == []
        with pytest.raises(DnsError):
            await r.resolve("host", TYPE_SRV)
        assert server.seen() == [("host.one.com", 33), ("host.two.com", 33), ("host", 33)]
        nursery.cancel_scope.cancel()


async def test_resolv_conf_domain_option_is_the_search_list(tmp_path: Path) -> None:
    """02-client_spec "iterating searches" / "without type" "works with a 'domain' option" (and "with type")."""
    async with trio.open_nursery() as nursery:
        server = await start(nursery, nxdomain)
        (tmp_path / "resolv.conf").write_text(
            f"nameserver 127.0.0.1:{server.port}\ndomain local.domain.com\noptions ndots:1 timeout:1 attempts:1\n")
        r = Resolver.from_system(resolv_conf=str(tmp_path / "resolv.conf"), hostsfile=str(tmp_path / "none"),
                                 env={}, order=list(KONG_ORDER))
        with pytest.raises(DnsError, match=NOT_FOUND_ERROR):
            await r.resolve("host")
        assert server.seen() == [(n, t) for t in (33, 1, 28, 5) for n in ("host.local.domain.com", "host")]
        server.queries.clear()
        with pytest.raises(DnsError, match=NOT_FOUND_ERROR):
            await r.resolve("other", TYPE_AAAA)
        assert server.seen() == [("other.local.domain.com", 28), ("other", 28)]
        nursery.cancel_scope.cancel()


async def test_fqdn_with_a_type_is_asked_once_without_the_search_list() -> None:
    """02-client_spec "FQDN with type" "works with a 'search' option" / "ignores last successful type"."""
    async with trio.open_nursery() as nursery:
        server = await start(nursery, nxdomain)
        r = resolver_for(server, search=["one.com", "two.com"], order=KONG_ORDER)
        with pytest.raises(DnsError, match=NOT_FOUND_ERROR):
            await r.resolve("host.", TYPE_AAAA)
        assert server.seen() == [("host", 28)]
        nursery.cancel_scope.cancel()


async def test_last_successful_type_of_a_bare_name_comes_first_with_its_search_expansions() -> None:
    """02-client_spec "iterating searches" "handles last successful type": the type that last answered the name
    is asked first, each search expansion before the bare name, then the others of the order."""
    clock = FakeClock()
    table = {("host", TYPE_CNAME): [cname("host", "target.test", ttl=5)],
             ("target.test", TYPE_A): [a("target.test", "10.0.0.9", ttl=5)]}
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records(table))
        r = resolver_for(server, search=["one.com", "two.com"], order=KONG_ORDER, clock=clock, stale_ttl=0,
                         not_found_ttl=1)
        assert await r.toip("host") == ("10.0.0.9", None)
        server.queries.clear()
        clock.now += 10  # everything expired and gone
        assert await r.toip("host") == ("10.0.0.9", None)
        assert [q for q in server.seen() if q[0] != "target.test"] == [
            ("host.one.com", 5), ("host.two.com", 5), ("host", 5)]
        nursery.cancel_scope.cancel()


# == 02-client_spec: names, hosts file, recursion ==================================================================


async def test_record_names_are_taken_case_insensitively() -> None:
    """02-client_spec "fetching names case insensitive": an answer whose owner name is in another case is the
    answer, its name lower-cased."""
    async with trio.open_nursery() as nursery:
        server = await start(nursery, lambda q: [reply(q.id, q.name, q.type,
                                                       answers=[a("some.UPPER.case", "10.1.2.3", ttl=30)])])
        got = await resolver_for(server).resolve("some.upper.CASE", TYPE_A)
        assert [(x.name, x.address) for x in got] == [("some.upper.case", "10.1.2.3")]
        assert server.seen() == [("some.upper.case", TYPE_A)]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("entry", "kept", "missing"), [
    (HostsEntry(ipv4="1.2.3.4"), (TYPE_A, "1.2.3.4"), TYPE_AAAA),
    (HostsEntry(ipv6="::1:2:3:4"), (TYPE_AAAA, "::1:2:3:4"), TYPE_A),
])
async def test_localhost_is_not_injected_when_the_hosts_file_has_it(entry: HostsEntry, kept: tuple[int, str],
                                                                    missing: int) -> None:
    """02-client_spec "inject localhost:" "not if ipv4 exists" / "not if ipv6 exists"."""
    r = Resolver(hosts={"localhost": entry}, order=KONG_ORDER)
    assert [x.address for x in await r.resolve("localhost", kept[0])] == [kept[1]]
    with pytest.raises(DnsError, match="no nameservers specified"):
        await r.resolve("localhost", missing)


@pytest.mark.parametrize(("order", "address"), [
    (["LAST", "SRV", "A", "AAAA"], "127.3.2.1"),
    (["LAST", "SRV", "AAAA", "A"], "1::2"),
])
async def test_hosts_file_success_type_is_the_preferred_ip_family(order: list[str], address: str,
                                                                  tmp_path: Path) -> None:
    """02-client_spec "resolving from the /etc/hosts file; preferred A or AAAA order" (and "resolving from the
    /etc/hosts file"): the first of A/AAAA in the order is the name's last successful type, so it answers
    without a query."""
    (tmp_path / "hosts").write_text("127.3.2.1 localhost\n1::2 localhost\n123.123.123.123 mashape\n"
                                    "1234::1234 kong.for.president\n")
    (tmp_path / "resolv.conf").write_text("")
    r = Resolver.from_system(hostsfile=str(tmp_path / "hosts"), resolv_conf=str(tmp_path / "resolv.conf"), env={},
                             order=order)
    assert await r.toip("localhost") == (address, None)
    assert [x.address for x in await r.resolve("kong.for.president", TYPE_AAAA)] == ["1234::1234"]
    assert [x.address for x in await r.resolve("mashape", TYPE_A)] == ["123.123.123.123"]


async def test_cname_pointing_to_itself_is_recursion_detected() -> None:
    """02-client_spec "recursive lookups failure - single resolve": every type of hello.world answers a CNAME to
    itself."""
    async with trio.open_nursery() as nursery:
        server = await start(nursery, lambda q: [reply(q.id, q.name, q.type,
                                                       answers=[cname("hello.world", "hello.world", ttl=30)])])
        r = resolver_for(server, order=KONG_ORDER)
        with trio.fail_after(3):
            with pytest.raises(DnsError) as caught:
                await r.resolve("hello.world")
            assert caught.value.message == "recursion detected"
            with pytest.raises(DnsError) as caught:
                await r.toip("hello.world", 123)
            assert caught.value.message == "recursion detected"
        nursery.cancel_scope.cancel()


async def test_toip_port_is_the_callers_for_a_and_the_srv_records_otherwise() -> None:
    """02-client_spec "toip() function" "port passing"."""
    table = {("a.record.test", TYPE_A): [a("a.record.test", "1.2.3.4", ttl=10)],
             ("srv.record.test", TYPE_SRV): [srv("srv.record.test", 20, 5, 8001, "a.record.test", ttl=10)]}
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records(table))
        r = resolver_for(server, order=KONG_ORDER)
        assert await r.toip("a.record.test") == ("1.2.3.4", None)
        assert await r.toip("a.record.test", 1234) == ("1.2.3.4", 1234)
        assert await r.toip("srv.record.test") == ("1.2.3.4", 8001)
        assert await r.toip("srv.record.test", 0) == ("1.2.3.4", 8001)
        nursery.cancel_scope.cancel()


def recursive_server(chains: dict[str, str], final: dict[tuple[str, int], list[bytes]]):
    """Answers as a recursive nameserver does: the CNAME chain from the name asked, then the records of the type
    asked of the chain's last name (none: an empty answer); a name of no chain and no records is NXDOMAIN."""
    def answer(q: Query) -> list[Answer]:
        name, rrs = q.name, []
        if q.type != TYPE_CNAME:
            while name in chains:
                rrs.append(cname(name, chains[name], ttl=30))
                name = chains[name]
        elif name in chains:
            rrs.append(cname(name, chains[name], ttl=30))
        rrs += final.get((name, q.type), [])
        if not rrs and q.name not in chains and not any(n == q.name for n, _ in final):
            return [reply(q.id, q.name, q.type, rcode=3)]
        return [reply(q.id, q.name, q.type, answers=rrs)]
    return answer


async def test_a_record_through_two_cnames_untyped() -> None:
    """02-client_spec "fetching A record redirected through 2 CNAME records (un-typed)": a recursive server's
    answers carry the chain; the final A records are the answer, and the chain's names are answered from what
    came along (the second lookup asks nothing)."""
    answer = recursive_server({"smtp.test": "thuis.test", "thuis.test": "wdnaste.test"},
                              {("wdnaste.test", TYPE_A): [a("wdnaste.test", "10.3.3.3", ttl=30)]})
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        r = resolver_for(server, order=KONG_ORDER)
        got = await r.resolve("smtp.test")
        assert [(x.name, x.type, x.address) for x in got] == [("wdnaste.test", TYPE_A, "10.3.3.3")]
        asked = len(server.queries)
        assert await r.toip("smtp.test") == ("10.3.3.3", None)
        assert await r.toip("thuis.test") == ("10.3.3.3", None)
        assert [x.cname for x in await r.resolve("thuis.test", TYPE_CNAME)] == ["wdnaste.test"]
        assert len(server.queries) == asked
        nursery.cancel_scope.cancel()


async def test_srv_records_through_a_cname_untyped() -> None:
    """02-client_spec "fetching multiple SRV records through CNAME (un-typed)": the SRV records of the CNAME's
    target are the answer."""
    answer = recursive_server({"cname2srv.test": "srvtest.test"},
                              {("srvtest.test", TYPE_SRV): [srv("srvtest.test", 10, 10, 8000 + i, "10.0.0.1")
                                                            for i in range(3)]})
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        r = resolver_for(server, order=KONG_ORDER)
        got = await r.resolve("cname2srv.test")
        assert [(x.name, x.type, x.port) for x in got] == [("srvtest.test", TYPE_SRV, 8000 + i) for i in range(3)]
        assert (await r.toip("cname2srv.test"))[0] == "10.0.0.1"
        nursery.cancel_scope.cancel()


# == 02-client_spec "verifies the polling of dns queries, retries, and wait times" ==================================


async def test_lookups_waiting_on_a_slow_query_give_up_after_timeout_times_attempts_plus_one() -> None:
    """02-client_spec "timeout while waiting": the lookups merged into one query in flight wait at most
    timeout * retrans + 1 s (client.lua:669, :883) and fail with "timeout"; the one that asked gets the answer
    (here a TCP reply trickling in, each piece within the timeout)."""
    def answer(q: Query) -> list[Answer]:
        if q.transport == "udp":
            return [reply(q.id, q.name, q.type, tc=True)]
        body = reply(q.id, q.name, q.type, answers=[a(q.name, "1.4.2.3", ttl=10)])
        framed = len(body).to_bytes(2, "big") + body
        return [Stream(framed, chunk=max(1, len(framed) // 10 + 1), pause=0.16)]  # ~1.6 s in all
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        r = resolver_for(server, timeout=0.2, attempts=1)  # waiters: 0.2 * 1 + 1 = 1.2 s
        results: list[Any] = [None] * 5

        async def one(i: int) -> None:
            try:
                results[i] = [x.address for x in await r.resolve("slow.test", TYPE_A)]
            except DnsError as e:
                results[i] = e.message
        with trio.fail_after(4):
            async with trio.open_nursery() as lookups:
                for i in range(5):
                    lookups.start_soon(one, i)
                    await trio.sleep(0)
        assert results[0] == ["1.4.2.3"]
        assert results[1:] == ["timeout"] * 4
        nursery.cancel_scope.cancel()


# == 03-client_cache_spec ============================================================================================


async def test_short_name_entry_ttl_is_honoured_then_refreshed() -> None:
    """03-client_cache_spec "shortnames" "ttl in cache is honored for short name entries": after its TTL the
    short name's answer is served stale while it is asked again, then the new answer is served."""
    clock = FakeClock()
    address = ["1.2.3.4"]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, lambda q: [reply(q.id, q.name, q.type,
                                                       answers=[a(q.name, address[0], ttl=1)])]
                             if (q.name, q.type) == ("myhost6.domain.com", TYPE_A) else nxdomain(q))
        async with open_resolver(nameservers=[("127.0.0.1", server.port)], hosts={}, clock=clock, stale_ttl=5,
                                 search=["domain.com"], order=KONG_ORDER, timeout=0.5, attempts=1) as r:
            assert await r.toip("myhost6") == ("1.2.3.4", None)
            asked = len(server.queries)
            address[0] = "5.6.7.8"
            clock.now += 2
            assert await r.toip("myhost6") == ("1.2.3.4", None)  # stale
            with trio.fail_after(2):
                while len(server.queries) == asked:
                    await trio.sleep(0.01)
                await trio.sleep(0.05)
            assert await r.toip("myhost6") == ("5.6.7.8", None)
            assert server.seen()[asked:] == [("myhost6.domain.com", TYPE_A)]
        nursery.cancel_scope.cancel()


async def test_failed_short_names_are_not_cached_as_short_names() -> None:
    """03-client_cache_spec "shortnames" "errors are not stored" / "name errors are not stored": once the errors
    expire, the names are asked again."""
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, lambda q: [reply(q.id, q.name, q.type, rcode=2 if "7" in q.name else 3)])
        r = resolver_for(server, clock=clock, search=["domain.com"], order=KONG_ORDER, stale_ttl=0,
                         error_ttl=0.5, not_found_ttl=0.5)
        with pytest.raises(DnsError, match="dns server error: 2 server failure"):
            await r.resolve("myhost7", TYPE_A)
        with pytest.raises(DnsError, match=NOT_FOUND_ERROR):
            await r.resolve("myhost8", TYPE_A)
        assert len(server.queries) == 4
        clock.now += 1
        with pytest.raises(DnsError, match="dns server error: 2 server failure"):
            await r.resolve("myhost7", TYPE_A)
        with pytest.raises(DnsError, match=NOT_FOUND_ERROR):
            await r.resolve("myhost8", TYPE_A)
        assert len(server.queries) == 8
        nursery.cancel_scope.cancel()


async def test_additional_records_replace_a_stale_record() -> None:
    """03-client_cache_spec "fqdn" "AS records do replace stale records": a CNAME that came along with the
    answer to another query replaces the stale one, which is then not asked again."""
    clock = FakeClock()
    cname1 = cname("myhost9.domain.com", "myotherhost.domain.com", ttl=1)
    a2 = a("myotherhost.domain.com", "1.2.3.4", ttl=60)
    table = {("myhost9.domain.com", TYPE_CNAME): [cname1], ("myhost9.domain.com", TYPE_A): [cname1, a2],
             ("myotherhost.domain.com", TYPE_A): [a2]}

    def answer(q: Query) -> list[Answer]:
        return [reply(q.id, q.name, q.type, answers=table.get((q.name, q.type), []))]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        async with open_resolver(nameservers=[("127.0.0.1", server.port)], hosts={}, clock=clock, stale_ttl=30,
                                 search=["domain.com"], order=KONG_ORDER, timeout=0.5, attempts=1) as r:
            await r.resolve("myhost9", TYPE_CNAME)
            clock.now += 2  # the CNAME is stale
            assert await r.toip("myhost9") == ("1.2.3.4", None)
            await trio.sleep(0.1)
            assert server.seen().count(("myhost9.domain.com", TYPE_CNAME)) == 1
        nursery.cancel_scope.cancel()


async def test_success_type_is_not_overwritten_by_additional_section_records() -> None:
    """03-client_cache_spec "success types" "are not overwritten by add. section info" (and "in add. section are
    stored for listed types"): a name's last successful type stays when another answer's additional section
    brings records of another type for it."""
    clock = FakeClock()
    table = {("another.name.consul", TYPE_AAAA): [aaaa("another.name.consul", "::5", ttl=1)],
             ("another.name.consul", TYPE_A): [a("another.name.consul", "192.168.5.232", ttl=1)]}

    def answer(q: Query) -> list[Answer]:
        if (q.name, q.type) == ("demo.service.consul", TYPE_SRV):
            return [reply(q.id, q.name, q.type,
                          answers=[srv("demo.service.consul", 1, 1, 32776, "node.api_test.consul", ttl=30)],
                          additional=[a("another.name.consul", "192.168.5.232", ttl=30),
                                      a("node.api_test.consul", "192.168.5.233", ttl=30)])]
        return [reply(q.id, q.name, q.type, answers=table.get((q.name, q.type), []))]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        r = resolver_for(server, clock=clock, order=["LAST", "SRV", "AAAA", "A"], stale_ttl=0, not_found_ttl=1)
        assert await r.toip("another.name.consul") == ("::5", None)  # AAAA answers: the success type
        assert await r.toip("demo.service.consul") == ("192.168.5.233", 32776)  # from the additional section
        assert server.seen().count(("node.api_test.consul", TYPE_A)) == 0
        clock.now += 2  # another.name.consul's own records expired (the additional A one lives on)
        server.queries.clear()
        assert await r.toip("another.name.consul") == ("::5", None)
        assert server.seen()[0] == ("another.name.consul", TYPE_AAAA)
        nursery.cancel_scope.cancel()


# == 05-dns_spec (a gateway) ========================================================================================


def _udp_sockets_to(port: int) -> int:
    """UDP sockets of this network namespace whose peer is 127.0.0.1:`port` (connected to the DNS server)."""
    count = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            remote = line.split()[2]
            if int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


async def test_dns_spec_udp_sockets_of_a_query_are_released(nursery, gateway):
    """05-dns_spec "udp sockets" "release": the UDP sockets a service host's lookup opened are closed once the
    query is done."""
    from backends import EchoBackend, request, serve_on_addresses, service
    from dns_server import serve_names
    names = await serve_names(nursery, {"www.example.test": ["127.0.0.10"]})
    port, _ = await serve_on_addresses(nursery, ["127.0.0.10"], EchoBackend)
    gw = await gateway({"services": [service("foo", f"http://www.example.test:{port}")]}, **names.settings)
    with trio.fail_after(10):
        got = await request(gw, "GET", "/foo")
    assert got.status == 200 and got.header("x-backend") == "127.0.0.10"
    assert names.asked("www.example.test") >= 1
    await trio.sleep(0.1)
    assert _udp_sockets_to(names.port) == 0


async def test_refused_nameserver_is_a_500_with_the_cosockets_lower_case_words(nursery, gateway):
    """A nameserver port with nothing listening: lua-resty-dns's error is "failed to receive reply from UDP server
    <ip>:<port>: " .. the cosocket's error (lua-resty-dns v0.23 lib/resty/dns/resolver.lua:905-909), and the
    cosocket gives ngx_strerror lower-cased "for compatibility with LuaSocket" (lua-nginx-module
    src/ngx_http_lua_socket_udp.c:769-771 `ngx_strlow`): "connection refused". Kong's balancer answers 500 with it
    (kong/runloop/balancer/init.lua:374-393; kong/init.lua's "failed the initial dns/balancer resolve")."""
    from backends import free_port, request, service
    dead = free_port()
    gw = await gateway({"services": [service("svc", "http://refused.test:8080", retries=0)]},
                       dns_resolver=[f"127.0.0.1:{dead}"])
    with trio.fail_after(20):
        got = await request(gw, "GET", "/x")
    assert got.status == 500
    assert got.json()["message"] == ("failed the initial dns/balancer resolve for 'refused.test' with: failed to "
                                     f"receive reply from UDP server 127.0.0.1:{dead}: connection refused")


async def test_refused_udp_reply_is_the_errnos_lower_case_strerror() -> None:
    """The DNS client's own error for a refused nameserver: lua-resty-dns v0.23 resolver.lua:905-909 around the
    cosocket's lower-cased strerror (lua-nginx-module src/ngx_http_lua_socket_udp.c:769-771), not Python's
    "Connection refused"."""
    from backends import free_port
    dead = free_port()
    r = Resolver(nameservers=[("127.0.0.1", dead)], hosts={}, timeout=0.5, attempts=1)
    with trio.fail_after(3), pytest.raises(DnsError) as caught:
        await r.resolve("refused.test", TYPE_A)
    assert caught.value.message == f"failed to receive reply from UDP server 127.0.0.1:{dead}: connection refused"


def truncated_over_udp(tcp: list[Answer]) -> Any:
    """A nameserver whose UDP replies are all truncated (the client asks again over TCP), answering `tcp` there."""
    def answer(q: Query) -> list[Answer]:
        return [reply(q.id, q.name, q.type, tc=True)] if q.transport == "udp" else tcp
    return answer


async def test_tcp_fallback_closed_before_the_length_is_lua_resty_dns_words() -> None:
    """A truncated UDP reply, then a TCP connection closed before any byte: "failed to receive the reply length
    field from TCP server <ip>:<port>: closed" (lua-resty-dns v0.23 lib/resty/dns/resolver.lua:818-822; the
    cosocket's "closed", lua-nginx-module src/ngx_http_lua_socket_tcp.c's prepare_error_retvals), the last try's
    error."""
    async with trio.open_nursery() as nursery:
        server = await start(nursery, truncated_over_udp([]))
        with pytest.raises(DnsError) as caught:
            await resolver_for(server, attempts=1).resolve("tc.test", TYPE_A)
        assert caught.value.message == (f"failed to receive the reply length field from TCP server "
                                        f"127.0.0.1:{server.port}: closed")
        nursery.cancel_scope.cancel()


async def test_tcp_fallback_closed_within_the_body_is_lua_resty_dns_words() -> None:
    """The TCP reply's length came, then the connection closed before the whole body: "failed to receive the reply
    message body from TCP server <ip>:<port>: closed" (lua-resty-dns v0.23 lib/resty/dns/resolver.lua:830-834;
    ngx_lua's receive(size) fails "closed" whatever part of it came)."""
    async with trio.open_nursery() as nursery:
        server = await start(nursery, truncated_over_udp([Stream((100).to_bytes(2, "big") + b"\0" * 10)]))
        with pytest.raises(DnsError) as caught:
            await resolver_for(server, attempts=1).resolve("tc.test", TYPE_A)
        assert caught.value.message == (f"failed to receive the reply message body from TCP server "
                                        f"127.0.0.1:{server.port}: closed")
        nursery.cancel_scope.cancel()


async def test_tcp_reply_truncated_again_is_a_parse_failure_in_lua_resty_dns_words() -> None:
    """A TCP reply with the TC flag: parse_response's "truncated" (lua-resty-dns v0.23 resolver.lua:661-663)
    after "failed to parse the reply from the TCP server <ip>:<port>: " (resolver.lua:836-840)."""
    async with trio.open_nursery() as nursery:
        server = await start(nursery, lambda q: [reply(q.id, q.name, q.type, tc=True)])
        with pytest.raises(DnsError) as caught:
            await resolver_for(server, attempts=1).resolve("tc.test", TYPE_A)
        assert caught.value.message == (f"failed to parse the reply from the TCP server "
                                        f"127.0.0.1:{server.port}: truncated")
        nursery.cancel_scope.cancel()


async def test_a_retry_looks_a_name_not_in_the_dns_cache_up_again(nursery, gateway):
    """A deliberate difference (README, Kong entities): Kong resolves a retry's host from the DNS cache only
    (kong/runloop/balancer/init.lua:302 `dns_cache_only = balancer_data.try_count ~= 0`; a miss is "dns server
    error: 100 cache only lookup failed", kong/resty/dns/client.lua:930-940, and a 500), and with dns_stale_ttl 0
    a TTL-0 answer is never cached (client.lua:247, :262-268). The gateway asks the nameserver again: the retry
    gets the name's new address and the request succeeds where Kong's ends in 500."""
    from backends import EchoBackend, request, serve_on_addresses, service
    port, _ = await serve_on_addresses(nursery, ["127.0.0.11"], EchoBackend)
    asked = [0]

    def answer(q: Query) -> list[Answer]:  # the first A answer an address nothing listens on, the others the backend
        found = []
        if q.type == TYPE_A:
            found = [a(q.name, "127.0.0.11" if asked[0] else "127.0.0.10", ttl=0)]
            asked[0] += 1
        return [reply(q.id, q.name, q.type, answers=found)]
    server = await start(nursery, answer)
    gw = await gateway({"services": [service("svc", f"http://ttl0.test:{port}", retries=1)]}, dns_stale_ttl=0,
                       dns_resolver=[f"127.0.0.1:{server.port}"])
    with trio.fail_after(10):
        got = await request(gw, "GET", "/x")
    assert (got.status, got.header("x-backend")) == (200, "127.0.0.11")
    assert server.seen().count(("ttl0.test", TYPE_A)) == 2
