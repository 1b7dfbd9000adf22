"""The gateway's DNS client (gateway/dns/client.py, gateway/dns/sources.py) as Kong's default DNS client.

Follows Kong's spec/01-unit/21-dns-client/01-utils_spec.lua (hosts and resolv.conf parsing), 02-client_spec.lua
(resolving, search lists, IP literals, toip, TTLs, query merging) and 03-client_cache_spec.lua (short names, stale
records, success types), with the kong.conf defaults of kong/templates/kong_defaults.lua. Kong's specs query a
public test domain or mock the wire client; here the answers come from a real dnsmasq on 127.0.0.1 (skipped when
it is not installed) and, for what dnsmasq cannot be made to do (truncation, SERVFAIL, silence, stray replies, slow
answers), from a small scripted DNS server on real UDP and TCP sockets. Cache tests drive a fake clock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import free_port
from dns_server import (
    Answer,
    Dnsmasq,
    Query,
    ScriptedDns,
    Stream,
    a,
    aaaa,
    cname,
    records,
    reply,
    run_dnsmasq,
    srv,
    start,
)

from gateway.dns.client import TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_SRV, DnsError, Resolver, open_resolver
from gateway.dns.sources import (
    HostsEntry,
    apply_env,
    parse_hosts,
    parse_nameserver,
    parse_resolv_conf,
    resolv_conf_nameservers,
)

KONG_ORDER = ("LAST", "SRV", "A", "AAAA", "CNAME")  # the order Kong's client specs init with
NOT_FOUND_ERROR = "dns server error: 3 name error"
EMPTY_ERROR = "dns client error: 101 empty record received"


class FakeClock:
    """The resolver's cache clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver_for(*servers: ScriptedDns, **settings: Any) -> Resolver:
    settings.setdefault("timeout", 0.5)
    settings.setdefault("attempts", 2)
    settings.setdefault("hosts", {})
    return Resolver(nameservers=[("127.0.0.1", s.port) for s in servers], **settings)


# == 01-utils_spec: hosts file and resolv.conf =======================================================================


HOSTS = """# The localhost entry should be in every HOSTS file
127.0.0.1 localhost
::1 localhost

192.168.1.2 test.computer.com
192.168.1.3 ftp.COMPUTER.com alias1 alias2
192.168.1.4 smtp.computer.com alias3 #alias4
192.168.1.5 smtp.computer.com alias3 #doubles, first one should win
not-an-ip   bogus.name
127.0.0.3  www.abcsearch.com wwwsearch #[Restricted Zone site]
[::1]        alsolocalhost  #support IPv6 in brackets
"""


def test_hosts_file_names_and_aliases_lower_cased_first_address_wins() -> None:
    hosts = parse_hosts(HOSTS)
    assert hosts["localhost"] == HostsEntry(ipv4="127.0.0.1", ipv6="::1")
    assert hosts["ftp.computer.com"] == hosts["alias1"] == hosts["alias2"] == HostsEntry(ipv4="192.168.1.3")
    assert hosts["smtp.computer.com"].ipv4 == hosts["alias3"].ipv4 == "192.168.1.4"
    assert "alias4" not in hosts and "bogus.name" not in hosts
    assert hosts["wwwsearch"].ipv4 == "127.0.0.3"
    assert hosts["alsolocalhost"] == HostsEntry(ipv6="::1")


RESOLV_CONF = """# this is just a comment line
domain myservice.com

nameserver 198.51.100.0
nameserver 2001:db8::1 ; and a comment here
nameserver 198.51.100.0:1234 ; this one has a port number (limited systems support this)
nameserver 1.2.3.4 ; this one is 4th, so should be ignored

#search domaina.com domainb.com
options ndots:2
options timeout:3
options attempts:4
options rotate ; let's see about a comment here
options ip6-dotint
options no-ip6-dotint
options bogus:7
"""


def test_resolv_conf_nameservers_domain_and_options() -> None:
    conf = parse_resolv_conf(RESOLV_CONF)
    assert conf.nameservers == ["198.51.100.0", "2001:db8::1", "198.51.100.0:1234"]
    assert (conf.domain, conf.search) == ("myservice.com", None)
    assert conf.options == {"ndots": 2, "timeout": 3, "attempts": 4, "rotate": True, "no-ip6-dotint": True}
    assert resolv_conf_nameservers(conf) == [("198.51.100.0", 53), ("2001:db8::1", 53), ("198.51.100.0", 1234)]


def test_resolv_conf_search_and_domain_exclude_each_other_search_capped_at_6() -> None:
    conf = parse_resolv_conf("domain a.com\nsearch d1 d2 d3 d4 d5 d6 d7\n")
    assert (conf.domain, conf.search) == (None, ["d1", "d2", "d3", "d4", "d5", "d6"])
    assert parse_resolv_conf("search x.com\ndomain b.com\n").search is None


def test_resolv_conf_environment_localdomain_and_res_options_override() -> None:
    conf = parse_resolv_conf("domain myservice.com\noptions ndots:1\n")
    conf = apply_env(conf, {"LOCALDOMAIN": "domaina.com domainb.com", "RES_OPTIONS": "ndots:2 debug"})
    assert (conf.domain, conf.search, conf.options) == (None, ["domaina.com", "domainb.com"],
                                                        {"ndots": 2, "debug": True})
    unchanged = apply_env(parse_resolv_conf("domain myservice.com\n"), {"LOCALDOMAIN": "", "RES_OPTIONS": ""})
    assert unchanged.domain == "myservice.com"


