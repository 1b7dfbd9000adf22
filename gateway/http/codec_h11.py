"""The reference codec: h11 on both sides, adapted to the codec interface in `gateway.http.codec`."""

from __future__ import annotations

import h11

from gateway.http.codec import (
    CLOSED,
    END,
    NEED_DATA,
    Event,
    Headers,
    ProtocolError,
    Request,
    Response,
    check_request_head,
)
from gateway.http.codec_llhttp import _wants_keep_alive


class _H11Codec:
    __slots__ = ("_conn",)

    def __init__(self, role: type[h11.CLIENT] | type[h11.SERVER], max_header_bytes: int) -> None:
        self._conn = h11.Connection(role, max_incomplete_event_size=max_header_bytes)

    def receive_data(self, data: bytes) -> None:
        try:
            self._conn.receive_data(data)
        except h11.RemoteProtocolError as e:  # data after EOF
            raise ProtocolError(str(e), e.error_status_hint) from None

    def body(self, data: bytes) -> bytes:
        return self._conn.send(h11.Data(data=data)) or b"" if data else b""

    def end(self) -> bytes:
        return self._conn.send(h11.EndOfMessage()) or b""

    @property
    def keep_alive(self) -> bool:
        return self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE

    def start_next_cycle(self) -> None:
        self._conn.start_next_cycle()

    def _next(self, error_status: int | None) -> object:
        try:
            return self._conn.next_event()
        except h11.RemoteProtocolError as e:
            raise ProtocolError(str(e), error_status or e.error_status_hint) from None


class H11Server(_H11Codec):
    """Server side of a client connection."""

    __slots__ = ("_method",)

    def __init__(self, max_header_bytes: int = 16384) -> None:
        super().__init__(h11.SERVER, max_header_bytes)

    def next_event(self) -> Event:
        ev = self._next(None)
        if type(ev) is h11.Data:
            return bytes(ev.data)
        if type(ev) is h11.Request:
            headers = list(ev.headers)
            version = bytes(ev.http_version)
            check_request_head(headers, version)
            return Request(bytes(ev.method), bytes(ev.target), headers, version, _wants_keep_alive(version, headers))
        if type(ev) is h11.EndOfMessage:
            return END
        if type(ev) is h11.ConnectionClosed:
            return CLOSED
        if ev is h11.PAUSED or ev is h11.NEED_DATA:
            return NEED_DATA
        raise ProtocolError(f"unexpected event {ev!r}")  # pragma: no cover - h11 has no other server events

    def response_head(self, status: int, headers: Headers, reason: bytes = b"", close: bool = False) -> bytes:
        if close:
            headers = [*headers, (b"connection", b"close")]
        return self._conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""

    def informational(self, status: int) -> bytes:
        return self._conn.send(h11.InformationalResponse(status_code=status, headers=[])) or b""


class H11Client(_H11Codec):
    """Client side of an upstream connection."""

    __slots__ = ()

    def __init__(self, max_header_bytes: int = 65536) -> None:
        super().__init__(h11.CLIENT, max_header_bytes)

    def request_head(self, method: bytes, target: bytes, headers: Headers) -> bytes:
        return self._conn.send(h11.Request(method=method, target=target, headers=headers)) or b""

    def next_event(self) -> Event:
        while True:
            ev = self._next(502)
            if type(ev) is h11.Data:
                return bytes(ev.data)
            if type(ev) is h11.Response:
                headers = list(ev.headers)
                version = bytes(ev.http_version)
                return Response(ev.status_code, bytes(ev.reason), headers, version, _wants_keep_alive(version, headers))
            if type(ev) is h11.EndOfMessage:
                return END
            if type(ev) is h11.ConnectionClosed:
                if self._conn.our_state is h11.DONE or self._conn.our_state is h11.SEND_BODY:
                    raise ProtocolError("upstream closed the connection mid-response", 502)
                return CLOSED
            if type(ev) is h11.InformationalResponse:
                continue
            return NEED_DATA
