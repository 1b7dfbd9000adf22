"""CURVE on the admin channel's tcp endpoint (RFC 26 CurveZMQ), its clients let in by a ZAP handler (RFC 27).

The keys are zmq.auth's certificate files: `gateway curve-keys DIR NAME` writes NAME.key (the public key, for the
other side) and NAME.key_secret (the key pair, mode 0600). The root's admin ROUTER is a CURVE server with the key pair
of gateway.admin_curve.secret_key_file; its ZAP handler (a task of the root, on inproc://zeromq.zap.01 of the admin
socket's context) lets in a client whose public key is in a *.key file of admin_curve.authorized_keys (zmq.auth's
configure_curve location), reading the directory at each handshake as sshd reads authorized_keys at each connection:
a key copied in or removed counts from the next connection, without a reload. Each refusal is logged at warning, once
a minute per key.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import time
from dataclasses import dataclass

import zmq
from zmq.auth.certs import create_certificates, load_certificate
from zmq.utils import z85

from gateway.bus.zmq_trio import PumpedSocket

log = logging.getLogger("gateway.admin")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # RFC 27: where libzmq asks, on the context of the socket handshaking
ZAP_VERSION = b"1.0"
KEY_CHARS = 40  # a 32-byte CURVE key in Z85
PUBLIC_SUFFIX, SECRET_SUFFIX = ".key", ".key_secret"  # zmq.auth.create_certificates' names
REFUSAL_LOG_S = 60.0  # a refused key (or mechanism) is logged at most once in this many seconds
MAX_REFUSALS_KEPT = 4096  # keys remembered for that; past it the oldest are forgotten (a flood of random keys)
NEED_KEYS = "tcp admin endpoints need --curve-server-key and --curve-client-key"


class KeyFileError(ValueError):
    """A key file that cannot be used; the message says which file, what is wrong and what to do."""


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # Z85, as zmq's curve options take them
    secret: bytes


@dataclass(frozen=True)
class ClientKeys:
    """What a client of a CURVE admin endpoint needs: the server's public key and its own key pair."""

    server: bytes
    client: KeyPair

    def apply(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE client of the server (before it connects)."""
        sock.curve_serverkey = self.server
        sock.curve_publickey = self.client.public
        sock.curve_secretkey = self.client.secret


# --- key files ---------------------------------------------------------------------------------------------------


def _is_key(text: bytes) -> bool:
    try:
        return len(text) == KEY_CHARS and len(z85.decode(text)) == 32
    except (KeyError, ValueError, TypeError):  # (a character outside Z85's alphabet)
        return False


def _regular_file(path: str) -> os.stat_result:
    """`path`'s stat, KeyFileError when it is none or not a regular file (a FIFO would wait for a writer for ever)."""
    if "\0" in path:
        raise KeyFileError(f"{path!r} is no file name (it holds a NUL byte)")
    try:
        found = os.stat(path)
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(found.st_mode):
        raise KeyFileError(f"{path} is not a file")
    return found


def read_certificate(path: str) -> tuple[bytes, bytes | None]:
    """The Z85 public key and secret key (None in a public certificate) of a zmq.auth certificate file; KeyFileError
    when it is none (missing, unreadable, not a file, no key of 40 Z85 characters)."""
    _regular_file(path)
    try:
        public, secret = load_certificate(path)
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, IndexError):  # (no public-key line, or one without its `=`)
        public, secret = None, None
    if public is None or not _is_key(public) or (secret is not None and not _is_key(secret)):
        raise KeyFileError(f'{path} is not a ZeroMQ certificate (a `public-key = "..."` line of {KEY_CHARS} Z85 '
                           "characters, as `gateway curve-keys DIR NAME` writes)")
    return public, secret


def too_open(path: str, mode: int) -> str | None:
    """Why a secret key file of this mode is refused, as ssh refuses a private key others may read; None if only its
    owner may."""
    if not mode & 0o077:
        return None
    return (f"permissions {stat.S_IMODE(mode):04o} for {path} are too open: a secret key must be readable by its "
            f"owner alone (ssh refuses such a private key); chmod 600 {path}")


