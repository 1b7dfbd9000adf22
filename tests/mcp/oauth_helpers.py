"""Pieces of the MCP authorization tests: signing keys with ids, RS256/ES256 access tokens made by PyJWT, and a JWKS
server (h11, in the test's nursery) whose keys and answers a test changes while the gateway runs."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import h11
import jwt
import trio
from backends import Client, EchoBackend, Reply, _Backend, service
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.config.consumers import kong_consumer_id

AS_URL = "http://127.0.0.1:1/as"  # the issuer named in tokens and in authorization_servers (never contacted here)


def signing_key(kid: str, alg: str = "RS256") -> Any:
    """A private key per key id and algorithm family (made once per test run)."""
    return _private_key(kid, "EC" if alg.startswith("ES") else "RSA")


@functools.cache
def _private_key(kid: str, kty: str) -> Any:
    if kty == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(kid: str, alg: str = "RS256", **extra: Any) -> dict[str, Any]:
    """The public JWK of `signing_key(kid)`, as an authorization server publishes it."""
    public = signing_key(kid, alg).public_key()
    algorithm = ECAlgorithm if alg.startswith("ES") else RSAAlgorithm
    doc = algorithm.to_jwk(public, as_dict=True)
    return {**doc, "kid": kid, "use": "sig", "alg": alg, **extra}


def token(resource: str, kid: str = "k1", alg: str = "RS256", lifetime: float = 300, headers: dict | None = None,
          **claims: Any) -> str:
    """An access token for `resource` signed with `signing_key(kid)`: iss AS_URL, aud resource, exp now+lifetime."""
    now = int(time.time())
    payload = {"iss": AS_URL, "aud": resource, "sub": "user-1", "iat": now, "exp": now + lifetime, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, signing_key(kid, alg), algorithm=alg, headers={"kid": kid, **(headers or {})})


class JwksServer(_Backend):
    """GET /jwks answers {"keys": self.keys} (or `status` with an error body); counts the fetches."""

    def __init__(self, keys: list[dict[str, Any]] | None = None) -> None:
        super().__init__("jwks")
        self.keys = keys if keys is not None else [jwk("k1")]
        self.status = 200
        self.fetches = 0
        self.body: bytes | None = None  # a body to send instead of the JWKS (malformed documents)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        seen = await self._read_request(stream, conn)
        if seen is None:
            return
        self.fetches += 1
        body = self.body if self.body is not None else json.dumps({"keys": self.keys}).encode()
        if self.status != 200:
            body = b'{"error": "unavailable"}'
        await stream.send_all(conn.send(h11.Response(status_code=self.status, headers=[
            (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]))
            + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))


def oauth_plugin(resource: str, jwks_url: str, **config: Any) -> dict[str, Any]:
    return {"name": "ai-mcp-oauth2", "config": {"resource": resource, "authorization_servers": [AS_URL],
                                                "jwks_endpoint": jwks_url, **config}}


# ---- a gateway in front of an echo backend (as tests/auth does) -------------------------------------------------


async def start(nursery: trio.Nursery, gateway: Any, routes: list[dict[str, Any]] | None = None,
                **doc: Any) -> tuple[EchoBackend, int]:
    """An echo backend behind service `svc` (routes nested under it) and the gateway with `doc`'s other sections."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", routes)], **doc})
    return backend, port


async def call(port: int, target: str = "/", headers: list[tuple[str, str]] | None = None, method: str = "GET",
               host: str = "gateway.test", body: bytes = b"") -> Reply:
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            return await client.request(method, target, headers=headers, host=host, body=body)


def upstream(reply: Reply) -> dict[str, str]:
    """The headers the echo backend received, as a dict (repeated ones joined with ", ")."""
    assert reply.status == 200, (reply.status, reply.body)
    out: dict[str, str] = {}
    for name, value in reply.json()["headers"]:
        out[name] = out[name] + ", " + value if name in out else value
    return out


def consumer_id(username: str) -> str:
    return kong_consumer_id(username)


# ---- a scripted MCP server with tools ---------------------------------------------------------------------------


class ToolServer(_Backend):
    """Answers JSON-RPC POSTs as an MCP server with `tools` would: tools/list lists them, tools/call echoes the tool
    name (and records it in `called`), a batch gets an array; `mode` "json" answers application/json, "sse" an
    event stream, "sse-split" an event stream whose events arrive in 7-byte pieces 5 ms apart. A body of
    notifications only gets 202. GET gets a stream of `replay` (raw JSON messages, as a replaying server sends)."""

    def __init__(self, tools: list[str], mode: str = "json") -> None:
        super().__init__("tools")
        self.tools = tools
        self.mode = mode
        self.called: list[str] = []
        self.bodies: list[bytes] = []
        self.replay: list[bytes] = []

    def _answer_one(self, msg: Any) -> dict[str, Any] | None:
        if not isinstance(msg, dict) or "id" not in msg:
            return None
        method = msg.get("method")
        if method == "tools/list":
            result: Any = {"tools": [{"name": t, "description": f"the {t} tool", "inputSchema": {"type": "object"}}
                                     for t in self.tools]}
        elif method == "tools/call":
            name = msg["params"]["name"]
            self.called.append(name)
            result = {"content": [{"type": "text", "text": f"called {name}"}], "isError": False}
        else:
            result = {}
        return {"jsonrpc": "2.0", "id": msg["id"], "result": result}

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 22)
        while True:
            seen = await self._read_request(stream, conn)
            if seen is None:
                return
            if seen.method == "GET":
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
                    (b"content-type", b"text/event-stream")])))
                for raw in self.replay:
                    await stream.send_all(conn.send(h11.Data(data=b"event: message\ndata: " + raw + b"\n\n")))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                return
            self.bodies.append(seen.body)
            msg = json.loads(seen.body)
            answers = [a for a in (map(self._answer_one, msg) if isinstance(msg, list) else [self._answer_one(msg)])
                       if a is not None]
            if not answers:
                await stream.send_all(conn.send(h11.Response(status_code=202, headers=[(b"content-length", b"0")]))
                                      + conn.send(h11.EndOfMessage()))
            elif self.mode == "json":
                body = json.dumps(answers if isinstance(msg, list) else answers[0]).encode()
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
                    (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]))
                    + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            else:
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
                    (b"content-type", b"text/event-stream")])))
                for i, answer in enumerate(answers):
                    event = b"id: %d\nevent: message\ndata: %s\n\n" % (i, json.dumps(answer).encode())
                    if self.mode == "sse-split":
                        for j in range(0, len(event), 7):
                            await stream.send_all(conn.send(h11.Data(data=event[j:j + 7])))
                            await trio.sleep(0.005)
                    else:
                        await stream.send_all(conn.send(h11.Data(data=event)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()


def sse_messages(body: bytes) -> list[Any]:
    """The JSON messages of an event-stream body (one per `data:` line)."""
    return [json.loads(line[5:]) for line in body.split(b"\n") if line.startswith(b"data:")]
