"""Where the session-id keys come from: the config (literal or env:NAME), or one generated key in a file.

With no `gateway.mcp.session_keys`, the key lives in `session_key_file` (default: mcp-session.key beside the pid
file, i.e. run/). The first process that needs it (a worker, or `gateway run`) creates it with mode 0600, atomically
(written to a temporary file, then hard-linked into place, so a racing worker reads either nothing or the whole
key); every other worker, every later generation and the gateway after a restart read the same file. So session ids
stay valid across workers and restarts without a shared store. A file that is there but cannot be the key (too
short, not ASCII, unreadable) is refused when the config is compiled (check-config, start, reload: key_file_problem),
as nginx refuses an unusable ssl_session_ticket_key. Only when the file can be neither read nor created at run time
does a process fall back to a random key of its own, with a warning that its sessions will not outlive it.
"""

from __future__ import annotations

import logging
import os
import secrets

from gateway.mcp.sessions import MIN_SECRET_BYTES

log = logging.getLogger("gateway.mcp")

KEY_FILE_NAME = "mcp-session.key"
FILE_KEY_ID = "file"


def resolve_secret(secret: str) -> bytes:
    """A configured secret: the literal text, or the environment variable named by `env:NAME`."""
    if secret.startswith("env:"):
        name = secret[4:]
        value = os.environ.get(name)
        if value is None:
            raise ValueError(f"environment variable {name} is not set")
        secret = value
    data = secret.encode()
    if len(data) < MIN_SECRET_BYTES:
        raise ValueError(f"the secret must be at least {MIN_SECRET_BYTES} bytes")
    return data


def default_key_file(pid_file: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(pid_file)), KEY_FILE_NAME)


def load_or_create_key_file(path: str) -> bytes:
    """The key in `path`, creating the file (0600) with a new random key if it does not exist. Raises OSError."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)  # atomic, and fails if another process created the key first
            log.info("created the MCP session key file %s", path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return _read(path)


def key_file_problem(path: str) -> str | None:
    """Why the key file `path`, if it exists, cannot be the key (a message naming the file and what a key file is);
    None when it can, or when it does not exist yet (the first process that needs it creates it)."""
    try:
        _read(path)
    except (FileNotFoundError, NotADirectoryError):  # (not there: a directory that is not one is its setting's error)
        return None
    except UnicodeDecodeError:
        why = "it holds bytes that are not ASCII"
    except OSError as e:
        why = f"cannot read it ({e.strerror})" if e.strerror else str(e)
    else:
        return None
    return (f"{path}: {why}; a session key file holds one key of at least {MIN_SECRET_BYTES} ASCII characters (the "
            "gateway writes 64 hex digits when it creates one): write such a key, or remove the file for the gateway "
            "to create one, or set gateway.mcp.session_keys")


def _read(path: str) -> bytes:
    with open(path, encoding="ascii") as f:
        text = f.read().strip()
    if len(text) < MIN_SECRET_BYTES:
        raise OSError(f"the key is {len(text)} characters, fewer than {MIN_SECRET_BYTES}")
    return text.encode()


def file_or_random_key(path: str) -> tuple[str, bytes]:
    """(key id, secret) from the key file; a random per-process key (and a warning) if the file is unusable."""
    try:
        return FILE_KEY_ID, load_or_create_key_file(path)
    except (OSError, UnicodeDecodeError) as e:
        log.warning("MCP session key file %s unusable (%s): using a random key of this process; MCP sessions will "
                    "not survive a restart nor span worker processes (set gateway.mcp.session_keys)", path, e)
        return "rnd" + secrets.token_hex(4), secrets.token_bytes(32)
