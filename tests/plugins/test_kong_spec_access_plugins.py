"""ip-restriction, acl, bot-detection and correlation-id against Kong's own source and spec tests
(kong/plugins/<name>/, spec/03-plugins/17-ip-restriction, 18-acl, 21-bot-detection, 11-correlation-id)."""

from __future__ import annotations

import json
import re

import pytest
import trio
from backends import ConsumerExchange
from plugin_helpers import (
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    plugin,
    refused,
    seen,
    start,
)

from gateway.policies.acl.handler import Acl
from gateway.policies.acl.schema import AclConfig
from gateway.policies.ldap_auth.handler import CredentialIdentity

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


# --- Kong's strings are at least one character (kong/db/schema/init.lua: len_min defaults to 1) ----------------------


def test_ip_restriction_refuses_an_empty_message():
    """Kong's `message` is a string field: "" is refused ("length must be at least 1"), never sent as a body."""
    assert "config.message" in refused(plugin("ip-restriction", deny=["10.0.0.1"], message=""))


def test_acl_refuses_an_empty_group_name():
    """acl's allow / deny elements are Kong strings: an empty group name is refused."""
    assert "config.allow[0]" in refused(plugin("acl", allow=[""]))


def test_bot_detection_refuses_an_empty_regex():
    """An empty pattern would find every User-Agent; Kong's string elements refuse it."""
    assert "config.deny[0]" in refused(plugin("bot-detection", deny=[""]))


# --- acl --------------------------------------------------------------------------------------------------------------

CONSUMERS = [
    {"username": "loner", "keyauth_credentials": [{"key": "loner-key"}]},
    {"username": "groupless-guest"},
]


@pytest.mark.parametrize("headers", [[], [("apikey", "loner-key")]], ids=["anonymous", "with-credential"])
async def test_acl_deny_sends_an_empty_groups_header_for_a_consumer_without_groups(nursery, gateway, headers):
    """spec/03-plugins/18-acl/02-access_spec.lua "returns 200 with deny groups": x-consumer-groups is "" upstream
    (handler.lua sets the concatenation of no groups, an empty string, when it admits under a deny list)."""
    routes = [{"paths": ["/"], "plugins": [plugin("key-auth", anonymous="groupless-guest"),
                                           plugin("acl", deny=["everyone"])]}]
    _, port = await start(nursery, gateway, routes, consumers=CONSUMERS)
    assert seen(await call(port, headers=headers))["headers"]["x-consumer-groups"] == [""]


async def test_acl_refuses_a_credential_without_a_consumer_under_a_deny_list():
    """kong/plugins/acl/handler.lua: no consumer id and no authenticated groups, but a credential (ldap-auth's,
    which names no consumer) -> 403 "You cannot consume this service", whatever the list type."""
    ex = ConsumerExchange(CredentialIdentity("ldap-cache-key", b"einstein"))
    assert await Acl(AclConfig(deny=["admins"])).access(ex)  # type: ignore[arg-type]
    assert ex.answered == (403, "You cannot consume this service")


# --- bot-detection ----------------------------------------------------------------------------------------------------


async def test_bot_detection_strips_only_ascii_whitespace(nursery, gateway):
    """kong.tools.string.strip removes spaces and bytes 9-13 only: a leading NBSP (0xA0) stays, so `^curl/` does
    not find b"\\xa0curl/8.4.0"."""
    _, port = await start(nursery, gateway, plugins=[plugin("bot-detection", deny=["^curl/"])])
    reply = await call(port, "/x", [("user-agent", b"\xa0curl/8.4.0")])  # type: ignore[list-item]
    assert reply.status == 200


async def test_kongs_bot_patterns_take_word_characters_as_ascii(nursery, gateway):
    """ngx.re.find with "jo" (PCRE without UTF/UCP): \\w is [A-Za-z0-9_], so rules.lua's `Yandex\\w{1,30}` does not
    find "Yandex" followed by the byte 0xE9."""
    _, port = await start(nursery, gateway, plugins=[plugin("bot-detection")])
    reply = await call(port, "/x", [("user-agent", b"Yandex\xe9")])  # type: ignore[list-item]
    assert reply.status == 200


async def test_configured_regexes_take_word_characters_as_ascii(nursery, gateway):
    """A deny regex runs as PCRE bytes too: `^\\w+$` does not find b"caf\\xe9"."""
    _, port = await start(nursery, gateway, plugins=[plugin("bot-detection", deny=[r"^\w+$"])])
    assert (await call(port, "/x", [("user-agent", b"caf\xe9")])).status == 200  # type: ignore[list-item]
    assert (await call(port, "/x", [("user-agent", "cafe")])).status == 403


# --- correlation-id ---------------------------------------------------------------------------------------------------


async def test_correlation_id_takes_any_http_token_as_header_name(nursery, gateway):
    """Kong's header_name is a plain string: a name with a dot (an HTTP token character) is accepted and used."""
    cid = plugin("correlation-id", header_name="X.Correlation.Id", generator="uuid", echo_downstream=True)
    _, port = await start(nursery, gateway, plugins=[cid])
    reply = await call(port)
    sent = seen(reply)["headers"]["x.correlation.id"]
    assert re.fullmatch(UUID, sent[0])
    assert reply.header("x.correlation.id") == sent[0]


def test_correlation_id_refuses_a_header_name_that_is_no_http_token():
    assert "config.header_name" in refused(plugin("correlation-id", header_name="X Correlation"))


async def test_the_correlation_id_is_in_the_log_plugins_entry(nursery, gateway, tmp_path):
    """kong/plugins/correlation-id/handler.lua: kong.log.set_serialize_value("correlation_id", id), so a log
    plugin's entry carries the id the request went upstream with (echo_downstream or not)."""
    log = tmp_path / "file.log"
    _, port = await start(nursery, gateway, plugins=[plugin("correlation-id", generator="uuid"),
                                                     plugin("file-log", path=str(log))])
    sent = seen(await call(port))["headers"]["kong-request-id"][0]
    with trio.fail_after(10):
        while not log.exists() or not log.read_text():
            await trio.sleep(0.02)
    assert json.loads(log.read_text())["correlation_id"] == sent
