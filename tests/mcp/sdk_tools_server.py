"""An `mcp` SDK server (MCPServer, Streamable HTTP) with the tools `size`, `search` and `delete`, for tests that need
the SDK's own 2026-07-28 rules on the server side: its header check, its 4 MiB body limit, its cache hints.

Run as a script (`--port`, and `--public-tools` for tools/list results marked `cacheScope: "public"`, ttl 60 s);
tests start it with `sdk_tools_server`, which stops it by pid.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sdk_tools_server(*extra: str) -> Iterator[int]:
    """This script as a subprocess on a free loopback port (yielded), stopped by pid at the end."""
    from backends import free_port, stop_process, wait_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=60.0)  # the SDK's imports take seconds on a busy machine
        yield port
    finally:
        stop_process(proc)


def main() -> None:
    import uvicorn
    from mcp.server.caching import CacheHint
    from mcp.server.mcpserver import MCPServer

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--public-tools", action="store_true", help="tools/list results are cacheScope public, 60 s")
    args = parser.parse_args()
    hints = {"tools/list": CacheHint(ttl_ms=60000, scope="public")} if args.public_tools else None
    server = MCPServer("srv", log_level="WARNING", cache_hints=hints)

    @server.tool()
    def size(s: str) -> int:
        """The length of s."""
        return len(s)

    @server.tool()
    def search() -> str:
        return "search"

    @server.tool()
    def delete() -> str:
        return "deleted"

    app = server.streamable_http_app(host="127.0.0.1", session_idle_timeout=None)
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning",
                                  timeout_graceful_shutdown=1)).run()


if __name__ == "__main__":
    main()
