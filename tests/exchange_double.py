"""An Exchange over a recording stand-in for the client's connection: the server's send and body paths tested
without sockets (what it writes, what it reads of `incoming`)."""

from __future__ import annotations

import math
from typing import Any

from gateway.http.codec import Request, ServerCodec
from gateway.http.server import Exchange, ServerSettings
from gateway.http.timers import ConnTimer, Phase


class RecordingClient:
    """The client side of an Exchange's connection: records each write, gives `incoming` to the body's reads."""

    peer = ("127.0.0.1", 40000)
    unsent = 0

    def __init__(self, incoming: list[bytes]) -> None:
        self.writes: list[bytes] = []
        self.incoming = incoming

    async def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    async def recv(self) -> bytes:
        return self.incoming.pop(0) if self.incoming else b""

    async def pace(self) -> None:
        pass


def exchange_of(codec_cls: type[ServerCodec], raw: bytes, incoming: list[bytes] | None = None) -> Exchange:
    """An Exchange for the request `raw` (its head and what of its body came with it)."""
    codec = codec_cls()
    codec.receive_data(raw)
    request = codec.next_event()
    assert type(request) is Request
    client: Any = RecordingClient(incoming or [])
    return Exchange(request, client, codec, ConnTimer(math.inf, Phase.BUSY), ServerSettings(codec_cls))
