"""A blocking admin client for the CLI and scripts: one request, one reply, bounded by a timeout."""

from __future__ import annotations

from typing import Any

import zmq

from gateway.bus.admin_protocol import AdminReply, decode_reply, encode_request, older_gateway, timeout_ms


class AdminUnavailable(Exception):
    """No gateway answered at the endpoint in time."""


def admin_call(endpoint: str, cmd: str, args: dict[str, Any] | None = None, timeout: float = 5.0) -> AdminReply:
    """The gateway's reply; AdminUnavailable when none came within `timeout` seconds, which the request carries: a
    change still waiting its turn past them is never carried out."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    try:
        sock.connect(endpoint)
        sock.send(encode_request(cmd, args, timeout_ms=timeout_ms(timeout)))
        reply = decode_reply(sock.recv())
        if older_gateway(reply):  # (it refused the request whole: nothing was done; asked again as it knows it)
            sock.send(encode_request(cmd, args))
            reply = decode_reply(sock.recv())
        return reply
    except zmq.Again:
        raise AdminUnavailable(f"no answer on {endpoint} within {timeout:g}s") from None
    finally:
        sock.close()
