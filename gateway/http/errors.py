"""Upstream failures in one family each, with the status a gateway answers for them (httpcore's layout)."""

from __future__ import annotations


class UpstreamError(Exception):
    """The upstream could not give a response. `sent` says whether any request byte reached it."""

    status = 502

    def __init__(self, message: str, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class ConnectError(UpstreamError):
    """TCP connect refused, unreachable, or timed out: nothing was sent, so any request may be retried."""


class ConnectTimeout(ConnectError):
    """The connect (or the TLS handshake) took longer than connect_timeout: nginx's 504, a timeout for passive
    health checks, as in Kong."""

    status = 504


class NameResolutionFailed(ConnectError):
    """The target's host name has no address: Kong answers 503 "name resolution failed" (kong.response.error), and
    no health check counts it against the target."""

    status = 503


class UpstreamTimeout(UpstreamError):
    """The upstream stopped answering within the service's write_timeout or read_timeout."""

    status = 504


class UpstreamClosed(UpstreamError):
    """The upstream closed or reset the connection before a complete response head; `reused`: on a connection taken
    from the pool (it may have died while idle, with the upstream itself)."""

    def __init__(self, message: str, sent: bool = False, reused: bool = False) -> None:
        super().__init__(message, sent)
        self.reused = reused


class BadResponse(UpstreamError):
    """The upstream's response broke HTTP/1.1."""
