"""A real nginx configured as Kong 3.9.3's proxy, for the tests that compare the gateway with it
(test_nginx_differential_requests.py, test_nginx_differential_responses.py), and the events a client codec makes of
an upstream's answer (those and test_upstream_answers_as_nginx.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from backends import free_port, stop_process, wait_port

from gateway.http.codec import CLOSED, END, NEED_DATA, ProtocolError


def _find_nginx() -> str | None:
    """nginx's binary: on PATH, else Debian's /usr/sbin/nginx (off a non-root user's PATH)."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


NGINX = _find_nginx()
NO_NGINX = ("nginx is not installed: these tests compare the gateway with a real nginx in Kong's proxy configuration; "
            "install Debian's `nginx` package (`apt-get install nginx`, which scripts/setup does when run as root)")

# The http{} block's start, as Kong's: the server and upstream blocks of each test follow, then its closing brace
KONG_HTTP = """
worker_processes 1;
events { worker_connections 1024; }
http {
    # kong/templates/nginx.lua, nginx_kong.lua (server_tokens, underscores_in_headers) and kong_defaults.lua
    # (nginx_http_charset, nginx_http_client_max_body_size, nginx_http_client_body_buffer_size)
    server_tokens off;
    underscores_in_headers on;
    charset UTF-8;
    client_max_body_size 0;
    client_body_buffer_size 8k;
    keepalive_requests 10000;
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"""


def nginx_version(binary: str) -> tuple[int, ...]:
    """`nginx -v`'s version (it writes `nginx version: nginx/1.22.1` to stderr)."""
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(n) for n in found.groups()) if found else (0, 0, 0)


class Nginx:
    """nginx in the foreground as a child process, with `conf` (`{dir}`, `{port}` and each of `fields` filled in),
    in a directory of its own."""

    def __init__(self, binary: str, workdir: Path, conf: str, **fields: str) -> None:
        self.port = free_port()
        for sub in ("body", "proxy", "fcgi", "uwsgi", "scgi", "logs"):
            (workdir / sub).mkdir()
        for name, value in {"dir": str(workdir), "port": str(self.port), **fields}.items():
            conf = conf.replace("{" + name + "}", value)
        (workdir / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(
            [binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g",
             f"daemon off; master_process off; error_log {workdir}/error.log info; pid {workdir}/nginx.pid;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port)
        except TimeoutError:
            stop_process(self.proc)
            raise


def answer_events(client: Any, answer: bytes, method: bytes = b"GET") -> list[Any]:
    """The events of one exchange on `client` (a client codec), the answer's bytes in one read: up to its END, or
    the error it raised."""
    client.request_head(method, b"/", [(b"host", b"up")])
    client.end()
    client.receive_data(answer)
    return events_after(client)


def events_after(client: Any) -> list[Any]:
    """The events a client codec gives of the bytes it was given so far: up to its END, or the error it raised."""
    events: list[Any] = []
    try:
        while (ev := client.next_event()) is not NEED_DATA and ev is not CLOSED:
            events.append(ev)
            if ev is END:
                break
    except ProtocolError as e:
        events.append(e)
    return events
