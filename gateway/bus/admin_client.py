"""A blocking admin client for the CLI and scripts: one request, one reply, bounded by a timeout."""

from __future__ import annotations

from typing import Any

import zmq

from gateway.bus.admin_protocol import AdminReply, decode_reply, encode_request


class AdminUnavailable(Exception):
    """No gateway answered at the endpoint in time."""


def admin_call(endpoint: str, cmd: str, args: dict[str, Any] | None = None, timeout: float = 5.0) -> AdminReply:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    try:
        sock.connect(endpoint)
        sock.send(encode_request(cmd, args))
        return decode_reply(sock.recv())
    except zmq.Again:
        raise AdminUnavailable(f"no answer on {endpoint} within {timeout:g}s") from None
    finally:
        sock.close()
