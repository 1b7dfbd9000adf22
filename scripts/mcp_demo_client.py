#!/usr/bin/env python3
"""Talk to the demo through the gateway with the `mcp` SDK client.

    mcp_demo_client.py [--url http://127.0.0.1:8080/mcp] [--calls 10]

Session mode (the initialize handshake, `mode="legacy"`): every call reaches the server that answered initialize.
Stateless mode (the 2026-07-28 revision, the SDK's default): calls are balanced over all servers. Then `slow`
streams progress notifications through the gateway.
"""

from __future__ import annotations

import argparse
from collections import Counter

import trio
from mcp import Client


async def main(url: str, calls: int) -> None:
    async with Client(url, mode="legacy") as client:
        names = [(await client.call_tool("whoami", {})).content[0].text for _ in range(calls)]
        print(f"session ({client.protocol_version}), initialized by {client.server_info.name}: {Counter(names)}")

        async def progress(value: float, total: float | None, message: str | None) -> None:
            print(f"  progress {value:g}/{total:g}: {message}")

        result = await client.call_tool("slow", {"steps": 3, "delay": 0.5}, progress_callback=progress)
        print(f"  slow answered by {result.content[0].text}")
    async with Client(url) as client:
        names = [(await client.call_tool("whoami", {})).content[0].text for _ in range(calls)]
        print(f"stateless ({client.protocol_version}): {Counter(names)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080/mcp")
    p.add_argument("--calls", type=int, default=10)
    args = p.parse_args()
    trio.run(main, args.url, args.calls)