def read_key_pair(path: str) -> KeyPair:
    """The key pair of a NAME.key_secret certificate; KeyFileError for one others may read, a public certificate, or
    a public key that is not the secret key's."""
    public, secret = read_certificate(path)
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key (it is a public certificate, NAME{PUBLIC_SUFFIX}); give the "
                           f"NAME{SECRET_SUFFIX} file")
    problem = too_open(path, _regular_file(path).st_mode)
    if problem is not None:
        raise KeyFileError(problem)
    if zmq.curve_public(secret) != public:
        raise KeyFileError(f"{path}: its public-key is not the public key of its secret-key; write a new pair with "
                           "`gateway curve-keys DIR NAME`")
    return KeyPair(public, secret)


def authorized_keys(directory: str) -> dict[bytes, str]:
    """{public key (Z85): its file's NAME} of the NAME.key certificates in `directory` (dot files and files that are no
    certificate are skipped, as zmq.auth's glob of *.key skips the first); OSError when it cannot be listed."""
    keys: dict[bytes, str] = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(PUBLIC_SUFFIX) and not name.startswith("."):
            try:
                public, _ = read_certificate(os.path.join(directory, name))
            except KeyFileError:
                continue
            keys.setdefault(public, name[:-len(PUBLIC_SUFFIX)])
    return keys


def settings_problems(secret_key_file: str, authorized: str) -> list[str]:
    """gateway.admin_curve's files as a start would use them: one line per field at fault (after `gateway.`),
    saying what to do; [] when the root can serve CURVE with them and a client could be let in."""
    problems = []
    try:
        read_key_pair(secret_key_file)
    except KeyFileError as e:
        problems.append(f"admin_curve.secret_key_file: {e}")
    problems += [f"admin_curve.authorized_keys: {problem}" for problem in _authorized_problems(authorized)]
    return problems


def _authorized_problems(directory: str) -> list[str]:
    if "\0" in directory:
        return [f"{directory!r} is no directory name (it holds a NUL byte)"]
    try:
        if not stat.S_ISDIR(os.stat(directory).st_mode):
            return [f"{directory} is not a directory; make it one holding each client's public NAME{PUBLIC_SUFFIX}"]
        names = sorted(name for name in os.listdir(directory)
                       if name.endswith(PUBLIC_SUFFIX) and not name.startswith("."))
    except OSError as e:
        return [f"cannot read {directory}: {e.strerror or e}; make it a directory holding each client's public "
                f"NAME{PUBLIC_SUFFIX}"]
    problems, found = [], 0
    for name in names:
        try:
            read_certificate(os.path.join(directory, name))
            found += 1
        except KeyFileError as e:
            problems.append(f"{e}; fix or remove it")
    if not found:
        problems.append(f"{directory} holds no client public key (a NAME{PUBLIC_SUFFIX} file, as `gateway curve-keys "
                        f"DIR NAME` writes), so no client could connect; copy a client's NAME{PUBLIC_SUFFIX} into it")
    return problems


def client_keys(server_key_file: str, client_key_file: str) -> ClientKeys:
    """A client's keys from --curve-server-key (the server's NAME.key, or its NAME.key_secret: its public half) and
    --curve-client-key (the client's NAME.key_secret); KeyFileError naming the option at fault."""
    try:
        server, _ = read_certificate(server_key_file)
    except KeyFileError as e:
        raise KeyFileError(f"--curve-server-key: {e}") from None
    try:
        client = read_key_pair(client_key_file)
    except KeyFileError as e:
        raise KeyFileError(f"--curve-client-key: {e}") from None
    return ClientKeys(server, client)


def write_certificates(directory: str, name: str) -> tuple[str, str, bytes]:
    """Write directory/NAME.key and NAME.key_secret (0600) with zmq.auth.create_certificates, refusing to replace
    either (FileExistsError); (public file, secret file, public key). Written apart, then linked in: never half."""
    if not name or name.startswith(".") or "/" in name or "\0" in name:
        raise ValueError(f"{name!r} is not a NAME for key files: give a file name without '/' (e.g. ops-laptop)")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    targets = [os.path.join(directory, name + suffix) for suffix in (PUBLIC_SUFFIX, SECRET_SUFFIX)]
    for target in targets:
        if os.path.lexists(target):
            raise FileExistsError(f"{target} exists; it is not replaced (choose another NAME, or remove it first)")
    old = os.umask(0o077)
    try:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".curve-keys-") as scratch:
            written = create_certificates(scratch, name)
            os.chmod(written[0], 0o644)  # (the public half is for others to read)
            linked: list[str] = []
            try:
                for source, target in zip(written, targets, strict=True):
                    os.link(source, target)  # (fails if the name was taken meanwhile)
                    linked.append(target)
            except BaseException:
                for target in linked:
                    os.unlink(target)
                raise
    finally:
        os.umask(old)
    public, _ = load_certificate(targets[0])
    return targets[0], targets[1], public


