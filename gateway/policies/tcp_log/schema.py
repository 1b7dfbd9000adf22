"""Kong's tcp-log plugin config (kong/plugins/tcp-log/schema.lua)."""

import ipaddress
import re
from typing import Annotated

import msgspec

from gateway.config.errors import show
from gateway.config.typedefs import kong_host_problem

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Milliseconds = Annotated[float, msgspec.Meta(ge=0, le=2**31 - 2)]
# tls_sni: a host name (letters, digits, "-", "_", dots) or an IP address
_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


class TcpLogConfig(msgspec.Struct, forbid_unknown_fields=True):
    host: str
    port: Port
    timeout: Annotated[float, msgspec.Meta(gt=0, le=2**31 - 2)] = 10000  # ms, to connect, handshake and send
    keepalive: Milliseconds = 60000  # ms an idle connection to the collector is kept (0: as long as it lives)
    tls: bool = False  # TLS to the collector (its certificate is not checked, as in Kong)
    # the server name sent in the TLS handshake; unused without tls, as in Kong. An IP address is accepted, as Kong
    # does, and sends no SNI (Python's ssl does not, RFC 6066 names no address; Kong's OpenSSL would send it)
    tls_sni: str | None = None
    custom_fields_by_lua: dict[str, str] | None = None

    def __post_init__(self) -> None:
        check_host("host", self.host)
        if self.tls_sni is not None and not is_host(self.tls_sni):
            raise ValueError(f"tls_sni: expected a host name or an IP address, got {show(self.tls_sni)}")
        if self.custom_fields_by_lua:
            raise ValueError("custom_fields_by_lua: the gateway runs no Lua; remove it")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_host(text: str) -> bool:
    """A host name or an IP address (tls_sni's check)."""
    return _NAME.fullmatch(text) is not None or _is_ip(text)


def check_host(field: str, host: str) -> None:
    """Kong's typedefs.host for a plugin's host field (a name or an IP, "[ipv6]" too, no port): ValueError naming the
    field, in Kong's words."""
    if problem := kong_host_problem(host):
        raise ValueError(f"{field}: {problem}")
