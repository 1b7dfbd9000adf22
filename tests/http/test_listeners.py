"""Listening sockets as nginx makes them: an IPv6 address listens for IPv6 only (nginx's `listen [::]:8000` is
ipv6only=on, ngx_http_core_module.c / ngx_inet.c), so Kong's usual `proxy_listen = 0.0.0.0:8000, [::]:8000` is two
listeners side by side, each taking its own family's clients."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest

from gateway.http.net import bind_listener
from gateway.node.slots import ListenerSlots


def free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as v6, socket.socket() as v4:
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v4.bind(("0.0.0.0", 0))
        port = v4.getsockname()[1]
        v6.bind(("::", port))  # free in both families
        return port


def connects(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            return False
        return True


@pytest.fixture
def slots() -> Iterator[ListenerSlots]:
    held = ListenerSlots()
    yield held
    held.close()


def test_an_ipv6_wildcard_listener_takes_no_ipv4_client():
    sock = bind_listener("::", 0)
    try:
        port = sock.getsockname()[1]
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert connects("::1", port)
        assert not connects("127.0.0.1", port)
    finally:
        sock.close()


def test_the_ipv4_and_ipv6_wildcards_listen_on_one_port_side_by_side(slots: ListenerSlots):
    """It was refused: `cannot listen on [::]:8000: address in use by gateway pid <its own>`."""
    port = free_port()
    slots.ensure([("0.0.0.0", port), ("::", port)], 2)
    assert connects("127.0.0.1", port) and connects("::1", port)


def test_a_port_taken_in_the_same_family_is_still_refused(slots: ListenerSlots):
    port = free_port()
    slots.ensure([("::", port)], 1)
    other = ListenerSlots()
    with pytest.raises(OSError) as caught:
        other.ensure([("::1", port)], 1)
    other.close()
    assert caught.value.errno == errno.EADDRINUSE
    assert "address in use by gateway pid" in str(caught.value)
