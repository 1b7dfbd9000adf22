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


class LocalError(UpstreamError):
    """No socket for the upstream connection (socket() failed: EMFILE, ENFILE, ENOBUFS, ENOMEM): the gateway's own
    failure, not the target's. nginx's ngx_event_connect_peer returns NGX_ERROR for it and ngx_http_upstream_connect
    answers 500 at once: no next upstream, no peer marked failed (so no retry and nothing reported)."""

    status = 500


class NameResolutionFailed(ConnectError):
    """The target's host name has no address; no health check counts it against the target, and it is not retried.
    Kong's balancer (kong/runloop/balancer/init.lua execute) says 503 "name resolution failed" for a name error or an
    empty answer (`dns_error` None), 500 for any other failure of the look-up: `dns_error`, the DNS client's words,
    which kong/runloop/handler.lua balancer_execute puts in `kong_message`."""

    status = 503

    def __init__(self, message: str, host: str, dns_error: str | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.dns_error = dns_error
        if dns_error is not None:
            self.status = 500

    @property
    def kong_message(self) -> str:
        """The message of Kong's kong.response.error for this failure in its access phase."""
        if self.dns_error is None:
            return "name resolution failed"
        return f"failed the initial dns/balancer resolve for '{self.host}' with: {self.dns_error}"


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
