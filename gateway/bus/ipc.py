"""Whether an ipc:// endpoint's socket file is a live one: binding over it would take it from its process."""

from __future__ import annotations

import socket
import struct


def listener_pid(path: str) -> int | None:
    """The pid of the process listening on the Unix socket `path` (0 when the kernel does not say), or None when
    nothing does (a stale file, or none)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
        pid, _, _ = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return pid
    except OSError:
        return None
    finally:
        probe.close()


def in_use(endpoint: str, pid: int, setting: str) -> str:
    """The refusal for an endpoint `pid` listens on (0: unknown)."""
    return (f"{endpoint} is in use by " + (f"gateway pid {pid}" if pid else "another process")
            + f"; stop that gateway, or give this one its own {setting}")
