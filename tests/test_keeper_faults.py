"""The state keeper lost, hung or restarted, under real processes (`gateway start`): what the workers keep doing.

A worker started while the state keeper hangs admits on its local share, as the workers that saw it go do.

README (Shared state): "Keeper lost (its connection closed: it exited; or no heartbeat for 0.75 s: it hangs): each
worker admits its local share (limit / workers) with `fault_tolerant: true`"; DESIGN: "Losing any child other than a
worker must not fail client requests". A worker that starts (a crashed worker's replacement, or a reload's new
generation) while the keeper hangs never heard a keeper, so it never declares one lost: every rate-limited request
waits the whole lease wait (1 s) for a grant nobody was asked for, and is then denied (429), for as long as the keeper
hangs, while the limit has all its room.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import trio
from backends import free_port
from test_shared_state import Backends, Gateway, config, http, route, thread


def _new_worker(gw: Gateway, old: int) -> int:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        generation = [c for name, c in gw.children().items() if name.startswith("workers@")][-1]
        ready = [w["pid"] for w in generation["children"] if w["pid"] and w["pid"] != old and w["state"] == "running"]
        if ready:
            gw.pids.update(ready)
            return ready[0]
        time.sleep(0.05)
    raise AssertionError("no replacement worker within 15 s")


async def test_a_worker_started_while_the_keeper_hangs_admits_on_its_local_share(tmp_path):
    with Backends("ok") as (backend,):
        doc = config(free_port(), [{"name": "rl", "url": f"http://127.0.0.1:{backend.port}"}], [route("rl", "rl")],
                     [{"name": "rate-limiting", "service": "rl", "config": {"minute": 1000, "limit_by": "service"}}])
        gw = Gateway(tmp_path, doc, workers=1)
        keeper = 0
        try:
            gw.start()
            assert (await http(gw.port, "/rl")).status == 200
            keeper = gw.keeper()["pid"]
            worker = gw.worker_pids()[0]
            os.kill(keeper, signal.SIGSTOP)  # the keeper hangs
            await trio.sleep(1.0)
            os.kill(worker, signal.SIGKILL)  # and the worker crashes: its replacement starts without a keeper
            await thread(_new_worker, gw, worker)
            await trio.sleep(1.0)
            replies = [await http(gw.port, "/rl") for _ in range(4)]
            statuses = Counter(r.status for r in replies)
            slowest = max(r.ended - r.started for r in replies)
            assert statuses == Counter({200: 4}), f"{dict(statuses)}; slowest answer {slowest:.2f}s"
            assert slowest < 0.5, f"a request waited {slowest:.2f}s for the hung keeper"
        finally:
            if keeper:
                os.kill(keeper, signal.SIGCONT)
            gw.stop()