def test_resolv_conf_environment_localdomain_of_blanks_empties_the_search_list() -> None:
    """kong/resty/dns/utils.lua:217 `if localdomain ~= ""`: any other value, blanks too, replaces the search list
    with its words (none here)."""
    conf = apply_env(parse_resolv_conf("search a.test b.test\n"), {"LOCALDOMAIN": "  "})
    assert (conf.domain, conf.search) == (None, [])


def test_from_system_reads_localdomain_and_res_options_from_the_process_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolver of the dns_* settings (gateway/dns/process.py from_settings, which passes no `env`) reads this
    process's LOCALDOMAIN and RES_OPTIONS over resolv.conf: kong/resty/dns/client.lua:590
    `utils.applyEnv(utils.parseResolvConf(resolvconffile))`, utils.lua:216 `os.getenv("LOCALDOMAIN")`, :226
    `os.getenv("RES_OPTIONS")`; kong.conf.default:1466-1469 "The settings in the latter file will be overridden by
    the environment variables `LOCALDOMAIN` and `RES_OPTIONS` if they have been set"."""
    (tmp_path / "resolv.conf").write_text("search a.test\noptions ndots:1 attempts:5 timeout:2\n")
    monkeypatch.setenv("LOCALDOMAIN", "svc.corp.example corp.example")
    monkeypatch.setenv("RES_OPTIONS", "ndots:3 attempts:2 timeout:1")
    r = Resolver.from_system(dns_resolver=["127.0.0.1:53"], resolv_conf=str(tmp_path / "resolv.conf"),
                             hostsfile=str(tmp_path / "hosts"))
    assert r.search == ["svc.corp.example", "corp.example"]
    assert (r.ndots, r.attempts, r.timeout) == (3, 2, 1.0)


