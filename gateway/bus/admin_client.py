"""A blocking admin client for the CLI and scripts: one request, one reply, bounded by a timeout.

A tcp endpoint is reached as a CURVE client (gateway.bus.curve.ClientKeys), and a socket monitor tells a refused
handshake (the gateway's ZAP handler refused this client's key, or the server key is not the gateway's) from a
gateway that does not answer."""

from __future__ import annotations

import struct
import time
from typing import Any

import zmq

from gateway.bus.admin_protocol import AdminReply, decode_reply, encode_request, older_gateway, timeout_ms
from gateway.bus.curve import NEED_KEYS, ClientKeys

HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class AdminUnavailable(Exception):
    """No gateway answered at the endpoint in time."""


class AdminRefused(Exception):
    """The CURVE handshake with the endpoint failed: the message says which side's key is likely at fault."""


def admin_call(endpoint: str, cmd: str, args: dict[str, Any] | None = None, timeout: float = 5.0,
               curve: ClientKeys | None = None) -> AdminReply:
    """The gateway's reply; AdminUnavailable when none came within `timeout` seconds, which the request carries: a
    change still waiting its turn past them is never carried out. A tcp endpoint needs `curve` (ValueError
    without); AdminRefused when its handshake fails."""
    if endpoint.startswith("tcp://") and curve is None:
        raise ValueError(NEED_KEYS)
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    monitor = None
    if endpoint.startswith("tcp://") and curve is not None:
        curve.apply(sock)
        sock.ipv6 = endpoint.startswith("tcp://[")
        monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)
    deadline = time.monotonic() + timeout
    try:
        sock.connect(endpoint)
        sock.send(encode_request(cmd, args, timeout_ms=timeout_ms(timeout)))
        reply = decode_reply(_receive(sock, monitor, endpoint, curve, deadline))
        if older_gateway(reply):  # (it refused the request whole: nothing was done; asked again as it knows it)
            sock.send(encode_request(cmd, args))
            reply = decode_reply(_receive(sock, monitor, endpoint, curve, deadline + timeout))
        return reply
    except zmq.Again:
        raise AdminUnavailable(f"no answer on {endpoint} within {timeout:g}s") from None
    finally:
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(linger=0)
        sock.close()


def _receive(sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes] | None, endpoint: str, curve: ClientKeys | None,
             deadline: float) -> bytes:
    """The reply, or zmq.Again past `deadline`; AdminRefused as soon as the monitor reports a failed handshake."""
    if monitor is None or curve is None:
        return sock.recv()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        ready = dict(poller.poll(max(int(left * 1000), 1)))
        if monitor in ready:
            event = struct.unpack("=HI", monitor.recv_multipart()[0][:6])[0]
            raise AdminRefused(handshake_failure(event, endpoint, curve))
        if sock in ready:
            return sock.recv()
    raise zmq.Again()


def handshake_failure(event: int, endpoint: str, curve: ClientKeys) -> str:
    """What a failed CURVE handshake (a monitor's HANDSHAKE_FAILED_* event) says, and what to do."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (f"the gateway at {endpoint} refused this client key (its public key {curve.client.public.decode()} "
                "is not in admin_curve.authorized_keys)")
    return (f"the CURVE handshake with {endpoint} failed, likely a wrong server key: --curve-server-key (public key "
            f"{curve.server.decode()}) must be the gateway's admin_curve.secret_key_file public key (or the "
            "endpoint is no CURVE admin endpoint)")
