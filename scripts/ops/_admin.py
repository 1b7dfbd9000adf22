"""What scripts/ops/* share: one request to the gateway's admin channel (a ZeroMQ ROUTER speaking JSON) with plain
pyzmq, and their common options (--admin, --timeout). Not a command: the scripts beside it import it.

    {"v": 1, "cmd": "targets", "args": {"action": "list"}, "timeout_ms": 5000}
        ->  {"v": 1, "ok": true, "result": ...}  or  {"v": 1, "ok": false, "error": "..."}

timeout_ms is how long the script waits (--timeout): a change still waiting its turn in the gateway past it is never
carried out, so "no answer" means nothing was changed.

A tcp://HOST:PORT endpoint is reached as a CURVE client (--curve-server-key, the gateway's public NAME.key;
--curve-client-key, this client's NAME.key_secret: zmq.auth's certificate files), and a socket monitor tells a
refused handshake from a gateway that does not answer.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import struct
import sys
import time

try:
    import zmq
except ImportError:  # a python3 without pyzmq (`scripts/ops/breakers` on a PATH's python3): the project's .venv has it
    VENV = os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..", ".venv", "bin", "python")
    if os.path.exists(VENV) and not os.environ.get("GATEWAY_OPS_REEXEC"):
        os.execve(VENV, [VENV, *sys.argv], {**os.environ, "GATEWAY_OPS_REEXEC": "1"})
    sys.exit(f"{os.path.basename(sys.argv[0])}: needs pyzmq: run scripts/setup (it makes .venv with it), "
             f"or run this with a python3 that has pyzmq")


def seconds(text: str) -> float:
    value = float(text)  # argparse turns a ValueError into "invalid seconds value"
    if not (math.isfinite(value) and 0 < value <= 86400):
        raise argparse.ArgumentTypeError(f"expected seconds > 0 (at most 86400), got {text!r}")
    return value


def endpoint(text: str) -> str:
    """ipc://PATH with PATH made absolute (relative paths are relative to the working directory)."""
    return "ipc://" + os.path.abspath(text[len("ipc://"):]) if text.startswith("ipc://") else text


def parser(doc: str) -> argparse.ArgumentParser:
    """An ArgumentParser with --admin and --timeout; `doc` is the script's docstring (its first line describes it)."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `breakers | head -1` ends quietly, as does Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--admin", type=endpoint, default=os.environ.get("GATEWAY_ADMIN", "ipc://run/admin.sock"),
                   help="admin endpoint (default: $GATEWAY_ADMIN or ipc://run/admin.sock, relative to the cwd)")
    p.add_argument("--timeout", type=seconds, default=5.0, help="seconds to wait for the reply (default 5)")
    p.add_argument("--curve-server-key", metavar="FILE", default=os.environ.get("GATEWAY_ADMIN_SERVER_KEY"),
                   help="for a tcp:// endpoint: the gateway's public NAME.key (default: $GATEWAY_ADMIN_SERVER_KEY)")
    p.add_argument("--curve-client-key", metavar="FILE", default=os.environ.get("GATEWAY_ADMIN_CLIENT_KEY"),
                   help="for a tcp:// endpoint: this client's NAME.key_secret (default: $GATEWAY_ADMIN_CLIENT_KEY)")
    return p


def curve(sock: zmq.Socket, options: argparse.Namespace, prog: str) -> zmq.Socket:
    """Make `sock` a CURVE client with the key files of the options (exits 1 without them, or for a file that is not
    a certificate); the monitor socket that reports its failed handshakes."""
    from zmq.auth import load_certificate

    if not options.curve_server_key or not options.curve_client_key:
        sys.exit(f"{prog}: tcp admin endpoints need --curve-server-key and --curve-client-key (or "
                 "$GATEWAY_ADMIN_SERVER_KEY and $GATEWAY_ADMIN_CLIENT_KEY)")
    try:
        server, _ = load_certificate(options.curve_server_key)
        public, secret = load_certificate(options.curve_client_key)
    except (OSError, ValueError, IndexError) as e:
        sys.exit(f"{prog}: cannot read a CURVE certificate: {e}")
    if secret is None:
        sys.exit(f"{prog}: --curve-client-key {options.curve_client_key} holds no secret key: give NAME.key_secret")
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server, public, secret
    return sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                   | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def receive(sock: zmq.Socket, monitor: zmq.Socket | None, deadline: float, prog: str, admin: str) -> object:
    """The JSON reply, zmq.Again past `deadline`; exits 1 when the monitor reports a failed handshake."""
    poller = zmq.Poller()
    for s in (sock, monitor) if monitor is not None else (sock,):
        poller.register(s, zmq.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        ready = dict(poller.poll(max(int(left * 1000), 1)))
        if monitor is not None and monitor in ready:
            event = struct.unpack("=HI", monitor.recv_multipart()[0][:6])[0]
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                sys.exit(f"{prog}: the gateway at {admin} refused this client key (its public key "
                         f"{sock.curve_publickey.decode()} is not in admin_curve.authorized_keys)")
            sys.exit(f"{prog}: the CURVE handshake with {admin} failed, likely a wrong server key: "
                     "--curve-server-key must be the gateway's admin_curve public key")
        if sock in ready:
            return sock.recv_json()
    raise zmq.Again()


def utf8(text: str) -> bool:
    """Whether `text` is UTF-8 text (an argument of bytes that are not is held as surrogate escapes)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def call(options: argparse.Namespace, cmd: str, **args: object) -> object:
    """The command's result from the gateway at options.admin; exits 1 with a message when it does not answer within
    options.timeout or refuses the command."""
    prog, admin, timeout = os.path.basename(sys.argv[0]), options.admin, options.timeout
    for value in args.values():
        if isinstance(value, str) and not utf8(value):
            shown = value.encode(errors="surrogateescape").decode(errors="backslashreplace")
            sys.exit(f"{prog}: {shown} is not UTF-8 text; the admin channel's JSON cannot carry it: give it as UTF-8")
    with zmq.Context.instance().socket(zmq.REQ) as sock:
        sock.linger, sock.rcvtimeo = 0, int(timeout * 1000)
        monitor = curve(sock, options, prog) if admin.startswith("tcp://") else None
        try:
            sock.connect(admin)
            sock.send_json({"v": 1, "cmd": cmd, "args": args, "timeout_ms": max(int(timeout * 1000), 1)})
            reply = receive(sock, monitor, time.monotonic() + timeout, prog, admin)
            if isinstance(reply, dict) and not reply.get("ok") and "timeout_ms" in str(reply.get("error")):
                sock.send_json({"v": 1, "cmd": cmd, "args": args})  # a gateway from before timeout_ms: as it knows it
                reply = receive(sock, monitor, time.monotonic() + timeout, prog, admin)
        except zmq.Again:
            sys.exit(f"{prog}: no answer from {admin} within {timeout:g}s (is the gateway running?)")
        except zmq.ZMQError as e:
            sys.exit(f"{prog}: cannot use --admin {admin!r}: {e} (the gateway's is ipc://PATH or tcp://HOST:PORT)")
        finally:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(linger=0)
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else f"unexpected reply {reply!r}"
        sys.exit(f"{prog}: {args.get('action', cmd)} failed: {error}")
    return reply["result"]
