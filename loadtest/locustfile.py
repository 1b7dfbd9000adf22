"""Locust scenarios that speak MCP to the demo (scripts/demo: three `mcp` SDK servers behind the gateway) as real
clients do, checking every answer. `scripts/load` runs them headless for a bounded time and prints locust's summary.

    scripts/load                                                      # 30 s, 10 users, against the demo
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080     # locust's web UI

McpSessionUser  a 2025-06-18 client session: `initialize` (Accept: application/json, text/event-stream), the
                `notifications/initialized` notification (202), the GET stream opened (200, text/event-stream) and
                closed; then `tools/list` (the demo's three tools), `whoami` (it must be the server that answered
                `initialize`: the gateway pins the session), `slow` with a progress token (progress notifications,
                then the server's name) and `echo_headers` (the server saw its own host:port as Host); at the end
                DELETE (200), after which the session id gets 404.
StatelessUser   the 2026-07-28 revision: no session; `whoami` with the Mcp-Method / Mcp-Name headers and the
                protocol version in _meta, answered by any of the demo's servers.

Requests go to MCP_PATH (environment; default /mcp, the demo's route). A request counts as failed on an unexpected
status, a body that is not MCP, a JSON-RPC error, or a result other than the one checked.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

from locust import HttpUser, between, task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mcp_payloads import (  # noqa: E402
    CONTENT_TYPE,
    MCP_ACCEPT,
    PROTOCOL_VERSION,
    call_body,
    initialize_body,
    initialized_notification,
    messages,
    response_to,
    stateless_call,
    tools_list_body,
)

MCP_PATH = os.environ.get("MCP_PATH", "/mcp")
DEMO_TOOLS = {"whoami", "slow", "echo_headers"}
TIMEOUT_S = 30


class Failed(Exception):
    """What was wrong with an answer (the request's failure message)."""


def answer(response, request_id: int) -> dict:
    """The JSON-RPC result for `request_id` in a 200 answer (JSON or SSE), or Failed saying what is wrong."""
    if response.status_code != 200:
        raise Failed(f"HTTP {response.status_code}: {response.text[:200]}")
    try:
        message = response_to(request_id, messages(response.headers.get("Content-Type", ""), response.text))
    except ValueError as e:
        raise Failed(str(e)) from None
    if "error" in message:
        raise Failed(f"JSON-RPC error {message['error']}")
    return message["result"]


def tool_text(result: dict) -> str:
    content = result.get("content") or [{}]
    if result.get("isError") or content[0].get("type") != "text":
        raise Failed(f"tool error or no text: {json.dumps(result)[:200]}")
    return content[0]["text"]


class McpSessionUser(HttpUser):
    """One MCP session per simulated user, from initialize to DELETE."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.ids = itertools.count(1)
        self.headers = {"Content-Type": CONTENT_TYPE, "Accept": MCP_ACCEPT}
        self.server = ""
        request_id = next(self.ids)
        with self._post(initialize_body(request_id), "initialize") as response:
            try:
                result = answer(response, request_id)
                session = response.headers.get("Mcp-Session-Id")
                if not session:
                    raise Failed("no Mcp-Session-Id in the answer to initialize")
                if result.get("protocolVersion") != PROTOCOL_VERSION:
                    raise Failed(f"protocolVersion {result.get('protocolVersion')!r}")
                self.server = result["serverInfo"]["name"]
            except (Failed, KeyError, TypeError) as e:
                response.failure(str(e))
                self.stop()  # no session: nothing else this user does can succeed
                return
            response.success()
        self.headers |= {"Mcp-Session-Id": session, "MCP-Protocol-Version": PROTOCOL_VERSION}
        with self._post(initialized_notification(), "notifications/initialized") as response:
            if response.status_code == 202:
                response.success()
            else:
                response.failure(f"HTTP {response.status_code} (202 expected)")
        self._get_stream()

    def _post(self, body: str, name: str):  # noqa: ANN202 - locust's response context manager
        return self.client.post(MCP_PATH, data=body, headers=self.headers, name=name, catch_response=True,
                                timeout=TIMEOUT_S)

    def _get_stream(self) -> None:
        """Open the session's GET stream (server-to-client messages), check it is one, close it."""
        headers = {**self.headers, "Accept": "text/event-stream"}
        headers.pop("Content-Type")
        with self.client.get(MCP_PATH, headers=headers, name="GET stream", catch_response=True, stream=True,
                             timeout=TIMEOUT_S) as response:
            kind = response.headers.get("Content-Type", "")
            if response.status_code == 200 and kind.startswith("text/event-stream"):
                response.success()
            else:
                response.failure(f"HTTP {response.status_code}, Content-Type {kind!r}")
            response.close()

    def _call(self, body: str, request_id: int, name: str, check) -> None:  # noqa: ANN001 - check(result) -> None
        with self._post(body, name) as response:
            try:
                check(answer(response, request_id), response)
            except (Failed, KeyError, TypeError, ValueError) as e:
                response.failure(str(e))
            else:
                response.success()

    @task(2)
    def tools_list(self) -> None:
        def check(result: dict, _) -> None:  # noqa: ANN001
            names = {tool["name"] for tool in result["tools"]}
            if not DEMO_TOOLS <= names:
                raise Failed(f"tools {sorted(names)}, expected {sorted(DEMO_TOOLS)}")

        request_id = next(self.ids)
        self._call(tools_list_body(request_id), request_id, "tools/list", check)

    @task(5)
    def whoami(self) -> None:
        def check(result: dict, _) -> None:  # noqa: ANN001
            if (name := tool_text(result)) != self.server:
                raise Failed(f"answered by {name}, the session is on {self.server}")

        request_id = next(self.ids)
        self._call(call_body("whoami", request_id=request_id), request_id, "tools/call whoami", check)

    @task(1)
    def slow(self) -> None:
        def check(result: dict, response) -> None:  # noqa: ANN001
            progress = [m for m in messages(response.headers.get("Content-Type", ""), response.text)
                        if m.get("method") == "notifications/progress"]
            if len(progress) != 2 or progress[-1]["params"].get("progress") != 2:
                raise Failed(f"{len(progress)} progress notification(s), 2 expected")
            if (name := tool_text(result)) != self.server:
                raise Failed(f"answered by {name}, the session is on {self.server}")

        request_id = next(self.ids)
        body = call_body("slow", {"steps": 2, "delay": 0.02}, request_id, progress_token=request_id)
        self._call(body, request_id, "tools/call slow", check)

    @task(1)
    def echo_headers(self) -> None:
        def check(result: dict, _) -> None:  # noqa: ANN001
            seen = {k.lower(): v for k, v in json.loads(tool_text(result)).items()}
            if seen.get("mcp-session-id") in (None, self.headers["Mcp-Session-Id"]):
                raise Failed("the server saw the gateway's session id, not its own")
            if not seen.get("host", "").startswith("127.0.0.1:"):
                raise Failed(f"the server saw Host {seen.get('host')!r}")

        request_id = next(self.ids)
        self._call(call_body("echo_headers", request_id=request_id), request_id, "tools/call echo_headers", check)

    def on_stop(self) -> None:
        if not self.server:
            return
        with self.client.delete(MCP_PATH, headers=self.headers, name="DELETE", catch_response=True,
                                timeout=TIMEOUT_S) as response:
            if response.status_code == 200:
                response.success()
            else:
                response.failure(f"HTTP {response.status_code} (200 expected)")
        request_id = next(self.ids)
        with self._post(tools_list_body(request_id), "after DELETE") as response:
            if response.status_code == 404:
                response.success()
            else:
                response.failure(f"HTTP {response.status_code} (404 expected: the session was deleted)")


class StatelessUser(HttpUser):
    """2026-07-28 requests: no session, balanced over the servers."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.ids = itertools.count(1)

    @task
    def whoami(self) -> None:
        request_id = next(self.ids)
        headers, body = stateless_call("whoami", request_id=request_id)
        with self.client.post(MCP_PATH, data=body, headers=headers, name="tools/call whoami (stateless)",
                              catch_response=True, timeout=TIMEOUT_S) as response:
            try:
                if not tool_text(answer(response, request_id)):
                    raise Failed("no server name")
            except (Failed, KeyError, TypeError) as e:
                response.failure(str(e))
            else:
                response.success()
