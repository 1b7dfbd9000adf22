"""Locust load for the gateway (locust is optional: ``pip install locust``, it is not a project dependency).

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080                     # both user classes
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 ToolsCallUser       # the wrk load only
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 McpSessionUser --headless -u 50 -r 10 -t 30s

ToolsCallUser sends what ``loadtest/post_1k.lua`` sends with wrk: keep-alive POSTs of a 1 KB JSON-RPC ``tools/call``,
back to back. McpSessionUser behaves like an MCP client: ``initialize`` (keeping an ``Mcp-Session-Id`` if the server
hands one out), ``notifications/initialized``, then a mix of ``tools/list`` and ``tools/call``. Requests go to
MCP_PATH (environment, default ``/``). Locust measures far below wrk's rates; use it for behaviour under a realistic
mix, and ``scripts/bench`` for throughput.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

from locust import FastHttpUser, between, task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mcp_payloads import (  # noqa: E402
    CONTENT_TYPE,
    MCP_ACCEPT,
    initialize_body,
    initialized_notification,
    tools_call_body,
    tools_list_body,
)

MCP_PATH = os.environ.get("MCP_PATH", "/")
TOOLS_CALL_1K = tools_call_body()
JSON_HEADERS = {"Content-Type": CONTENT_TYPE}


class ToolsCallUser(FastHttpUser):
    """The wrk load: the same 1 KB tools/call, no think time."""

    weight = 1

    @task
    def tools_call(self) -> None:
        self.client.post(MCP_PATH, data=TOOLS_CALL_1K, headers=JSON_HEADERS, name="tools/call 1KB")


class McpSessionUser(FastHttpUser):
    """An MCP client session: initialize once, then mostly tools/call with some tools/list."""

    weight = 1
    wait_time = between(0.01, 0.1)

    def on_start(self) -> None:
        self.ids = itertools.count(1)
        self.headers = {"Content-Type": CONTENT_TYPE, "Accept": MCP_ACCEPT}
        with self.client.post(
            MCP_PATH, data=initialize_body(next(self.ids)), headers=self.headers, name="initialize", catch_response=True
        ) as response:
            session = response.headers.get("Mcp-Session-Id") if response.headers else None
            if session:
                self.headers["Mcp-Session-Id"] = session
            self._check(response)
        self.client.post(
            MCP_PATH, data=initialized_notification(), headers=self.headers, name="notifications/initialized"
        )

    @task(1)
    def tools_list(self) -> None:
        self._call(tools_list_body(next(self.ids)), "tools/list")

    @task(5)
    def tools_call(self) -> None:
        self._call(tools_call_body(request_id=next(self.ids)), "tools/call 1KB")

    def _call(self, body: str, name: str) -> None:
        with self.client.post(MCP_PATH, data=body, headers=self.headers, name=name, catch_response=True) as response:
            self._check(response)

    @staticmethod
    def _check(response) -> None:
        """Fail on a non-2xx status or a JSON-RPC error (a server-sent-events answer is accepted as is)."""
        if not 200 <= response.status_code < 300:
            response.failure(f"HTTP {response.status_code}")
            return
        if "json" not in (response.headers.get("Content-Type") or ""):
            response.success()
            return
        try:
            message = json.loads(response.text or "null")
        except ValueError:
            response.failure("response is not JSON")
            return
        if isinstance(message, dict) and "error" in message:
            response.failure(f"JSON-RPC error: {message['error']}")
        else:
            response.success()
