"""Self-registration reads the address of a listen entry that carries flags, as kong/conf_loader/listeners.lua
parses one (parse_option_flags strips `ssl`, `proxy_protocol`, `reuseport`, `backlog=N` ... before the ip and
port are read): README "Several hosts" lists `0.0.0.0:8000 proxy_protocol` beside an etcd registration."""

from __future__ import annotations

from gateway.config.discovery import RegistrationSettings
from gateway.config.schema import GatewaySettings
from gateway.discovery import resolve_registration


def test_a_flagged_first_listen_entry_registers_its_address():
    """The start failed: "cannot tell the address to register from '10.0.0.1:8000 proxy_protocol'"."""
    gw = GatewaySettings(listen=["10.0.0.1:8000 proxy_protocol", "10.0.0.1:8443 ssl"], status_listen=None)
    reg = resolve_registration(RegistrationSettings(backend="etcd"), gw)
    assert (reg.host, reg.port) == ("10.0.0.1", 8000)


def test_a_status_listen_with_options_is_the_registered_check():
    """Kong's default status_listen, `127.0.0.1:8007 reuseport backlog=16384`, gave no check URL at all."""
    gw = GatewaySettings(listen="10.0.0.1:8000", status_listen="127.0.0.1:8007 reuseport backlog=16384")
    reg = resolve_registration(RegistrationSettings(backend="consul"), gw)
    assert reg.check_url == "http://127.0.0.1:8007/status/ready"
