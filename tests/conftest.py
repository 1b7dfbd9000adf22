"""Shared fixtures: run the gateway in-process, in the test's nursery, on a free 127.0.0.1 port, per codec.

`gateway` is a factory: `port = await gateway(doc, **gateway_settings)` takes a Kong-format config as a Python
dict (so tests can put their backends' ports in it), adds a `gateway:` block with the codec under test, validates
it with `parse_config` exactly as a YAML file would be, and serves it with `serve_worker` until the test ends.
"""

from __future__ import annotations

import copy
import os
import socket
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import trio
import yaml

from gateway.config import Config, parse_config
from gateway.http.net import Conn, bind_listener
from gateway.worker import bind_all, serve_worker

# CI draws the same Hypothesis examples every run (a change fails or passes, not the luck of a draw); elsewhere each
# run draws new ones, and the property tests keep exploring. Set before the test modules build their settings.
hypothesis.settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")

CODECS = ["h11", "llhttp"]

# kong.conf's KONG_<KEY> variables override every config's `gateway:` settings, the gateways the tests start as
# subprocesses included: a developer's shell's must not change what the tests check (tests set them by monkeypatch).
for _variable in [v for v in os.environ if v.startswith("KONG_")]:
    del os.environ[_variable]

# Every gateway process a test starts (each CLI call, the root, the zygote) imports some 300 gateway modules. With
# PYTHONDONTWRITEBYTECODE set, each of them compiled them all again (a quarter of a second a process): the tests'
# subprocesses keep bytecode beside the sources as Python does by default (__pycache__, ignored by git), and so read
# the installed packages' too (a cache directory of its own, PYTHONPYCACHEPREFIX, made the first process of a session
# compile the standard library, and the first MCP SDK server pydantic and starlette: 6-8 s). Set at import, before
# the test modules copy os.environ for their subprocesses.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@pytest.fixture
def conn_pair() -> Iterator[tuple[Conn, socket.socket]]:
    """A connected socket pair: ours wrapped in a Conn (gateway.http.net), and the peer's plain socket."""
    ours, theirs = socket.socketpair()
    yield Conn(ours), theirs
    ours.close()
    theirs.close()


@pytest.fixture(params=CODECS)
def http_codec(request: pytest.FixtureRequest) -> str:
    """The server/client codec pair the gateway runs with; every proxy test runs once per codec."""
    return request.param


def build_config(doc: dict[str, Any], codec: str, **settings: Any) -> Config:
    """A validated Config from a dict, with `gateway.http_codec` and any other gateway settings filled in."""
    doc = copy.deepcopy(doc)
    gw = doc.setdefault("gateway", {})
    gw.setdefault("http_codec", codec)
    gw.update(settings)
    return parse_config(yaml.safe_dump(doc, sort_keys=False), "<test config>")


async def _run_gateway(config: Config, listeners: list[socket.socket],
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    try:
        await serve_worker(config, listeners, ready=task_status.started)
    finally:
        for listener in listeners:
            listener.close()


@pytest.fixture
async def gateway(nursery: trio.Nursery, http_codec: str):  # noqa: ANN201 - returns the factory
    async def start(doc: dict[str, Any], **settings: Any) -> int:
        """Serve `doc` on a free port (returned); with a `listen` setting, on those addresses (the first's port)."""
        config = build_config(doc, http_codec, **settings)
        if "listen" in settings:
            listeners = bind_all(config)
        else:
            listeners = [bind_listener("127.0.0.1", 0, reuse_port=False)]
        port = listeners[0].getsockname()[1]
        await nursery.start(_run_gateway, config, listeners)
        return port

    return start

