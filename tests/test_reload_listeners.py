"""The listening sockets around a reload, as nginx's master keeps them (real processes: `gateway start`, admin
`reload`): an address the new config drops is closed at once, one it keeps or adds stays open for its workers
whatever an older generation does, and what a failed reload opened is closed again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import free_port
from e2e_helpers import (
    GatewayNode,
    HoldingBackend,
    admin_now,
    answering_itself,
    becomes_true,
    blocking_get,
    descendants_of,
    process_name,
    request_in_flight,
    start_daemonised,
)


@pytest.fixture
def backend() -> Iterator[HoldingBackend]:
    b = HoldingBackend(hold_s=15.0)
    try:
        yield b
    finally:
        b.release()
        b.close()


@pytest.fixture
def make_gw(tmp_path: Path, backend: HoldingBackend) -> Iterator[Any]:
    made: list[GatewayNode] = []

    def make(**gateway: Any) -> GatewayNode:
        doc = {"services": [{"name": "s", "url": f"http://127.0.0.1:{backend.port}", "read_timeout": 30000,
                             "routes": [{"paths": ["/"]}]}]}
        gateway.setdefault("workers", 1)
        gateway.setdefault("status_listen", None)
        gw = GatewayNode(tmp_path / f"gw{len(made)}", doc, **gateway)
        made.append(gw)
        return gw

    try:
        yield make
    finally:
        for gw in made:
            if gw.root:
                gw.pids.update(descendants_of(gw.root))
            gw.cleanup()


def _rewrite(gw: GatewayNode, **gateway: Any) -> None:
    """Change keys of the gateway: block of gw's config file (to be reloaded)."""
    gw.doc["gateway"].update(gateway)
    gw.config.write_text(json.dumps(gw.doc, indent=1))


def _reload(gw: GatewayNode) -> dict[str, Any]:
    reply = admin_now(gw, "reload", timeout=30)
    assert reply.ok, reply.error
    return reply.result


