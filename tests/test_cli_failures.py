"""The `gateway` command's failure modes, as an nginx or Kong operator meets them, with real processes.

Each failure says what happened, where, and what to do, in a line or a few: never a traceback, never a hang. The exit
status tells a script what happened: 1, it did not work; 2, the config is at fault; 130, Ctrl-C (as a shell reports
it; Python may instead end itself by SIGINT, which a shell reports as 130 too).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import GatewayNode

from gateway.bus.admin_client import admin_call
from gateway.bus.admin_protocol import AdminReply
from gateway.cli import main
from gateway.node import control
from gateway.node.control import ADMIN_TIMEOUT_S
from gateway.node.locate import NotRunning, running_pid

REPO = Path(__file__).resolve().parent.parent
SERVICES = {"services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}]}
INTERRUPTED = (130, -signal.SIGINT)
LONG_PATH = "ipc://run/" + "x" * 120 + ".sock"


def gateway_node(workdir: Path, **gateway: Any) -> GatewayNode:
    return GatewayNode(workdir, SERVICES, workers=1, **gateway)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[GatewayNode]:
    gw = gateway_node(tmp_path / "gw")
    try:
        yield gw
    finally:
        gw.cleanup()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNode]:
    """One gateway started for the tests that need one running and leave it as they found it."""
    gw = gateway_node(tmp_path_factory.mktemp("running"))
    try:
        out = gw.cli("start", "--config", str(gw.config), timeout=40)
        assert out.returncode == 0, out.stderr + gw.log()[-2000:]
        yield gw
    finally:
        gw.cleanup()


def cli_start_up_s(cwd: Path) -> float:
    """The seconds a CLI command that never calls the admin endpoint takes here and now (`gateway status` with a pid
    file that does not exist: the interpreter's start and the CLI's imports, on this host under its present load): the
    reference an "at once" answer is held to (a fixed bound of a few seconds failed on a busy host)."""
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "gateway", "status", "--pid-file", "no-such.pid"], cwd=cwd,
                         capture_output=True, text=True, timeout=30)
    took = time.monotonic() - began
    assert (out.returncode, out.stderr.strip()) == (1, "gateway: not running (no pid file no-such.pid)"), out.stderr
    return took


# An "at once" answer takes at most the reference (the slower of one taken before and one after it) and this much
# more; the failures these bounds guard against waited out the admin call's timeout (ADMIN_TIMEOUT_S, 5 s) on top.
AT_ONCE_MARGIN_S = ADMIN_TIMEOUT_S / 2


def status_of(gw: GatewayNode) -> dict[str, Any]:
    """What `gateway status --json` prints, asked from this process (the command itself is tested below)."""
    reply = admin_call(f"ipc://{gw.dir}/run/admin.sock", "status", None, timeout=ADMIN_TIMEOUT_S)
    assert reply.ok, reply.error
    return reply.result


def rewrite(gw: GatewayNode, **gateway: Any) -> None:
    gw.doc["gateway"].update(gateway)
    gw.config.write_text(json.dumps(gw.doc))


def start(gw: GatewayNode, *args: str) -> subprocess.CompletedProcess[str]:
    return gw.cli("start", "--config", str(gw.config), *args, timeout=30)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def wait_for_text(path: Path, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"{text!r} not in {path} within {timeout}s"
        time.sleep(0.01)


def stop_pids(log: str) -> None:
    """SIGKILL whichever gateway process its log names is still alive (and still a gateway: pids are reused)."""
    for pid in {int(pid) for pid in re.findall(r"(?:os_pid=|pid )(\d+)", log)}:
        try:
            is_gateway = b"gateway" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if alive(pid) and is_gateway:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---- start ---------------------------------------------------------------------------------------------------------


def test_a_pid_file_directory_that_cannot_be_made_is_named_with_its_setting_at_once(node):
    (node.dir / "blocker").write_text("a file where the pid file's directory should be\n")
    rewrite(node, pid_file="blocker/gateway.pid")
    out = start(node)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"gateway: cannot start: {node.config}: gateway.pid_file: {node.dir / 'blocker'} is not a directory; make it "
        "a directory this user can write to, or choose another path for gateway.pid_file"]


@pytest.mark.parametrize("key", ["pid_file", "log_file"])
def test_check_config_refuses_a_pid_or_log_file_that_is_a_directory_as_start_does(tmp_path, capsys, key):
    """nginx release-1.27.1 src/core/ngx_cycle.c:320-325 and 363-390: `nginx -t` opens the pid file and every log file
    and fails on one it cannot open (`open() "<path>" failed (21: Is a directory)`); kong/cmd/check.lua:6 runs the
    conf_loader start runs. check-config said OK to a file that `gateway start` then refused; now both say it in the
    same line, naming the setting."""
    gw = gateway_node(tmp_path / "gw", **{key: str(tmp_path)})
    line = (f"{gw.config}: gateway.{key}: {tmp_path}: is a directory; choose another path for gateway.{key}")
    assert main(["check-config", str(gw.config)]) == 2
    assert capsys.readouterr().err.splitlines() == [line]
    config = control.load_validated(str(gw.config))[1]
    assert control.startup_problem(str(gw.config), config.gateway) == (line, 1)


def test_a_pid_file_the_root_cannot_write_once_started_is_one_line_naming_the_setting(node):
    """nginx release-1.27.1 src/core/ngx_cycle.c:1037-1043 (ngx_create_pidfile): a pid file that cannot be written is
    one line, `open() "<path>" failed (<errno>: <reason>)`, and nginx exits. The root writes its pid file last, once
    its children run; failing there (a directory changed under it since the checks) raised out of its nursery, and
    `gateway start` printed a line of the ExceptionGroup traceback's box as the reason."""
    code = textwrap.dedent(f"""
        import sys
        from gateway.node import root
        def refused(path):
            raise PermissionError(13, "Permission denied", path)
        root._write_pid = refused
        from gateway.cli import main
        sys.exit(main(["start", "--foreground", "--config", {str(node.config)!r}, "--workers", "1"]))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=node.dir, capture_output=True, text=True, timeout=40,
                         start_new_session=True)
    stop_pids(out.stderr)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.splitlines()[-1] == (f"gateway: cannot start: {node.config}: gateway.pid_file: cannot write "
                                           "run/gateway.pid: Permission denied")


def test_a_listen_address_this_machine_lacks_names_the_file_and_the_setting(node):
    """nginx release-1.27.1 src/core/ngx_connection.c (ngx_open_listening_sockets): `bind() to <addr> failed (99:
    Cannot assign requested address)`, nginx naming the address of its `listen`. The start said only "cannot listen
    on 192.0.2.1:P: Cannot assign requested address", naming neither the file nor gateway.listen."""
    with socket.socket() as probe:
        try:
            probe.bind(("192.0.2.1", 0))
            pytest.skip("this machine has 192.0.2.1 (TEST-NET-1)")
        except OSError:
            pass
    rewrite(node, listen=f"192.0.2.1:{node.port}", status_listen=None)
    out = start(node)
    assert out.returncode == 1
    assert (f"gateway: cannot start: {node.config}: gateway.listen: cannot listen on 192.0.2.1:{node.port}: Cannot "
            "assign requested address (no interface of this machine has that address: `ip addr` lists them); change "
            "gateway.listen") in out.stderr, out.stderr


@pytest.mark.parametrize("key", ["admin", "bus"])
def test_a_socket_path_too_long_for_unix_is_refused_at_once_with_exit_2(node, key):
    rewrite(node, **{key: LONG_PATH})
    out = start(node)  # the admin one used to hang until start's 60 s deadline (the root never finished failing)
    assert out.returncode == 2
    assert f"gateway: cannot start: {node.config}: gateway.{key}: the socket path " in out.stderr
    assert f"a Unix socket path holds at most 107): use a shorter one, such as ipc://run/{key}.sock" in out.stderr
    assert "Traceback" not in out.stderr + node.log()


def test_check_config_refuses_a_socket_path_too_long_for_unix(node):
    rewrite(node, admin=LONG_PATH)
    out = node.cli("check-config", str(node.config), timeout=30)
    assert out.returncode == 2
    assert out.stderr.startswith(f"{node.config}: gateway.admin: the socket path {node.dir}/run/xxx")


def test_a_status_port_in_use_names_the_address_the_setting_and_what_to_do(node):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", node.status_port))
        squatter.listen()
        out = start(node)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"gateway: cannot start: {node.config}: gateway.status_listen: cannot listen on 127.0.0.1:{node.status_port}: "
        "Address already in use; stop what listens there (`ss -ltnp` names it), or change gateway.status_listen"]


