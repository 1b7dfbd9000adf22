"""Request ids (32 hex characters, as Kong's) for proxied requests and the gateway's own error answers, and the
X-Request-Id that travels with them."""

from __future__ import annotations

import itertools
import os


class _RequestIds:
    """Unique ids without a system call per request: 12 random bytes per process (new after a fork), then a counter,
    so even a flood of 429s costs no syscall per answer."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = os.urandom(12).hex().encode()
        self.counter = itertools.count(1)

    def __call__(self) -> bytes:
        return b"%s%08x" % (self.prefix, next(self.counter) & 0xFFFFFFFF)


new_request_id = _RequestIds()

MAX_REQUEST_ID = 200


def valid_request_id(value: bytes) -> bool:
    """A client's X-Request-Id the gateway takes as the request's id: printable ASCII, no space, 1 to 200 bytes."""
    return 0 < len(value) <= MAX_REQUEST_ID and value.isascii() and value.decode().isprintable() and b" " not in value


def x_request_id(headers: list[tuple[bytes, bytes]], own: bytes) -> bytes:
    """The X-Request-Id a request goes upstream and is answered with: the client's when sane (a correlation id it
    chose), else the gateway's own id of the request (Kong's, which X-Kong-Request-Id, error bodies and the log
    carry whatever the client sent)."""
    for name, value in headers:
        if name == b"x-request-id" and valid_request_id(value):
            return value
    return own