def test_from_system_without_resolv_conf_does_not_read_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kong/resty/dns/client.lua:588-595: applyEnv runs on a resolv.conf that exists; without one the settings are
    empty (`resolv = {}`), LOCALDOMAIN and RES_OPTIONS unread."""
    monkeypatch.setenv("LOCALDOMAIN", "corp.example")
    monkeypatch.setenv("RES_OPTIONS", "ndots:3")
    r = Resolver.from_system(dns_resolver=["127.0.0.1:53"], resolv_conf=str(tmp_path / "missing"),
                             hostsfile=str(tmp_path / "hosts"))
    assert (r.search, r.ndots) == ([], 1)


def test_resolv_conf_ipv6_nameserver_with_a_scope_is_skipped() -> None:
    conf = parse_resolv_conf("nameserver [fe80::1%enp0s20f0u1u1]\nnameserver fe80::1%enp0s20f0u1u1\n"
                             "nameserver 10.0.0.1\n")
    assert resolv_conf_nameservers(conf) == [("10.0.0.1", 53)]


@pytest.mark.parametrize(("text", "expected"), [
    ("8.8.8.8", ("8.8.8.8", 53)), ("8.8.8.8:5353", ("8.8.8.8", 5353)), ("::1", ("::1", 53)),
    ("[::1]", ("::1", 53)), ("[::1]:5300", ("::1", 5300)),
])
def test_dns_resolver_entry_is_an_ip_with_an_optional_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("dns.google", "not an IP address"), ("8.8.8.8:0", "port '0' is not in 1-65535"),
    ("8.8.8.8:x", "port 'x'"), ("[::1", "expected ip, ip:port"), ("1.2.3:53", "'1.2.3' is not an IPv4"),
    ("[1.2.3.4]:53", "is not an IPv6"),
])
def test_dns_resolver_entry_that_is_not_an_address_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_nameserver(text)


# == 02-client_spec: initialization ==================================================================================


@pytest.mark.parametrize(("order", "message"), [
    ([], "Invalid order list; cannot be empty"),
    (["LAST", "a", "aa"], "Invalid dns record type in order array; aa"),
])
def test_order_empty_or_with_an_unknown_type_is_refused(order: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Resolver(order=order)


def test_defaults_are_kongs() -> None:
    r = Resolver()
    assert (r.order, r.valid_ttl, r.stale_ttl, r.not_found_ttl, r.error_ttl, r.no_sync, r._cache.size) == (
        [-1, TYPE_SRV, TYPE_A, TYPE_CNAME], None, 3600.0, 30.0, 1.0, False, 10000)
    assert (r.timeout, r.attempts, r.ndots, r.search, r.rotate) == (2.0, 5, 1, [], False)


async def test_localhost_is_defined_when_the_hosts_file_lacks_it() -> None:
    r = Resolver(hosts={}, order=KONG_ORDER)
    assert [x.address for x in await r.resolve("localhost", TYPE_A)] == ["127.0.0.1"]
    assert [x.address for x in await r.resolve("localhost", TYPE_AAAA)] == ["::1"]
    mine = Resolver(hosts={"localhost": HostsEntry(ipv4="127.0.0.2")}, order=KONG_ORDER)
    assert [x.address for x in await mine.resolve("localhost")] == ["127.0.0.2"]


async def test_from_system_reads_resolv_conf_hosts_and_dns_resolver(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text("nameserver 10.1.1.1\nsearch a.test b.test\noptions ndots:3 timeout:4 "
                                          "attempts:2 rotate\n")
    (tmp_path / "hosts").write_text("10.9.9.9 myname.lan\n")
    r = Resolver.from_system(resolv_conf=str(tmp_path / "resolv.conf"), hostsfile=str(tmp_path / "hosts"), env={})
    assert (r.nameservers, r.search, r.ndots, r.timeout, r.attempts, r.rotate) == (
        [("10.1.1.1", 53)], ["a.test", "b.test"], 3, 4.0, 2, True)
    assert await r.toip("myname.lan", 80) == ("10.9.9.9", 80)
    mine = Resolver.from_system(dns_resolver=["8.8.8.8", "[::1]:5353"], resolv_conf=str(tmp_path / "resolv.conf"),
                                hostsfile=str(tmp_path / "missing"), env={"LOCALDOMAIN": "c.test"})
    assert (mine.nameservers, mine.search) == ([("8.8.8.8", 53), ("::1", 5353)], ["c.test"])


# == IP literals =====================================================================================================


@pytest.mark.parametrize(("name", "qtype", "address"), [
    ("1.2.3.4", TYPE_A, "1.2.3.4"), ("1.2.3.4", None, "1.2.3.4"),
    ("[1:2::3:4]", TYPE_AAAA, "1:2::3:4"), ("1:2::3:4", None, "1:2::3:4"),
])
async def test_ip_address_answers_itself_with_a_ten_year_ttl(name: str, qtype: int | None, address: str) -> None:
    r = Resolver(hosts={})  # no nameservers: any query would fail
    answer = await r.resolve(name, qtype)
    assert [(x.address, x.ttl) for x in answer] == [(address, 10 * 365 * 24 * 60 * 60)]


@pytest.mark.parametrize(("name", "qtype", "message"), [
    ("1.2.3.4", TYPE_SRV, "dns client error: 102 invalid name, bad IPv4"),
    ("[1:2::3:4]", TYPE_SRV, "dns client error: 103 invalid name, bad IPv6"),
    ("[1::2:3::4]", None, "dns client error: 103 invalid name, bad IPv6"),
])
async def test_ip_address_of_the_wrong_type_or_invalid_is_a_client_error(name: str, qtype: int | None,
                                                                         message: str) -> None:
    with pytest.raises(DnsError) as caught:
        await Resolver(hosts={}).resolve(name, qtype)
    assert caught.value.message == message and not caught.value.not_found


async def test_without_nameservers_a_name_fails_to_resolve() -> None:
    with pytest.raises(DnsError) as caught:
        await Resolver(hosts={}).resolve("konghq.com", TYPE_A)
    assert caught.value.message == "failed to create a resolver: no nameservers specified"


# == against a real dnsmasq ==========================================================================================


DNSMASQ_RECORDS = [
    "--host-record=web1.test,10.0.0.1,2001:db8::1,60",
    "--host-record=web2.test,10.0.0.2",
    "--cname=alias.test,web1.test",
    "--srv-host=_http._tcp.svc.test,web1.test,8080,10,5",
    "--srv-host=_http._tcp.port0.test,web2.test,0,10,5",
]


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    with run_dnsmasq(DNSMASQ_RECORDS, tmp_path_factory.mktemp("dnsmasq")) as server:
        yield server


def on(server: Dnsmasq, **settings: Any) -> Resolver:
    settings.setdefault("timeout", 1.0)
    settings.setdefault("attempts", 2)
    settings.setdefault("hosts", {})
    return Resolver(nameservers=[("127.0.0.1", server.port)], **settings)


async def test_dnsmasq_a_and_aaaa_records_with_their_ttl(dnsmasq: Dnsmasq) -> None:
    r = on(dnsmasq)
    assert [(x.name, x.type, x.address, x.ttl) for x in await r.resolve("web1.test", TYPE_A)] == [
        ("web1.test", TYPE_A, "10.0.0.1", 60)]
    assert [x.address for x in await r.resolve("WEB1.test", TYPE_AAAA)] == ["2001:db8::1"]


async def test_dnsmasq_untyped_name_tries_srv_then_a(dnsmasq: Dnsmasq) -> None:
    before = len(dnsmasq.queries())
    answer = await on(dnsmasq).resolve("web2.test")
    assert [(x.type, x.address) for x in answer] == [(TYPE_A, "10.0.0.2")]
    assert dnsmasq.queries()[before:] == ["[SRV] web2.test from 127.0.0.1", "[A] web2.test from 127.0.0.1"]


async def test_dnsmasq_srv_record_and_toip_uses_its_port_and_target(dnsmasq: Dnsmasq) -> None:
    r = on(dnsmasq)
    [record] = await r.resolve("_http._tcp.svc.test")
    assert (record.type, record.priority, record.weight, record.port, record.target) == (
        TYPE_SRV, 10, 5, 8080, "web1.test")
    assert await r.toip("_http._tcp.svc.test", 80) == ("10.0.0.1", 8080)


async def test_dnsmasq_srv_port_0_keeps_the_callers_port(dnsmasq: Dnsmasq) -> None:
    r = on(dnsmasq)
    assert await r.toip("_http._tcp.port0.test", 10) == ("10.0.0.2", 10)
    assert await r.toip("_http._tcp.port0.test") == ("10.0.0.2", None)


async def test_dnsmasq_cname_is_dereferenced_unless_asked_for(dnsmasq: Dnsmasq) -> None:
    r = on(dnsmasq)
    assert [(x.name, x.address) for x in await r.resolve("alias.test")] == [("web1.test", "10.0.0.1")]
    assert [(x.name, x.cname, x.ttl) for x in await r.resolve("alias.test", TYPE_CNAME)] == [
        ("alias.test", "web1.test", 7)]  # --local-ttl
    assert [x.cname for x in await r.resolve("alias.test.", TYPE_CNAME)] == ["web1.test"]


async def test_dnsmasq_nxdomain_is_a_name_error(dnsmasq: Dnsmasq) -> None:
    with pytest.raises(DnsError) as caught:
        await on(dnsmasq).resolve("IsNotHere.test")
    assert (caught.value.name, caught.value.message, caught.value.name_error) == (
        "isnothere.test", NOT_FOUND_ERROR, True)


async def test_dnsmasq_name_without_the_type_is_an_empty_record_not_a_name_error(dnsmasq: Dnsmasq) -> None:
    with pytest.raises(DnsError) as caught:
        await on(dnsmasq).resolve("web2.test", TYPE_SRV)
    assert (caught.value.message, caught.value.name_error, caught.value.not_found) == (EMPTY_ERROR, False, True)


async def test_dnsmasq_refused_is_a_server_error(dnsmasq: Dnsmasq) -> None:
    with pytest.raises(DnsError) as caught:
        await on(dnsmasq).resolve("elsewhere.example", TYPE_A)
    assert (caught.value.message, caught.value.not_found) == ("dns server error: 5 refused", False)


async def test_dnsmasq_answer_cached_for_its_ttl_then_asked_again(dnsmasq: Dnsmasq) -> None:
    clock = FakeClock()
    r = on(dnsmasq, clock=clock, stale_ttl=0)
    before = len(dnsmasq.queries())
    for _ in range(3):
        await r.resolve("web1.test", TYPE_A)
    assert len(dnsmasq.queries()) == before + 1
    clock.now += 59
    await r.resolve("web1.test", TYPE_A)
    assert len(dnsmasq.queries()) == before + 1
    clock.now += 2  # past the record's 60 s
    await r.resolve("web1.test", TYPE_A)
    assert len(dnsmasq.queries()) == before + 2


async def test_dnsmasq_hosts_file_answers_before_dns(dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("10.9.9.9 web1.test\n")
    r = Resolver.from_system(dns_resolver=[f"127.0.0.1:{dnsmasq.port}"], hostsfile=str(tmp_path / "hosts"),
                             resolv_conf=str(tmp_path / "none"), env={})
    before = len(dnsmasq.queries())
    assert await r.toip("web1.test", 80) == ("10.9.9.9", 80)
    assert [x.address for x in await r.resolve("web1.test", TYPE_A)] == ["10.9.9.9"]
    assert len(dnsmasq.queries()) == before


async def test_dnsmasq_search_list_expands_a_short_name(dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text(f"nameserver 127.0.0.1:{dnsmasq.port}\nsearch nowhere.test test\n")
    r = Resolver.from_system(resolv_conf=str(tmp_path / "resolv.conf"), hostsfile=str(tmp_path / "none"), env={})
    before = len(dnsmasq.queries())
    assert await r.toip("web2", 80) == ("10.0.0.2", 80)
    assert dnsmasq.queries()[before:] == [
        "[SRV] web2.nowhere.test from 127.0.0.1", "[SRV] web2.test from 127.0.0.1",
        "[SRV] web2 from 127.0.0.1",
        "[A] web2.nowhere.test from 127.0.0.1", "[A] web2.test from 127.0.0.1"]


# == 02-client_spec: search lists and the order of types (the scripted server logs what is asked) =====================


def nxdomain(q: Query) -> list[Answer]:
    return [reply(q.id, q.name, q.type, rcode=3)]


@pytest.mark.parametrize(("name", "search", "qtype", "expected"), [
    ("host", ["one.com", "two.com"], None,
     [(n, t) for t in (33, 1, 28, 5) for n in ("host.one.com", "host.two.com", "host")]),
    ("host", ["."], None, [("host", t) for t in (33, 1, 28, 5)]),
    ("host", ["one.com", "two.com"], TYPE_AAAA, [("host.one.com", 28), ("host.two.com", 28), ("host", 28)]),
    ("host.", ["one.com", "two.com"], None, [("host", t) for t in (33, 1, 28, 5)]),
    ("local.host", ["one.com", "two.com"], None,  # ndots 1: a dotted name is tried bare first
     [(n, t) for t in (33, 1, 28, 5) for n in ("local.host", "local.host.one.com", "local.host.two.com")]),
])
async def test_search_list_and_ndots_order_the_names_tried(name: str, search: list[str], qtype: int | None,
                                                           expected: list[tuple[str, int]]) -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, nxdomain)
        with pytest.raises(DnsError) as caught:
            await resolver_for(server, search=search, ndots=1, order=KONG_ORDER).resolve(name, qtype)
        assert server.seen() == expected
        assert caught.value.message == NOT_FOUND_ERROR
        nursery.cancel_scope.cancel()


async def test_last_successful_type_is_tried_first() -> None:
    clock = FakeClock()
    table = {("host", TYPE_CNAME): [cname("host", "target")], ("target", TYPE_A): [a("target", "10.0.0.5")]}
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records(table))
        r = resolver_for(server, order=KONG_ORDER, clock=clock, stale_ttl=0)
        assert await r.toip("host") == ("10.0.0.5", None)
        assert server.seen() == [("host", 33), ("host", 1), ("host", 28), ("host", 5), ("target", 33),
                                 ("target", 1)]
        server.queries.clear()
        clock.now += 301  # everything expired
        assert await r.toip("host") == ("10.0.0.5", None)
        assert server.seen() == [("host", 5), ("target", 1)]
        nursery.cancel_scope.cancel()


async def test_transient_failure_of_one_type_does_not_answer_with_another() -> None:
    # KAG-2300: the SRV query times out; the A record that exists must not be answered instead
    def answer(q: Query) -> list[Answer]:
        return [] if q.type == TYPE_SRV else [reply(q.id, q.name, q.type, answers=[a(q.name, "10.0.0.1")])]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        with pytest.raises(DnsError) as caught:
            await resolver_for(server, timeout=0.1, attempts=2).resolve("both.test")
        assert caught.value.message == f"failed to receive reply from UDP server 127.0.0.1:{server.port}: timeout"
        assert server.seen() == [("both.test", TYPE_SRV)] * 2
        nursery.cancel_scope.cancel()


async def test_srv_record_pointing_to_itself_falls_through_to_a() -> None:
    table = {("self.test", TYPE_SRV): [srv("self.test", 1, 1, 80, "self.test")],
             ("self.test", TYPE_A): [a("self.test", "10.0.0.44")]}
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records(table))
        r = resolver_for(server)
        assert [x.target for x in await r.resolve("self.test", TYPE_SRV)] == ["self.test"]
        assert await r.toip("self.test") == ("10.0.0.44", None)
        nursery.cancel_scope.cancel()


async def test_cname_loop_is_detected() -> None:
    table = {("a.test", TYPE_CNAME): [cname("a.test", "b.test")], ("b.test", TYPE_CNAME): [cname("b.test", "a.test")]}
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records(table))
        with pytest.raises(DnsError, match="recursion detected"):
            await resolver_for(server).resolve("a.test")
        nursery.cancel_scope.cancel()


# == wire: UDP, TCP, timeouts, stray replies =========================================================================


async def test_truncated_reply_is_asked_again_over_tcp() -> None:
    def answer(q: Query) -> list[Answer]:
        if q.transport == "udp":
            return [reply(q.id, q.name, q.type, tc=True)]
        return [reply(q.id, q.name, q.type, answers=[a(q.name, f"10.0.1.{i}") for i in range(1, 41)])]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        answer_records = await resolver_for(server).resolve("big.test", TYPE_A)
        assert len(answer_records) == 40
        assert (server.seen("udp"), server.seen("tcp")) == ([("big.test", 1)], [("big.test", 1)])
        nursery.cancel_scope.cancel()


async def test_servfail_is_a_server_error_not_a_name_error() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, lambda q: [reply(q.id, q.name, q.type, rcode=2)])
        with pytest.raises(DnsError) as caught:
            await resolver_for(server).resolve("down.test", TYPE_A)
        assert (caught.value.message, caught.value.name_error, caught.value.not_found) == (
            "dns server error: 2 server failure", False, False)
        nursery.cancel_scope.cancel()


async def test_silent_nameserver_times_out_after_attempts_tries_taking_servers_in_turn() -> None:
    async with trio.open_nursery() as nursery:
        silent = await start(nursery, lambda q: [])
        also_silent = await start(nursery, lambda q: [])
        r = resolver_for(silent, also_silent, timeout=0.1, attempts=3)
        began = trio.current_time()
        with pytest.raises(DnsError) as caught:
            await r.resolve("quiet.test", TYPE_A)
        took = trio.current_time() - began
        # three tries of 0.1 s; the rest a busy host's scheduling (a try that waited DEFAULT_TIMEOUT_S would be 2 s)
        assert 0.3 <= took < 1.8, took
        assert (len(silent.queries), len(also_silent.queries)) == (2, 1)
        assert caught.value.message == f"failed to receive reply from UDP server 127.0.0.1:{silent.port}: timeout"
        nursery.cancel_scope.cancel()


async def test_next_nameserver_answers_when_the_first_is_silent() -> None:
    async with trio.open_nursery() as nursery:
        silent = await start(nursery, lambda q: [])
        good = await start(nursery, records({("x.test", TYPE_A): [a("x.test", "10.0.0.9")]}))
        assert await resolver_for(silent, good, timeout=0.1).toip("x.test", 1) == ("10.0.0.9", 1)
        nursery.cancel_scope.cancel()


async def test_refused_port_moves_on_to_the_next_nameserver() -> None:
    async with trio.open_nursery() as nursery:
        good = await start(nursery, records({("x.test", TYPE_A): [a("x.test", "10.0.0.9")]}))
        r = Resolver(nameservers=[("127.0.0.1", free_port()), ("127.0.0.1", good.port)], hosts={}, timeout=6.0)
        began = trio.current_time()
        assert await r.toip("x.test") == ("10.0.0.9", None)
        took = trio.current_time() - began
        assert took < 3.0, took  # at once (milliseconds; seconds on a busy host), not after the refused try's 6 s
        nursery.cancel_scope.cancel()


async def test_reply_with_a_wrong_id_or_from_another_address_is_ignored() -> None:
    def answer(q: Query) -> list[Answer]:
        bogus = [a(q.name, "6.6.6.6")]
        return [("other", reply(q.id, q.name, q.type, answers=bogus)),  # right id, wrong source port
                reply((q.id + 1) % 65536, q.name, q.type, answers=bogus),  # right source, wrong id
                reply(q.id, "evil.test", q.type, answers=bogus),  # right id, another question
                reply(q.id, q.name, q.type, answers=[a(q.name, "10.0.0.7")])]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        assert [x.address for x in await resolver_for(server).resolve("x.test", TYPE_A)] == ["10.0.0.7"]
        assert len(server.queries) == 1
        nursery.cancel_scope.cancel()


async def test_malformed_reply_fails_that_try_and_the_next_one_is_made() -> None:
    def answer(q: Query) -> list[Answer]:
        if len(server.queries) == 1:
            return [reply(q.id, q.name, q.type, answers=[a(q.name, "10.0.0.7")])[:-2]]
        return [reply(q.id, q.name, q.type, answers=[a(q.name, "10.0.0.8")])]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        assert [x.address for x in await resolver_for(server).resolve("x.test", TYPE_A)] == ["10.0.0.8"]
        assert len(server.queries) == 2
        nursery.cancel_scope.cancel()


async def test_a_late_reply_to_an_earlier_try_is_taken_by_the_next_try() -> None:
    """lua-resty-dns keeps one UDP socket per nameserver for the whole query and sends each try of it with one id
    (lib/resty/dns/resolver.lua v0.23: :140-168 the sockets made in new(), which Kong's client calls once per query,
    kong/resty/dns/client.lua:743; :873 one `id`; :890-904 each try `sock:send(query)` then `sock:receive(4096)` on
    the socket pick_sock gives); a read timeout leaves the socket open (lua-nginx-module v0.10.28
    src/ngx_http_lua_socket_udp.c:1299-1301 `#if 0 ngx_http_lua_socket_udp_finalize`). So a reply that comes
    after its try's timeout is read, and taken (:645 same id), by the next try: a nameserver that always answers in
    1.5 timeouts is answered on the second try, not timed out on every one."""
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records({("slow.test", TYPE_A): [a("slow.test", "10.0.0.7")]}), delay=0.15)
        r = resolver_for(server, timeout=0.1, attempts=3)
        with trio.fail_after(2):
            assert [x.address for x in await r.resolve("slow.test", TYPE_A)] == ["10.0.0.7"]
        nursery.cancel_scope.cancel()


async def test_tcp_reply_arriving_in_pieces_is_bounded_per_read_not_as_a_whole() -> None:
    """lua-resty-dns's tcp socket has one settimeout for connect, send and each receive (resolver.lua v0.23:175
    `tcp_sock:settimeout(timeout)`, :818 `sock:receive(2)`, :830 `sock:receive(len)`), and the cosocket's read
    timer is re-armed whenever bytes arrive (lua-nginx-module v0.10.28 src/ngx_http_lua_socket_tcp.c:2874-2875
    `if (rev->active) { ngx_add_timer(rev, u->read_timeout); }`): a large truncated answer that comes over TCP
    in pieces, each within the timeout, is read whole though the whole takes longer."""
    targets = [f"node{i}.big.test" for i in range(60)]

    def answer(q: Query) -> list[Answer]:
        if q.transport == "udp":
            return [reply(q.id, q.name, q.type, tc=True)]
        full = reply(q.id, q.name, q.type, answers=[srv(q.name, 1, 1, 8000 + i, t) for i, t in enumerate(targets)])
        data = struct.pack("!H", len(full)) + full
        return [Stream(data, chunk=len(data) // 3 + 1, pause=0.2)]  # 3 pieces, 0.2 s apart: 0.6 s in all
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        r = resolver_for(server, timeout=0.35, attempts=1)
        with trio.fail_after(3):
            got = await r.resolve("big.test", TYPE_SRV)
        assert [x.target for x in got] == targets
        nursery.cancel_scope.cancel()


# == caching: TTLs, errors, stale records (02-client_spec "verifies ...", 03-client_cache_spec) =====================


async def test_valid_ttl_overrides_every_record_ttl() -> None:
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records({("k.test", TYPE_A): [a("k.test", "5.6.7.8", ttl=10)]}))
        r = resolver_for(server, valid_ttl=0.1, stale_ttl=0, clock=clock)
        assert [x.ttl for x in await r.resolve("k.test", TYPE_A)] == [0.1]
        clock.now += 0.2
        await r.resolve("k.test", TYPE_A)
        assert len(server.queries) == 2
        nursery.cancel_scope.cancel()


async def test_valid_ttl_does_not_shorten_hosts_file_entries() -> None:
    # Kong/kong #7444
    clock = FakeClock()
    r = Resolver(hosts={"myname.lan": HostsEntry(ipv4="127.0.0.1")}, valid_ttl=0.1, stale_ttl=0, clock=clock)
    clock.now += 10
    assert [x.address for x in await r.resolve("myname.lan", TYPE_A)] == ["127.0.0.1"]


@pytest.mark.parametrize(("rcode", "setting", "message"), [
    (3, "not_found_ttl", NOT_FOUND_ERROR),
    (0, "not_found_ttl", EMPTY_ERROR),
    (5, "error_ttl", "dns server error: 5 refused"),
])
async def test_error_answers_are_cached_for_their_ttl_then_served_stale(rcode: int, setting: str,
                                                                        message: str) -> None:
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, lambda q: [reply(q.id, q.name, q.type, rcode=rcode)])
        r = resolver_for(server, clock=clock, stale_ttl=5, nursery=nursery, **{setting: 2})
        for step in (0, 1.5):  # fresh: from the cache
            clock.now += step
            with pytest.raises(DnsError, match=message):
                await r.resolve("err.test", TYPE_A)
            assert len(server.queries) == 1
        clock.now += 1  # stale: answered from the cache, refreshed in the background
        with pytest.raises(DnsError, match=message):
            await r.resolve("err.test", TYPE_A)
        with trio.fail_after(2):
            while len(server.queries) < 2:
                await trio.sleep(0.01)
        clock.now += 10  # past stale_ttl as well: a query in the foreground
        with pytest.raises(DnsError, match=message):
            await r.resolve("err.test", TYPE_A)
        assert len(server.queries) == 3
        nursery.cancel_scope.cancel()


async def test_a_ttl_with_the_top_bit_set_is_not_cached_for_decades() -> None:
    """RFC 2181 8: a TTL with its most significant bit set is taken as zero. lua-resty-dns reads it negative
    (resolver.lua v0.23:389 `lshift(byte_1, 24) + ...`, LuaJIT's signed 32-bit lshift) and Kong's cacheinsert
    then drops the answer (kong/resty/dns/client.lua:255 `lru_ttl = ttl + staleTtl`, :270 `if lru_ttl <= 0 then
    dnscache:delete(key)`): a day later the name is asked again, not answered from a cache of 68 years."""
    clock = FakeClock()
    address = ["10.0.0.1"]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, lambda q: [reply(q.id, q.name, q.type,
                                                       answers=[a(q.name, address[0], ttl=0x80000000 + 5)])])
        r = resolver_for(server, clock=clock)
        assert [x.address for x in await r.resolve("big.test", TYPE_A)] == ["10.0.0.1"]
        address[0] = "10.0.0.2"
        clock.now += 24 * 3600
        assert [x.address for x in await r.resolve("big.test", TYPE_A)] == ["10.0.0.2"]
        assert len(server.queries) == 2
        nursery.cancel_scope.cancel()


async def test_stale_record_is_served_while_a_background_query_refreshes_it() -> None:
    clock = FakeClock()
    address = ["10.0.0.1"]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, lambda q: [reply(q.id, q.name, q.type, answers=[a(q.name, address[0], 10)])],
                             delay=2.0)
        async with open_resolver(nameservers=[("127.0.0.1", server.port)], hosts={}, clock=clock, timeout=4.0,
                                 stale_ttl=30) as r:
            assert await r.toip("s.test") == ("10.0.0.1", None)
            address[0] = "10.0.0.2"
            clock.now += 11
            with trio.fail_after(1.0):  # the stale record, without waiting for the server's 2 s
                assert await r.toip("s.test") == ("10.0.0.1", None)
            with trio.fail_after(6):
                while await r.toip("s.test") != ("10.0.0.2", None):
                    await trio.sleep(0.02)
            assert len(server.queries) == 2
        nursery.cancel_scope.cancel()


async def test_record_with_ttl_0_is_refreshed_on_each_use_while_served() -> None:
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records({("z.test", TYPE_A): [a("z.test", "10.0.0.1", ttl=0)]}))
        async with open_resolver(nameservers=[("127.0.0.1", server.port)], hosts={}, clock=clock) as r:
            assert await r.toip("z.test") == ("10.0.0.1", None)
            assert await r.toip("z.test") == ("10.0.0.1", None)  # same instant: fresh
            assert len(server.queries) == 2  # SRV (empty) and A
            clock.now += 1
            assert await r.toip("z.test") == ("10.0.0.1", None)
            with trio.fail_after(2):
                while len(server.queries) < 3:
                    await trio.sleep(0.01)
            assert server.queries[-1].type == TYPE_A
        nursery.cancel_scope.cancel()


async def test_without_a_nursery_a_stale_record_is_refreshed_in_the_foreground() -> None:
    clock = FakeClock()
    address = ["10.0.0.1"]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, lambda q: [reply(q.id, q.name, q.type, answers=[a(q.name, address[0], 10)])])
        r = resolver_for(server, clock=clock)
        await r.resolve("s.test", TYPE_A)
        address[0] = "10.0.0.2"
        clock.now += 11
        assert [x.address for x in await r.resolve("s.test", TYPE_A)] == ["10.0.0.2"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("later", "kept"), [
    (lambda q: [reply(q.id, q.name, q.type, rcode=2)], True),  # errors do not replace stale records
    (lambda q: [reply(q.id, q.name, q.type)], True),  # empty records do not replace stale records
    (lambda q: [reply(q.id, q.name, q.type, rcode=3)], False),  # name errors do replace stale records
])
async def test_stale_record_replaced_only_by_a_name_error_or_new_records(later: Callable[[Query], list[Answer]],
                                                                         kept: bool) -> None:
    clock = FakeClock()
    answer: list[Callable[[Query], list[Answer]]] = [
        lambda q: [reply(q.id, q.name, q.type, answers=[a(q.name, "1.2.3.4", ttl=1)])]]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, lambda q: answer[0](q))
        async with open_resolver(nameservers=[("127.0.0.1", server.port)], hosts={}, clock=clock,
                                 stale_ttl=30) as r:
            await r.resolve("myhost9.test", TYPE_A)
            answer[0] = later
            clock.now += 2
            assert [x.address for x in await r.resolve("myhost9.test", TYPE_A)] == ["1.2.3.4"]  # stale
            with trio.fail_after(2):
                while len(server.queries) < 2:
                    await trio.sleep(0.01)
                await trio.sleep(0.05)
            if kept:
                assert [x.address for x in await r.resolve("myhost9.test", TYPE_A)] == ["1.2.3.4"]
            else:
                with pytest.raises(DnsError, match=NOT_FOUND_ERROR):
                    await r.resolve("myhost9.test", TYPE_A)
        nursery.cancel_scope.cancel()


async def test_short_name_answer_is_cached_without_iterating_the_search_list_again() -> None:
    table = {("myhost1.domain.com", TYPE_A): [a("myhost1.domain.com", "1.2.3.4")]}
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records(table))
        r = resolver_for(server, search=["domain.com"], order=KONG_ORDER)
        assert await r.toip("myhost1") == ("1.2.3.4", None)
        asked = len(server.queries)
        assert await r.toip("myhost1") == ("1.2.3.4", None)
        assert len(server.queries) == asked
        nursery.cancel_scope.cancel()


async def test_additional_section_records_are_cached_for_their_own_name() -> None:
    table = {("demo.service.consul", TYPE_SRV): [srv("demo.service.consul", 1, 1, 32776, "node.consul", ttl=30)]}

    def answer(q: Query) -> list[Answer]:
        rrs = table.get((q.name, q.type))
        if rrs is None:
            return [reply(q.id, q.name, q.type, rcode=3)]
        return [reply(q.id, q.name, q.type, answers=rrs, additional=[a("node.consul", "192.168.5.232", ttl=30)])]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        r = resolver_for(server, order=KONG_ORDER)
        assert await r.toip("demo.service.consul") == ("192.168.5.232", 32776)
        assert server.seen() == [("demo.service.consul", TYPE_SRV)]  # the target came with the answer
        nursery.cancel_scope.cancel()


async def test_cache_keeps_at_most_cache_size_entries() -> None:
    table = {(f"n{i}.test", TYPE_A): [a(f"n{i}.test", f"10.0.0.{i}")] for i in range(3)}
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records(table))
        r = resolver_for(server, cache_size=2)
        for i in (0, 1, 2):
            await r.resolve(f"n{i}.test", TYPE_A)  # each adds 2 keys: records and the short name
        await r.resolve("n2.test", TYPE_A)
        assert len(server.queries) == 3
        await r.resolve("n0.test", TYPE_A)  # dropped long ago
        assert len(server.queries) == 4
        nursery.cancel_scope.cancel()


# == merged queries (02-client_spec "verifies the polling of dns queries") ===========================================


@pytest.mark.parametrize(("no_sync", "queries"), [(False, 1), (True, 10)])
async def test_simultaneous_lookups_are_merged_unless_no_sync(no_sync: bool, queries: int) -> None:
    results: list[list[Any]] = []
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records({("m.test", TYPE_A): [a("m.test", "1.4.2.3")]}), delay=0.2)
        r = resolver_for(server, no_sync=no_sync)

        async def one() -> None:
            results.append(await r.resolve("m.test", TYPE_A))
        with trio.fail_after(3):
            async with trio.open_nursery() as lookups:
                for _ in range(10):
                    lookups.start_soon(one)
        assert len(server.queries) == queries
        assert [[x.address for x in result] for result in results] == [["1.4.2.3"]] * 10
        nursery.cancel_scope.cancel()


async def test_merged_lookup_asks_again_when_the_first_caller_is_cancelled() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records({("m.test", TYPE_A): [a("m.test", "1.4.2.3")]}), delay=0.2)
        r = resolver_for(server)
        got: list[str] = []

        async def waiter() -> None:
            got.extend(x.address for x in await r.resolve("m.test", TYPE_A))
        with trio.fail_after(3):
            async with trio.open_nursery() as lookups:
                with trio.move_on_after(0.05):
                    lookups.start_soon(waiter)
                    await r.resolve("m.test", TYPE_A)  # the first caller gives up before the answer
        assert got == ["1.4.2.3"] and len(server.queries) == 2
        nursery.cancel_scope.cancel()


# == toip: round-robin (02-client_spec "toip() function") ============================================================


async def test_toip_takes_a_and_aaaa_records_in_turn() -> None:
    table = {("rr.test", TYPE_A): [a("rr.test", "10.0.0.1"), a("rr.test", "10.0.0.2")]}
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records(table))
        r = resolver_for(server)
        assert [(await r.toip("rr.test", 80))[0] for _ in range(4)] == ["10.0.0.1", "10.0.0.2"] * 2
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("entries", "calls", "expected"), [
    # round-robin on the lowest priority only: 20 calls, 10 each
    ([(10, 5, 8000, "1.2.3.4"), (20, 5, 8001, "1.2.3.4"), (10, 5, 8002, "1.2.3.4")], 20, {8000: 10, 8002: 10}),
    # one entry
    ([(10, 10, 321, "1.2.3.4")], 10, {321: 10}),
])
async def test_toip_srv_weighted_round_robin_on_the_lowest_priority(entries: list[tuple[int, int, int, str]],
                                                                    calls: int, expected: dict[int, int]) -> None:
    table = {("w.test", TYPE_SRV): [srv("w.test", p, w, port, t) for p, w, port, t in entries]}
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records(table))
        r = resolver_for(server)
        ports: dict[int | None, int] = {}
        for _ in range(calls):
            _, port = await r.toip("w.test")
            ports[port] = ports.get(port, 0) + 1
        assert ports == expected
        nursery.cancel_scope.cancel()


async def test_toip_srv_weight_0_counts_as_1() -> None:
    table = {("w0.test", TYPE_SRV): [srv("w0.test", 10, 0, 321, "1.2.3.4"), srv("w0.test", 10, 50, 321, "1.2.3.5"),
                                     srv("w0.test", 10, 50, 321, "1.2.3.6")]}
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records(table))
        r = resolver_for(server)
        track: dict[str, int] = {}
        for _ in range(202):  # twice around: 1 + 100 + 101
            ip, _ = await r.toip("w0.test")
            track[ip] = track.get(ip, 0) + 1
        assert track == {"1.2.3.4": 2, "1.2.3.5": 100, "1.2.3.6": 100}
        nursery.cancel_scope.cancel()


async def test_toip_srv_with_an_ipv6_target_and_aaaa_records() -> None:
    table = {("v6.test", TYPE_SRV): [srv("v6.test", 1, 1, 99, "v6host.test")],
             ("v6host.test", TYPE_AAAA): [aaaa("v6host.test", "2001:db8::7")]}
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records(table))
        r = resolver_for(server, order=KONG_ORDER)
        assert await r.toip("v6.test", 1) == ("2001:db8::7", 99)
        nursery.cancel_scope.cancel()