def test_a_listen_port_in_use_says_what_to_do(node):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", node.port))
        squatter.listen()
        out = start(node)
    assert out.returncode == 1
    assert (f"cannot listen on 127.0.0.1:{node.port}: address in use (by another program); stop it (`ss -ltnp` names "
            "it), or change gateway.listen") in out.stderr


def test_check_config_refuses_a_client_body_temp_path_that_cannot_be_created_as_start_does(tmp_path, capsys):
    """nginx -t creates the temporary paths as a start does: ngx_init_cycle calls ngx_create_paths whatever the mode
    (nginx release-1.27.1 src/core/ngx_cycle.c:354), which fails on any mkdir error but EEXIST with one line
    (src/core/ngx_file.c:607-613, `mkdir() "<path>" failed`); Kong's nginx_http_client_body_temp_path is that path.
    check-config passed a directory whose parent is missing, and every worker then died at start making it. Now
    check-config (which creates nothing) and start refuse it in the same line, naming the setting."""
    missing = tmp_path / "no" / "such" / "bodies"
    gw = gateway_node(tmp_path / "gw", client_body_temp_path=str(missing))
    line = (f"{gw.config}: gateway.client_body_temp_path: cannot create the directory {missing} (No such file or "
            "directory); create it, or choose another path")
    assert main(["check-config", str(gw.config)]) == 2
    assert capsys.readouterr().err.splitlines() == [line]
    assert not (tmp_path / "no").exists()
    config = control.load_validated(str(gw.config))[1]
    assert control.startup_problem(str(gw.config), config.gateway) == (line, 1)


