"""Shared pieces of the plugin tests: a gateway (llhttp) in front of an echo backend, and calls to it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from backends import Client, EchoBackend, Reply, service

from gateway.config import ConfigError, parse_config
from gateway.runtime import compile_config

TIMEOUT = 10


@pytest.fixture
def http_codec() -> str:
    """One codec for the plugin tests (imported by each module): what they check is above HTTP framing."""
    return "llhttp"


def plugin(name: str, **config: object) -> dict:
    return {"name": name, "config": config}


def refused(plugin_doc: dict) -> str:
    """The config error of a config with just this plugin (global) on a one-route service."""
    config = parse_config(json.dumps({"services": [{"name": "s", "url": "http://127.0.0.1:1",
                                                    "routes": [{"paths": ["/"]}]}], "plugins": [plugin_doc]}))
    with pytest.raises(ConfigError) as err:
        compile_config(config)
    return str(err.value)


async def start(nursery: trio.Nursery, gateway: Any, routes: list[dict[str, Any]] | None = None,
                **doc: Any) -> tuple[EchoBackend, int]:
    """An echo backend behind service `svc` (with `routes` nested) and the gateway: (backend, gateway port)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}",
                                               routes or [{"paths": ["/"]}])], **doc})
    return backend, port


async def call(port: int, target: str = "/", headers: list[tuple[str, str]] | None = None, method: str = "GET",
               body: bytes = b"") -> Reply:
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            return await client.request(method, target, headers=headers, body=body)


def seen(reply: Reply) -> dict[str, Any]:
    """What the echo backend received: method, path, headers (a dict of lists), body."""
    assert reply.status == 200, (reply.status, reply.body)
    doc = reply.json()
    headers: dict[str, list[str]] = {}
    for name, value in doc["headers"]:
        headers.setdefault(name, []).append(value)
    return {"method": doc["method"], "path": doc["path"], "headers": headers, "body": doc["body"]}


def headers_of(reply: Reply, name: str) -> list[str]:
    return [v for k, v in reply.headers if k.lower() == name]


def body_json(reply: Reply) -> Any:
    return json.loads(reply.body)


def run_without_waiting(coroutine: Any) -> Any:
    """Run a plugin step that never waits (an access or a filter on a fake exchange) to its end: its value."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the plugin step waited")