def _get_within(port: int, timeout: float) -> str:
    """One GET on a new connection: "refused", "reset", "closed", "timeout" or the status code as text."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    with sock:
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = sock.recv(65536)
        except TimeoutError:
            return "timeout"
        except ConnectionResetError:
            return "reset"
    return head.split(b" ", 2)[1].decode() if head else "closed"


def test_an_address_a_reload_removes_stops_taking_connections_at_once(make_gw, backend):
    """nginx closes a listening socket the new config no longer has while it reloads, in the master
    (src/core/ngx_cycle.c:719, ngx_init_cycle: "close the unnecessary listening sockets": every old listening socket
    without `remain` is ngx_close_socket'ed), and each old worker closes its own copies as it starts to exit
    (src/os/unix/ngx_process_cycle.c:737, ngx_close_listening_sockets on ngx_quit). A client connecting to the
    removed address after the reload is refused at once (the root kept the slot until the old generation had
    drained: the kernel completed the handshake, no one accepted, and the client hung)."""
    gw = make_gw(drain_timeout=12)
    start_daemonised(gw)
    old_port = gw.port
    thread, codes = request_in_flight(old_port, backend)  # generation 1 drains it until the backend is released
    new_port = free_port()
    _rewrite(gw, listen=f"127.0.0.1:{new_port}")
    _reload(gw)
    assert blocking_get(new_port) == 200
    time.sleep(0.5)  # generation 1's worker has closed its copy of the old slot (it drains the held request)
    outcome = _get_within(old_port, 3.0)
    backend.release()
    thread.join(timeout=15)
    assert codes == [200]
    assert outcome == "refused", f"a connection to the address the reload removed: {outcome} (nginx: refused)"


def test_an_old_generation_ending_during_the_next_reload_keeps_the_new_addresses_slots(make_gw, backend):
    """README (Processes, Listener slots): "the root binds one SO_REUSEPORT socket per worker slot and keeps it until a
    stop begins; worker i inherits slot i. A replacement worker (after a crash) ... inherits the same socket", and
    each address is claimed by its gateway. nginx never closes a listening socket of the running cycle because an old
    worker exited (src/core/ngx_cycle.c:719 closes only the *old* cycle's sockets without `remain`, at reload).

    So generation G-1 ending while generation G+1 starts leaves G+1's new address alone, and a replacement of G+1's
    worker inherits its slots. (Generation G-1's end once closed the slots and the claim that reload had just bound,
    as if G were still serving: the replacement worker inherited closed or reused descriptor numbers, died at start
    again and again, and the root gave up.)"""
    gw = make_gw(drain_timeout=15)
    root = start_daemonised(gw)
    keeper = next((p for p in descendants_of(root) if process_name(p) == "gateway keeper"), None)
    assert keeper is not None
    thread, codes = request_in_flight(gw.port, backend)  # generation 1 drains it until the backend is released
    _reload(gw)  # generation 2, same config; generation 1 draining
    extra = free_port()
    _rewrite(gw, listen=[f"127.0.0.1:{gw.port}", f"127.0.0.1:{extra}"])
    replies: list[Any] = []
    os.kill(keeper, signal.SIGSTOP)  # generation 3's worker then waits its 2 s for the keeper's snapshot
    try:
        reloading = threading.Thread(target=lambda: replies.append(admin_now(gw, "reload", timeout=30)),
                                     daemon=True)
        reloading.start()
        time.sleep(0.8)  # the reload has bound the new address's slot and is starting generation 3
        backend.release()  # generation 1's last request ends: generation 1 stops while generation 3 starts
        thread.join(timeout=10)
        assert codes == [200]
        time.sleep(0.5)
    finally:
        os.kill(keeper, signal.SIGCONT)
    reloading.join(timeout=30)
    assert replies and replies[0].ok, replies
    assert replies[0].result["generation"] == 3
    assert blocking_get(extra) == 200  # generation 3's worker, from its own copy of the slot
    status = admin_now(gw, "status").result
    gen3 = next(c for c in status["tree"]["children"] if c["id"] == "workers@3")
    (worker,) = [w["pid"] for w in gen3["children"]]
    gw.pids.update(descendants_of(root))
    os.kill(worker, signal.SIGKILL)  # its replacement inherits the slots by descriptor number

    outcomes: list[str] = []

    def served_again() -> bool:
        outcomes.append(_get_within(extra, 1.0))
        return outcomes[-1] == "200" and _get_within(gw.port, 1.0) == "200"

    ok = becomes_true(served_again, 6, interval=0.2)
    gw.pids.update(descendants_of(root))
    assert ok, (f"after generation 3's worker was replaced, its new address answers {outcomes[-3:]}; "
                f"root alive: {os.path.exists(f'/proc/{root}') and process_name(root) != ''}")


def test_a_reload_whose_workers_fail_to_start_leaves_no_listener_on_its_new_address(make_gw, backend):
    """README (Reload): "A bad config is rejected with its messages, logged with them, and nothing changes"; a reload
    whose new workers fail to start answers "still serving generation G". nginx, when the new cycle fails, closes
    every listening socket it opened for it (src/core/ngx_cycle.c:938-947, ngx_init_cycle's `failed:` path:
    `ls = cycle->listening.elts; ... ngx_close_socket(ls[i].fd)`), so nothing listens on an address only the rejected
    config had."""
    gw = make_gw(drain_timeout=5)
    root = start_daemonised(gw)
    extra = free_port()
    _rewrite(gw, listen=[f"127.0.0.1:{gw.port}", f"127.0.0.1:{extra}"], worker_start_timeout_s=0.001)
    reply = admin_now(gw, "reload", timeout=30)
    gw.pids.update(descendants_of(root))
    assert not reply.ok and "still serving generation 1" in (reply.error or ""), reply
    assert blocking_get(gw.port) == 200  # generation 1 serves on
    outcome = _get_within(extra, 2.0)
    assert outcome == "refused", f"the address only the failed reload had: {outcome} (nginx: refused)"


def _many_gets(port: int, count: int, timeout: float) -> list[str]:
    """`count` GETs on new connections at once, each given `timeout`; their outcomes (see _get_within)."""
    out: list[str] = []
    threads = [threading.Thread(target=lambda: out.append(_get_within(port, timeout)), daemon=True)
               for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return out


def test_a_reload_to_more_workers_that_fails_to_start_leaves_every_connection_served(make_gw, backend):
    """README (Reload): a reload whose new workers fail to start answers "still serving generation G", and "nothing
    changes"; nginx's failed cycle closes every listening socket it opened (src/core/ngx_cycle.c:938-947), the
    reuseport clones included. So the second SO_REUSEPORT slot a reload from 1 to 2 workers binds on the served
    address is closed when generation 2 fails to start, and every new connection is served by generation 1 (the slot
    once stayed open: the kernel handed about half of the connections to a socket no worker accepted from)."""
    gw = make_gw(drain_timeout=5)
    root = start_daemonised(gw)
    _rewrite(gw, workers=2, worker_start_timeout_s=0.001)
    reply = admin_now(gw, "reload", timeout=30)
    gw.pids.update(descendants_of(root))
    assert not reply.ok and "still serving generation 1" in (reply.error or ""), reply
    outcomes = _many_gets(gw.port, 16, 2.0)
    assert outcomes.count("200") == 16, f"16 GETs to the served address after the failed reload: {sorted(outcomes)}"


# --- what a reload's listen keeps and refuses (one gateway for these tests: each reload leaves it serving) -----------


@pytest.fixture(scope="module")
def on_localhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNode]:
    """A one-worker gateway listening on `localhost:P`, its status server on 127.0.0.1:S; it answers 200 itself."""
    yield from answering_itself(tmp_path_factory.mktemp("respelled"), lambda p: f"localhost:{p}", 200)


def _listener_inode(port: int) -> str:
    """The inode of the one socket listening on 127.0.0.1:`port` (ss -e), which a reload keeping it leaves as it was."""
    out = subprocess.run(["ss", "-Hltne", f"src 127.0.0.1:{port}"], capture_output=True, text=True, timeout=10)
    [inode] = [f for line in out.stdout.splitlines() for f in line.split() if f.startswith("ino:")]
    return inode


def test_a_reload_spelling_a_listen_name_as_its_address_keeps_its_socket(on_localhost):
    """nginx's reload keeps a listening socket whose address is the same sockaddr, however the new config spells it
    (release-1.27.1 src/core/ngx_cycle.c:527-534: `ngx_cmp_sockaddr(...) == NGX_OK` -> `nls[n].fd = ls[i].fd; ...
    ls[i].remain = 1;`; the name was resolved at parse, ngx_parse_url). `listen localhost:P` reloaded as
    `127.0.0.1:P` was refused: "cannot listen on 127.0.0.1:P: address in use (by another program)"."""
    gw = on_localhost
    before = _listener_inode(gw.port)
    _rewrite(gw, listen=f"127.0.0.1:{gw.port}")
    _reload(gw)
    assert blocking_get(gw.port) == 200
    assert _listener_inode(gw.port) == before


def test_a_reload_listing_the_running_status_address_is_refused_naming_status_listen(on_localhost):
    """status_listen takes effect at a start (a reload keeps the running one, gateway.node.start_only.keep), and on a
    proxy address it is refused (in Kong nginx would share one socket, src/http/ngx_http.c:1440 at release-1.27.1;
    the gateway's status server has its own). A file moving status_listen and listing the running status address in
    `listen` passed the load's check of its own status_listen, then failed at the bind: "address in use (by another
    program); stop it (`ss -ltnp` names it)". It is refused naming the file and both fields, and nothing changes."""
    gw = on_localhost
    listen = gw.doc["gateway"]["listen"]
    _rewrite(gw, listen=[listen, f"127.0.0.1:{gw.status_port}"], status_listen=f"127.0.0.1:{free_port()}")
    reply = admin_now(gw, "reload", timeout=30)
    assert not reply.ok
    assert reply.error.startswith(f'config rejected, still serving the previous one:\n{gw.config}: '
                                  f'gateway.status_listen: "127.0.0.1:{gw.status_port}" (the running one'), reply.error
    assert f'(gateway.listen[1] "127.0.0.1:{gw.status_port}")' in reply.error, reply.error
    assert blocking_get(gw.port) == 200
    _rewrite(gw, listen=listen, status_listen=f"127.0.0.1:{gw.status_port}")  # as the gateway runs, for later tests
