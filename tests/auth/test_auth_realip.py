"""The client address (gateway.http.realip): nginx's realip module as kong.conf's trusted_ips, real_ip_header and
real_ip_recursive configure it, case by case from ngx_http_get_forwarded_addr."""

from __future__ import annotations

import ipaddress

import pytest
from test_auth_config import errors

from gateway.http.realip import ClientAddress, parse_network

PEER = "10.0.0.2"  # the balancer in front of the gateway


def resolve(headers: list[tuple[str, str]], trusted: tuple[str, ...] = ("10.0.0.0/24",), header: str = "X-Real-IP",
            recursive: bool = False, peer: str = PEER) -> tuple[str, bool]:
    hdrs = [(k.lower().encode(), v.encode()) for k, v in headers]
    return ClientAddress(trusted, header, recursive).resolve(peer, hdrs)


def test_an_untrusted_peer_is_the_client_whatever_its_headers_say():
    assert resolve([("x-real-ip", "1.2.3.4")], peer="192.0.2.9") == ("192.0.2.9", False)
    xff = [("x-forwarded-for", "1.2.3.4")]
    assert resolve(xff, header="X-Forwarded-For", recursive=True, peer="192.0.2.9") == ("192.0.2.9", False)


def test_a_trusted_peer_without_the_header_is_the_client():
    assert resolve([]) == (PEER, True)


def test_x_real_ip_of_a_trusted_peer_is_the_client():
    assert resolve([("x-real-ip", "1.2.3.4")]) == ("1.2.3.4", True)


def test_only_the_first_line_of_a_header_other_than_x_forwarded_for_counts():
    assert resolve([("x-real-ip", "1.2.3.4"), ("x-real-ip", "5.6.7.8")]) == ("1.2.3.4", True)
    assert resolve([("x-client", "1.2.3.4"), ("x-client", "5.6.7.8")], header="X-Client") == ("1.2.3.4", True)


def test_without_recursion_the_last_address_of_the_list_is_the_client():
    xff = [("x-forwarded-for", "1.1.1.1, 2.2.2.2")]
    assert resolve(xff, header="X-Forwarded-For") == ("2.2.2.2", True)


def test_with_recursion_trusted_addresses_are_skipped_from_the_right():
    xff = [("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.0.0.7")]
    assert resolve(xff, header="X-Forwarded-For", recursive=True) == ("2.2.2.2", True)
    assert resolve(xff, header="X-Forwarded-For") == ("10.0.0.7", True)


def test_with_recursion_an_all_trusted_list_ends_at_its_first_address():
    xff = [("x-forwarded-for", "10.0.0.9, 10.0.0.8")]
    assert resolve(xff, header="X-Forwarded-For", recursive=True) == ("10.0.0.9", True)


def test_x_forwarded_for_lines_are_read_last_to_first():
    lines = [("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2, 10.0.0.5")]
    assert resolve(lines, header="X-Forwarded-For") == ("10.0.0.5", True)  # only the last line without recursion
    assert resolve(lines, header="X-Forwarded-For", recursive=True) == ("2.2.2.2", True)
    lines = [("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "10.0.0.5")]
    assert resolve(lines, header="X-Forwarded-For", recursive=True) == ("1.1.1.1", True)


def test_a_value_that_is_not_an_address_ends_the_walk():
    assert resolve([("x-real-ip", "unknown")]) == (PEER, True)
    xff = [("x-forwarded-for", "1.1.1.1, garbage, 10.0.0.6")]
    assert resolve(xff, header="X-Forwarded-For", recursive=True) == ("10.0.0.6", True)


@pytest.mark.parametrize(("value", "client"), [
    ("1.2.3.4:5678", "1.2.3.4"),
    ("[2001:db8::1]:443", "2001:db8::1"),
    ("2001:db8::1", "2001:db8::1"),
    ("2001:DB8:0:0::1", "2001:db8::1"),
    ("1.2.3.4, ", "1.2.3.4"),
    ("1.2.3.4:0", PEER),
    ("1.2.3.4:99999", PEER),
    ("1.2.3.4:http", PEER),
    ("fe80::1%eth0", PEER),
    ("", PEER),
    (",,", PEER),
])
def test_address_forms(value, client):
    assert resolve([("x-forwarded-for", value)], header="X-Forwarded-For") == (client, True)


def test_a_bracketed_ipv6_address_without_port_is_not_taken():
    """nginx 1.27.1 (Kong 3.x's) reads the header's address with ngx_parse_addr_port, which declines a bracketed IPv6
    address without a port: src/core/ngx_inet.c:642 (release-1.27.1) `if (p == NULL || p == last - 1 || *++p !=
    ':') { return NGX_DECLINED; }`, so the trusted peer stays the client (nginx 1.27.3's commit b2a67d261 "Realip:
    allowed square brackets with portless IPv6 address" is not in Kong 3.x)."""
    assert resolve([("x-real-ip", "[2001:db8::1]")]) == (PEER, True)
    assert resolve([("x-forwarded-for", "[2001:db8::1]")], header="X-Forwarded-For") == (PEER, True)


def test_an_ipv4_mapped_peer_is_matched_as_ipv4():
    assert resolve([("x-real-ip", "1.2.3.4")], peer="::ffff:10.0.0.2") == ("1.2.3.4", True)


def test_ipv6_trusted_ranges():
    got = resolve([("x-forwarded-for", "2001:db8::7, ::1")], trusted=("::1/128",), header="X-Forwarded-For",
                  recursive=True, peer="::1")
    assert got == ("2001:db8::7", True)


KONG_REFUSES = ["10.0.0.0/255.0.0.0", "10.0.0.0/0.0.0.255", "10.0.0.0/08", "::/0128", "fe80::1%eth0", "10.0.0.0/33"]


@pytest.mark.parametrize("entry", KONG_REFUSES)
def test_trusted_ips_refuse_what_kongs_conf_loader_refuses(entry):
    """kong.conf's trusted_ips go through ip.lua's is_valid_ip_or_cidr (kong/conf_loader/parse.lua) as ip-restriction's
    entries do: a netmask, a hostmask, a padded prefix length or an IPv6 zone is refused, not read as a network."""
    with pytest.raises(ValueError):
        parse_network(entry)
    [message] = errors(f"gateway: {{trusted_ips: ['{entry}']}}")
    assert message.startswith(f'gateway.trusted_ips[0]: expected an IP address or a CIDR (e.g. "10.0.0.0/8", "::1"), '
                              f'got "{entry}"')


def test_trusted_ips_refuse_an_address_in_brackets_as_nginx_does():
    """ip-restriction takes [::1] (lua-resty-ipmatcher strips the brackets); nginx's set_real_ip_from, which Kong
    writes trusted_ips into, does not: Kong would not start."""
    assert parse_network("[::1]", brackets=True) == ipaddress.ip_network("::1/128")
    assert errors("gateway: {trusted_ips: ['[::1]']}")


def test_a_network_with_host_bits_is_its_network():
    """nginx's set_real_ip_from and lua-resty-ipmatcher take 10.0.0.1/8 as 10.0.0.0/8 (host bits dropped)."""
    assert parse_network("10.0.0.1/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_network("2001:db8::1/32") == ipaddress.ip_network("2001:db8::/32")
    assert parse_network("::1") == ipaddress.ip_network("::1/128")
    assert resolve([("x-real-ip", "1.2.3.4")], trusted=("10.9.9.9/8",)) == ("1.2.3.4", True)