# --- the root's ZAP handler ----------------------------------------------------------------------------------------


class ZapHandler:
    """The ZAP handler of the root's CURVE admin endpoint: lets in CURVE clients whose key authorized_keys holds.

    Bound before the admin socket, on that socket's context: libzmq lets every CURVE client in when no handler is
    bound there (the Stonehouse pattern), so the endpoint is never open without it."""

    def __init__(self, ctx: zmq.Context, directory: str) -> None:
        self.directory = directory
        self._refused: dict[bytes, float] = {}  # key (or mechanism) -> when its refusal was last logged
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            self.sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError:
            self.sock.close()
            raise

    async def run(self) -> None:
        """Answer libzmq's ZAP requests until cancelled (a handshake waits for its answer meanwhile)."""
        pumped = PumpedSocket(self.sock, lambda frames: self._on_request(pumped, frames))
        await pumped.run()

    def _on_request(self, pumped: PumpedSocket, frames: list[bytes]) -> None:
        try:
            reply = self.answer(frames)
        except Exception:  # (that handshake is never let in; the handler, and the root, go on)
            log.exception("admin: the ZAP handler failed on a request")
            return
        if reply is not None:
            pumped.send(reply)

    def answer(self, frames: list[bytes]) -> list[bytes] | None:
        """The reply to one ZAP request (RFC 27: version, request id, domain, address, identity, mechanism,
        credentials, after the ROUTER's envelope), None for what is no request."""
        if len(frames) < 8 or frames[1] != b"":
            return None
        envelope, (version, request_id, _domain, address, _identity, mechanism, *credentials) = frames[:2], frames[2:]
        if version != ZAP_VERSION:
            return [*envelope, ZAP_VERSION, request_id, b"400", b"unsupported ZAP version", b"", b""]
        status, text, user = self.decide(address.decode(errors="replace"), mechanism, credentials)
        return [*envelope, ZAP_VERSION, request_id, status, text, user, b""]

    def decide(self, address: str, mechanism: bytes, credentials: list[bytes]) -> tuple[bytes, bytes, bytes]:
        """(status code, status text, user id): 200 for a CURVE client whose key is authorized, else 400."""
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            shown = mechanism.decode(errors="replace")
            self._log_refusal(b"mechanism " + mechanism, "admin: refused a %s client from %s: the tcp admin endpoint "
                              "lets in CURVE clients only", shown, address)
            return b"400", b"CURVE clients only", b""
        key = z85.encode(credentials[0])
        try:
            known = authorized_keys(self.directory)
        except (OSError, ValueError) as e:
            known = {}
            self._log_refusal(b"", "admin: cannot list gateway.admin_curve.authorized_keys %s (%s): every client "
                              "key is refused", self.directory, getattr(e, "strerror", None) or e)
        name = known.get(key)
        if name is None:
            self._log_refusal(key, "admin: refused the CURVE client key %s from %s: it is not in "
                              "gateway.admin_curve.authorized_keys (%s)", key.decode(), address, self.directory)
            return b"400", b"client key not authorized", b""
        return b"200", b"OK", name.encode()

    def _log_refusal(self, what: bytes, message: str, *args: object) -> None:
        """Log at warning, unless `what` was refused less than REFUSAL_LOG_S ago."""
        now = time.monotonic()
        last = self._refused.get(what)
        if last is not None and now - last < REFUSAL_LOG_S:
            return
        if len(self._refused) >= MAX_REFUSALS_KEPT:
            self._refused = {k: t for k, t in self._refused.items() if now - t < REFUSAL_LOG_S}
            while len(self._refused) >= MAX_REFUSALS_KEPT:
                del self._refused[next(iter(self._refused))]  # the oldest logged
        self._refused.pop(what, None)
        self._refused[what] = now
        log.warning(message, *args)

    def close(self) -> None:
        self.sock.close(linger=0)

