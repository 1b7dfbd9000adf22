#!/usr/bin/env python3
"""An MCP server (the `mcp` SDK, Streamable HTTP, stateful) for the demo and the MCP tests.

    mcp_demo_server.py --port 9001 --name alpha [--json-response] [--allowed-origin URL ...]

Tools:
  whoami                     the server's --name
  slow(steps, delay)         reports `steps` progress notifications `delay` seconds apart, then returns the name
  echo_headers               the HTTP request headers the server saw (Host, Origin, ...), as JSON text

Endpoint: POST/GET/DELETE /mcp. It serves both protocol eras: the 2025 initialize handshake with sessions
(`Mcp-Session-Id`) and the stateless 2026-07-28 per-request envelope. As the SDK does for a loopback host, it checks
`Host` (421 when foreign) and `Origin` (403 when foreign); `--allowed-origin` replaces the default origin list.
GET /health answers {"status": "healthy", "name": ...} for health checks.
"""

from __future__ import annotations

import argparse
import json
import logging

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse


def build(name: str) -> MCPServer:
    server = MCPServer(name, log_level="WARNING")

    @server.tool()
    def whoami() -> str:
        """The name of the server that answers."""
        return name

    @server.tool()
    async def slow(ctx: Context, steps: int = 3, delay: float = 1.0) -> str:
        """Report `steps` progress notifications `delay` seconds apart, then answer with the server's name."""
        for i in range(1, steps + 1):
            await anyio.sleep(delay)
            await ctx.report_progress(i, steps, f"step {i} of {steps} on {name}")
        return name

    @server.tool()
    def echo_headers(ctx: Context) -> str:
        """The HTTP headers of this request, as the server received them."""
        return json.dumps(dict(ctx.headers or {}))

    @server.custom_route("/health", methods=["GET"])
    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "healthy", "name": name})

    return server


def port(text: str) -> int:
    """A TCP port, 1-65535 (an argparse type)."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port of 1-65535, got {text!r}")
    return int(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=port, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default="mcp-server")
    p.add_argument("--json-response", action="store_true", help="answer POSTs with application/json, not SSE")
    p.add_argument("--allowed-origin", action="append", default=None,
                   help="an Origin the server accepts (repeatable; default: http://127.0.0.1:*, http://localhost:*)")
    p.add_argument("--certfile", help="serve HTTPS with this PEM certificate (chain)")
    p.add_argument("--keyfile", help="and this PEM key")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    security = None
    if args.allowed_origin is not None:
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=args.allowed_origin,
        )
    app = build(args.name).streamable_http_app(json_response=args.json_response, host=args.host,
                                               transport_security=security, session_idle_timeout=None)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=1,
                            ssl_certfile=args.certfile, ssl_keyfile=args.keyfile)
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