def test_a_bus_address_in_use_names_gateway_bus_and_the_address_without_a_traceback(node):
    """A start that cannot bind what the config names fails with one line naming it, as nginx's `bind() to <addr>
    failed` (release-1.27.1 src/core/ngx_connection.c:607-616) and this gateway's own for gateway.listen. For a tcp
    gateway.bus, which the state keeper binds, start said "workers failed to start: failed to start child 'keeper':
    ProcessStartError('exited before ready: exit code 1')" and the log held the keeper's ZMQError traceback."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        rewrite(node, bus=f"tcp://127.0.0.1:{port}", status_listen=None)
        out = start(node)
    assert out.returncode == 1
    assert out.stderr.startswith(
        f"gateway: cannot start: {node.config}: gateway.bus: cannot bind tcp://127.0.0.1:{port}: address in use; stop "
        "what listens there (`ss -ltnp` names it), or change gateway.bus (see "), out.stderr
    assert "Traceback" not in node.log(), node.log()[-3000:]


def test_a_reload_whose_workers_cannot_make_the_body_temp_path_says_their_line_without_a_traceback(running):
    """A worker that cannot make gateway.client_body_temp_path (a reload's new one) said it in a Python traceback in
    the log, and the reload said only "failed to start child 'worker-1': ProcessStartError('exited before ready:
    exit code 1')". nginx's reload fails with one [emerg] line naming the directory (release-1.27.1
    src/core/ngx_file.c:610-612). Now the worker's one line is the log's and the reload's, and the running
    generation keeps serving."""
    missing = running.dir / "no" / "such" / "bodies"
    changed = running.dir / "bodies.yaml"
    changed.write_text(json.dumps({**running.doc, "gateway": {**running.doc["gateway"],
                                                              "client_body_temp_path": str(missing)}}))
    logged = len(running.log())
    out = running.cli("reload", "--config", str(changed))
    why = (f"gateway.client_body_temp_path: cannot create the directory {missing} (No such file or directory); "
           "create it, or choose another path")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"gateway: reload failed: the new workers failed to start ({changed}: {why}); still serving generation 1"]
    log = running.log()[logged:]
    assert "ERROR gateway.worker" in log and f"worker cannot start: {why}" in log, log
    assert "Traceback" not in log, log
    assert status_of(running)["generation"] == 1


def test_ctrl_c_while_a_foreground_start_is_starting_exits_130_and_leaves_no_process(node):
    output = node.dir / "foreground.log"
    with output.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "start", "--foreground", "--config",
                                 str(node.config), "--workers", "8"], cwd=node.dir, stdout=sink, stderr=sink)
    try:
        wait_for_text(output, "child='zygote'")  # the root is starting its tree; ready comes 100+ ms later
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) in INTERRUPTED
        text = output.read_text()
        assert "gateway: cannot start: interrupted before it was ready" in text
        assert "Traceback" not in text
        children = [int(pid) for pid in re.findall(r"os_pid=(\d+)", text)]
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        stop_pids(output.read_text())


def test_ctrl_c_while_start_waits_stops_the_gateway_it_was_starting(node):
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "start", "--config", str(node.config)], cwd=node.dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_text(node.dir / "run" / "gateway.log", "child='zygote'")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130
        match = re.fullmatch(r"gateway: start interrupted; stopped the gateway that was starting \(pid (\d+)\)\n",
                             stderr)
        assert match, stderr
        assert not alive(int(match[1]))
        assert node.cli("status").returncode == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        stop_pids(node.log())


def test_a_second_start_with_the_same_pid_file_is_refused_and_says_what_to_do(running):
    out = start(running)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"gateway: cannot start: already running (pid {running.root_pid()}, pid file run/gateway.pid); `gateway stop` "
        "it first, or give this one its own gateway.pid_file, listen and admin"]


def test_workers_that_is_not_a_number_is_named_plainly(running):
    out = running.cli("start", "--config", str(running.config), "--workers", "abc")
    assert out.returncode == 2
    assert "argument --workers/-w: expected a whole number of at least 1, got 'abc'" in out.stderr


# ---- stop, status, reload, admin ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_stop_timeout_must_be_seconds(tmp_path, value):
    out = subprocess.run([sys.executable, "-m", "gateway", "stop", "--timeout", value], cwd=tmp_path,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert f"argument --timeout: expected seconds (a number >= 0), got '{value}'" in out.stderr


def test_stop_never_signals_an_unrelated_process_its_pid_file_names(tmp_path):
    (tmp_path / "run").mkdir()
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "run" / "gateway.pid").write_text(f"{bystander.pid}\n")
        out = subprocess.run([sys.executable, "-m", "gateway", "stop"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 1
        assert out.stderr.strip() == (f"gateway: not running (run/gateway.pid names pid {bystander.pid}, which is not "
                                      "a gateway (the pid was reused); removed the stale pid file)")
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(timeout=10)


@pytest.mark.parametrize("options", [("--log-level", "WARNING"), ("--log-level=ERROR",), ("--log", "DEBUG")])
def test_stop_signals_a_root_started_with_a_log_level(tmp_path, options):
    """nginx release-1.27.1 src/core/ngx_cycle.c:1083-1131 (ngx_signal_process) and kong/cmd/utils/kill.lua (`kill
    %s `cat %s``) signal the pid the pid file holds, however the server was started. `gateway stop` took a root for
    a reused pid unless `start` came right after `gateway`: one started `gateway --log-level WARNING start
    --foreground` (systemd's and a container's form, and the only way to set the level) was "not a gateway (the pid
    was reused)", its pid file was removed, and it ran on. argparse takes `--log-level=L` and a prefix such as
    `--log L` too."""
    script = tmp_path / "gateway"
    script.write_text(FAKE_ROOT)
    fake = subprocess.Popen(["/bin/sh", str(script), *options, "start", "--foreground"], start_new_session=True)
    try:
        pid_file = tmp_path / "gateway.pid"
        pid_file.write_text(f"{fake.pid}\n")
        out = subprocess.run([sys.executable, "-m", "gateway", "stop", "--pid-file", str(pid_file), "--timeout", "5"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert (out.returncode, out.stdout.strip()) == (0, f"gateway stopped (pid {fake.pid})"), out.stderr
    finally:
        os.killpg(fake.pid, signal.SIGKILL)
        fake.wait()


def test_stop_never_takes_another_gateway_command_for_a_root(tmp_path):
    """The pid-reuse check reads past the global options to the command: a `gateway --log-level WARNING status`
    holding the pid the pid file names is no root, and is not signalled."""
    script = tmp_path / "gateway"
    script.write_text(FAKE_ROOT)
    bystander = subprocess.Popen(["/bin/sh", str(script), "--log-level", "WARNING", "status"], start_new_session=True)
    try:
        pid_file = tmp_path / "gateway.pid"
        pid_file.write_text(f"{bystander.pid}\n")
        out = subprocess.run([sys.executable, "-m", "gateway", "stop", "--pid-file", str(pid_file)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=30)
        assert (out.returncode, out.stderr.strip()) == (1, (
            f"gateway: not running ({pid_file} names pid {bystander.pid}, which is not a gateway (the pid was "
            "reused); removed the stale pid file)"))
        assert bystander.poll() is None
    finally:
        os.killpg(bystander.pid, signal.SIGKILL)
        bystander.wait()


@pytest.mark.parametrize("text", ["0", "00", "-1", "4194305", "99999999999999999999999"])
def test_a_pid_file_naming_no_possible_pid_is_stale(tmp_path, text):
    """0 and -1 are "my process group" and "every process" to kill(2) (stop signalled its own caller's group); a
    number past Linux's highest pid made os.kill raise OverflowError."""
    pid_file = tmp_path / "gateway.pid"
    pid_file.write_text(text + "\n")
    with pytest.raises(NotRunning, match=f"^not running \\({re.escape(str(pid_file))} holds no pid; removed the st"):
        running_pid(str(pid_file))
    assert not pid_file.exists()


def test_stop_with_a_pid_file_naming_pid_0_signals_nobody(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "gateway.pid").write_text("0\n")
    out = subprocess.run([sys.executable, "-m", "gateway", "stop"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=30, start_new_session=True)  # (a group of its own: the bug's SIGTERM stays there)
    assert (out.returncode, out.stderr.strip()) == (
        1, "gateway: not running (run/gateway.pid holds no pid; removed the stale pid file)")


def test_status_with_the_admin_socket_gone_says_so_at_once(running):
    sock = running.dir / "run" / "admin.sock"
    reference = cli_start_up_s(running.dir)
    sock.rename(sock.with_suffix(".moved"))
    try:
        began = time.monotonic()
        out = running.cli("status", timeout=30)
        took = time.monotonic() - began
    finally:
        sock.with_suffix(".moved").rename(sock)
    assert out.returncode == 1
    assert out.stderr.startswith(f"gateway: pid {running.root_pid()} is running, but its admin socket {sock} does "
                                 "not exist; pass the --admin ipc://PATH it was started with")
    reference = max(reference, cli_start_up_s(running.dir))
    # not the admin call's 5 s timeout
    assert took < reference + AT_ONCE_MARGIN_S, f"it took {took:.1f}s, a command that calls no admin {reference:.1f}s"


def test_status_through_the_admin_endpoint_alone_finds_the_gateway_from_another_directory(running, tmp_path):
    """`--admin ipc://PATH` names the gateway (README "CLI": WHICH): the working directory's run/gateway.pid, which
    does not exist there, is not consulted; an endpoint where nothing answers says so, not "not running"."""
    out = subprocess.run([sys.executable, "-m", "gateway", "status", "--admin", f"ipc://{running.dir}/run/admin.sock"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f"pid {running.root_pid()}" in out.stdout
    nobody = subprocess.run([sys.executable, "-m", "gateway", "status", "--admin", f"ipc://{tmp_path}/none.sock"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert nobody.returncode == 1
    assert nobody.stderr.splitlines() == [
        f"gateway: not running at ipc://{tmp_path}/none.sock (its socket {tmp_path}/none.sock does not exist)"]


def test_an_admin_endpoint_that_is_not_ipc_is_one_line_not_a_traceback(running):
    out = running.cli("status", "--admin", "nonsense")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "gateway: cannot reach the admin endpoint nonsense: Invalid argument (addr='nonsense'); it takes ipc://PATH"]


def test_reload_from_a_file_that_does_not_check_keeps_the_running_config(running):
    broken = running.dir / "broken.yaml"
    broken.write_text("services: [\n")
    out = running.cli("reload", "--config", str(broken))
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"{broken}:2:1: YAML syntax error: expected the node content, but found '<stream end>'",
        f"gateway: not reloaded: {broken} does not check (a running gateway keeps serving the config it has); fix "
        "it, then reload again"]
    status = status_of(running)
    assert (status["generation"], status["config"]) == (1, str(running.config))


# ---- check-config (already right: kept as a guard) ----------------------------------------------------------------


@pytest.mark.parametrize(("content", "expected"), [
    (None, "cannot read the config file: Is a directory"),
    (b"\x00\x01binary", "YAML syntax error: the character U+0000"),
    (b"[" * 10000 + b"]" * 10000, "YAML error: nested more than 64 levels deep"),
    (b'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
     + b"".join(b"%c: &%c [%s]\n" % (c, c, b",".join([b"*%c" % (c - 1)] * 9)) for c in range(ord("b"), ord("j"))),
     "unknown top-level key"),
], ids=["directory", "binary", "deeply-nested", "alias-bomb"])
def test_check_config_on_hostile_files_is_a_few_lines_and_exit_2(tmp_path, content, expected):
    path = tmp_path / "config.yml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    out = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 2
    assert expected in out.stderr and str(path) in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) <= 9


@pytest.mark.parametrize("args", [("check-config", "fifo"), ("start", "--config", "fifo"),
                                  ("status", "--config", "fifo"), ("reload", "--config", "fifo"),
                                  ("stop", "--config", "fifo")])
def test_a_config_that_is_a_fifo_is_refused_at_once_naming_the_file(tmp_path, args):
    """Opening a FIFO waits for a writer for ever: a config path that is not a regular file (nor a directory, which
    read_text names) is refused before it is opened, one line and exit 2, as any unreadable config."""
    os.mkfifo(tmp_path / "fifo")
    out = subprocess.run([sys.executable, "-m", "gateway", *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines[0] == "fifo: cannot read the config file: not a regular file (a FIFO); name the YAML file itself"
    assert lines[1:] == ([] if args[0] != "reload" else [  # (reload adds what it does about a file that does not check)
        "gateway: not reloaded: fifo does not check (a running gateway keeps serving the config it has); fix it, "
        "then reload again"])


def test_a_pid_file_that_is_a_fifo_is_refused_at_once_naming_the_file(tmp_path):
    """The pid file is opened without blocking and refused unless it is a regular file: one line, exit 1."""
    os.mkfifo(tmp_path / "fifo")
    for command in ("status", "stop"):
        out = subprocess.run([sys.executable, "-m", "gateway", command, "--pid-file", "fifo"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=10)
        assert out.returncode == 1
        assert out.stderr.splitlines() == ["gateway: cannot read the pid file fifo: not a regular file"]


def test_a_forced_stop_ends_a_gateway_draining_a_request_within_seconds(tmp_path):
    """`stop --timeout T`: past T the second SIGTERM kills what still drains, and the root exits (not left to the
    command's last resort, a SIGKILL of the root after 10 s)."""
    silent = socket.create_server(("127.0.0.1", 0))  # a backend that takes the request and never answers
    silent.settimeout(20)
    doc = {"services": [{"name": "s", "url": f"http://127.0.0.1:{silent.getsockname()[1]}", "read_timeout": 60000,
                         "routes": [{"paths": ["/"]}]}]}
    gw = GatewayNode(tmp_path / "gw", doc, workers=1, drain_timeout=60)
    client = None
    try:
        out = gw.cli("start", "--config", str(gw.config), timeout=40)
        assert out.returncode == 0, out.stderr + gw.log()[-2000:]
        client = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        upstream, _ = silent.accept()  # the request is in flight
        root = gw.root_pid()
        started = time.monotonic()
        out = gw.cli("stop", "--timeout", "0.5", timeout=30)
        assert (out.returncode, out.stdout.strip()) == (0, f"gateway stopped (pid {root}), forced"), out.stderr
        took = time.monotonic() - started
        assert took < 8, f"the stop took {took:.1f}s"  # (its last resort, a SIGKILL of the root, comes after 10.5 s)
        upstream.close()
    finally:
        if client is not None:
            client.close()
        silent.close()
        gw.cleanup()


def test_stop_never_signals_a_process_that_only_mentions_gateway_in_its_arguments(tmp_path: Path) -> None:
    """A stale pid file naming `tail -f run/gateway.log` (a reused pid): only a `gateway start` / `run` counts (an
    operations review: stop killed the tail and said "gateway stopped")."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "gateway.log").write_text("an old log\n")
    bystander = subprocess.Popen(["tail", "-f", "run/gateway.log"], cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        (tmp_path / "run" / "gateway.pid").write_text(f"{bystander.pid}\n")
        out = subprocess.run([sys.executable, "-m", "gateway", "stop", "--timeout", "2"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=30)
        assert bystander.poll() is None, f"`gateway stop` killed `tail -f run/gateway.log`: {out.stdout}"
        assert out.returncode == 1
        assert f"names pid {bystander.pid}, which is not a gateway" in out.stderr
    finally:
        bystander.kill()
        bystander.wait(timeout=10)


MEMORY_LIMIT = 2 << 30  # bytes of address space for the command: the test must not take the machine's memory


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.mark.parametrize("name", ["huge.yaml", "/dev/zero"])
def test_check_config_refuses_a_file_too_large_to_be_a_config_in_one_line(tmp_path: Path, name: str) -> None:
    """A 4 GiB file or /dev/zero: one line naming the file, not a MemoryError (an operations review)."""
    path = tmp_path / name
    if name == "huge.yaml":
        with open(path, "wb") as f:
            f.truncate(4 << 30)  # sparse: a 4 GiB file (a disk image, a core dump) costs no disk
    out = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, preexec_fn=_limited)
    assert "Traceback" not in out.stderr, out.stderr[-600:]
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and str(path) in out.stderr


def test_a_reload_from_an_emptied_config_file_keeps_the_running_config(running: GatewayNode) -> None:
    """A file emptied by a deploy tool: refused, the running config keeps serving (an operations review)."""
    text = running.config.read_text()
    running.config.write_text("")
    try:
        out = running.cli("reload")
    finally:
        running.config.write_text(text)
    status = status_of(running)
    assert status["generation"] == 1, "the empty file was loaded: the gateway now has no routes"
    assert out.returncode == 2 and str(running.config) in out.stderr


@pytest.fixture(params=["admin", "bus"])
def sharing(request: pytest.FixtureRequest, running: GatewayNode,
            tmp_path: Path) -> Iterator[tuple[str, GatewayNode, GatewayNode]]:
    """The running gateway, and a second with its own listen, status port and pid file and the running one's admin
    (or bus) endpoint."""
    second = gateway_node(tmp_path / "second", **{request.param: f"ipc://{running.dir}/run/{request.param}.sock"})
    try:
        yield request.param, running, second
    finally:
        second.cleanup()


def test_a_second_start_on_the_ipc_endpoint_of_a_running_gateway_is_refused(sharing):
    """Its socket file was taken for a stale one and replaced: `status` of the first then answered for the second
    (an operations review). A live endpoint is refused, naming the gateway that holds it."""
    setting, first, second = sharing
    first_pid = first.root_pid()
    out = second.cli("start", "--config", str(second.config), timeout=40)
    assert status_of(first)["pid"] == first_pid, "the first gateway's admin socket now answers for another"
    assert out.returncode == 1
    assert f"gateway.{setting}" in out.stderr and f"gateway pid {first_pid}" in out.stderr


@pytest.fixture
def roommates(running: GatewayNode, tmp_path: Path) -> Iterator[tuple[GatewayNode, GatewayNode]]:
    """The running gateway, and a second with its own listen, status, pid file, admin and bus: its pid file in the
    running one's run directory."""
    run = running.dir / "run"
    second = gateway_node(tmp_path / "b", pid_file=f"{run}/b.pid", admin=f"ipc://{run}/b-admin.sock",
                          bus=f"ipc://{run}/b-bus.sock", log_file=f"{run}/b.log")
    try:
        yield running, second
    finally:
        second.root = int((run / "b.pid").read_text()) if (run / "b.pid").exists() else None
        second.cleanup()


def test_a_second_gateway_in_a_run_directory_in_use_is_refused(roommates):
    """Its config snapshots there have fixed names: a second gateway overwrote the first one's, and removed them as
    it stopped, so the first could not restart a worker and exited (an operations review). Kong: "Kong is already
    running in <prefix>"."""
    first, second = roommates
    out = second.cli("start", "--config", str(second.config), timeout=40)
    assert out.returncode == 1
    first_pid = first.root_pid()
    assert f"is in use by gateway pid {first_pid}" in out.stderr, out.stderr



# ---- a root the command may not signal, or one that is gone --------------------------------------------------------

FAKE_ROOT = "#!/bin/sh\nsleep 20\n"  # run as `/bin/sh DIR/gateway start`: what locate.is_gateway takes for a root


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_stop_by_a_user_who_may_not_signal_the_root_is_a_clear_error_not_a_traceback():
    """kong/cmd/utils/nginx_signals.lua:66-68 (send_signal): `local code = kill.kill(kong_conf.nginx_pid, "-s " ..
    signal); if code ~= 0 then return nil, "could not send signal"`; nginx (release-1.27.1)
    src/os/unix/ngx_process.c:638-643 (ngx_os_signal_process) logs "kill(%P, %d) failed". A gateway started by root
    (or a service user) and `gateway stop` run by an operator's own account: kill(2) fails with EPERM, and the
    command said so with a Python traceback."""
    work = Path(tempfile.mkdtemp(prefix="gw-stop-perm-"))
    os.chmod(work, 0o755)
    script = work / "gateway"
    script.write_text(FAKE_ROOT)
    script.chmod(0o755)
    fake = subprocess.Popen(["/bin/sh", str(script), "start"], start_new_session=True)
    try:
        pid_file = work / "gateway.pid"
        pid_file.write_text(f"{fake.pid}\n")
        pid_file.chmod(0o644)
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                              "gateway", "stop", "--pid-file", str(pid_file), "--timeout", "1"],
                             cwd=work, capture_output=True, text=True, timeout=30)
        assert (out.returncode, out.stderr.splitlines()) == (1, [
            f"gateway: could not send signal to pid {fake.pid} (named by {pid_file}): permission denied; run "
            "`gateway stop` as the user the gateway runs as (or as root)"])
        assert fake.poll() is None
    finally:
        os.killpg(fake.pid, signal.SIGKILL)
        fake.wait()
        shutil.rmtree(work, ignore_errors=True)


def test_stop_of_a_root_that_exits_before_the_signal_says_it_is_not_running(tmp_path, monkeypatch, capsys):
    """kong/cmd/utils/nginx_signals.lua (send_signal): a kill that fails is "could not send signal", an error, not a
    crash. The root may exit between the pid file's check and the signal (another stop, a crash): kill(2) fails with
    ESRCH, and `stop` says it is not running (exit 1, as for any gateway not running), not a traceback."""
    def gone(pid: int, signum: int) -> None:
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(control, "_running_pid", lambda pid_file: 4242)
    monkeypatch.setattr(control.os, "kill", gone)
    assert control.stop(None, 1.0, str(tmp_path / "gateway.pid")) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"gateway: not running (pid 4242, named by {tmp_path}/gateway.pid, exited before it could be signalled)"]


@pytest.mark.parametrize(("leftover", "problem"), [("stale socket", "refuses connections: nothing listens on it"),
                                                   ("directory", "is a directory, not a socket")],
                         ids=["stale-socket", "directory"])
def test_status_at_an_admin_path_nothing_listens_on_says_not_running_at_once(tmp_path, leftover, problem):
    """README (CLI): "When no gateway runs, they say so at once". A kill -9 of the root leaves its admin socket file
    (nothing removes it); `gateway status --admin ipc://.../admin.sock` then waited out the admin call's 5 s and said
    "no answer ... is a gateway running there?", though connect(2) to the file is refused at once (ECONNREFUSED: no
    process listens); so did an --admin naming a directory."""
    path = tmp_path / "admin.sock"
    if leftover == "directory":
        path.mkdir()
    else:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:  # closed unlinked: as a SIGKILL leaves it
            listener.bind(str(path))
            listener.listen()
    reference = cli_start_up_s(tmp_path)
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "gateway", "status", "--admin", f"ipc://{path}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=30)
    took = time.monotonic() - began
    assert (out.returncode, out.stderr.splitlines()) == (1, [
        f"gateway: not running at ipc://{path} (its socket {path} {problem})"])
    reference = max(reference, cli_start_up_s(tmp_path))
    assert took < reference + AT_ONCE_MARGIN_S, f"it took {took:.1f}s to say so, a command that calls no admin " \
        f"{reference:.1f}s"


def test_admin_reload_sends_a_relative_config_path_resolved_where_the_command_runs(tmp_path, monkeypatch, capsys):
    """kong/cmd/reload.lua:14: `local new_config = assert(conf_loader(args.conf, ...))` reads `kong reload -c F` in
    the command's own process; README (CLI): "Relative paths are relative to the working directory", and `gateway
    reload --config F` sends os.path.abspath(F). `gateway admin reload config=F` sent F as typed, and the root
    resolved it against its own working directory: run elsewhere (as --admin allows), it reloaded another file of
    that name there, or failed naming a path the operator never typed."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # where the gateway's admin socket would be
    listener.bind(str(tmp_path / "admin.sock"))
    listener.listen()
    sent: list[tuple[str, Any]] = []

    def answer(endpoint: str, cmd: str, args: Any = None, timeout: float = 5.0) -> AdminReply:
        sent.append((cmd, args))
        return AdminReply(ok=True, result={"generation": 2})

    monkeypatch.setattr(control, "admin_call", answer)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    try:
        code = main(["admin", "--admin", f"ipc://{tmp_path}/admin.sock", "reload", "config=next.yaml"])
    finally:
        listener.close()
    assert code == 0, capsys.readouterr().err
    assert sent == [("reload", {"config": str(elsewhere / "next.yaml")})]
