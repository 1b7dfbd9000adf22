"""Kong's correlation-id, request-termination and bot-detection over the real gateway."""

from __future__ import annotations

import json
import re

import pytest
import trio
from backends import Client
from hypothesis import given, settings
from hypothesis import strategies as st
from plugin_helpers import (
    body_json,
    call,
    headers_of,
    http_codec,  # noqa: F401 - the fixture: one codec
    plugin,
    refused,
    seen,
    start,
)

from gateway.http.kong_errors import nginx_special_page
from gateway.policies.bot_detection import handler as bot_detection
from gateway.policies.bot_detection.rules import BOTS
from gateway.policies.bot_detection.schema import BotDetectionConfig
from gateway.policies.request_termination.handler import RequestTermination
from gateway.policies.request_termination.schema import RequestTerminationConfig

# --- correlation-id -------------------------------------------------------------------------------------------------

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


async def test_a_request_without_the_header_gets_a_uuid_counter_id_upstream(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin("correlation-id")])
    first = seen(await call(port))["headers"]["kong-request-id"][0]
    second = seen(await call(port))["headers"]["kong-request-id"][0]
    assert re.fullmatch(UUID + r"#\d+", first) and re.fullmatch(UUID + r"#\d+", second)
    assert first.split("#")[0] == second.split("#")[0]
    assert int(second.split("#")[1]) == int(first.split("#")[1]) + 1


async def test_a_clients_id_is_kept_and_echoed_downstream(nursery, gateway):
    cid = plugin("correlation-id", header_name="X-Correlation-ID", generator="uuid", echo_downstream=True)
    _, port = await start(nursery, gateway, plugins=[cid])
    reply = await call(port, "/", [("x-correlation-id", "abc-123")])
    assert seen(reply)["headers"]["x-correlation-id"] == ["abc-123"]
    assert reply.header("x-correlation-id") == "abc-123"
    fresh = await call(port)
    assert re.fullmatch(UUID, fresh.header("x-correlation-id"))
    assert seen(fresh)["headers"]["x-correlation-id"] == [fresh.header("x-correlation-id")]


async def test_an_answer_of_the_gateway_also_echoes_the_id(nursery, gateway):
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth"},
                                           plugin("correlation-id", echo_downstream=True, generator="tracker")]}]
    _, port = await start(nursery, gateway, routes)
    reply = await call(port)
    assert reply.status == 401 and re.fullmatch(r"127\.0\.0\.1-\d+-\d+-\d+-\d+-\d+\.\d{3}",
                                                reply.header("kong-request-id"))


async def test_tracker_ids_count_connections_and_the_requests_on_each(nursery, gateway):
    """Kong's tracker: server_addr-server_port-pid-$connection-$connection_requests-time, nginx's serial number of
    the connection and the request's number on it: no two requests get the same id, however fast they come."""
    routes = [{"paths": ["/"], "plugins": [plugin("correlation-id", echo_downstream=True, generator="tracker")]}]
    _, port = await start(nursery, gateway, routes)
    ids = []
    with trio.fail_after(10):
        for _ in range(2):
            async with await Client.connect(port) as client:
                for _ in range(3):
                    ids.append((await client.request("GET", "/")).header("kong-request-id").split("-"))
    assert [i[4] for i in ids] == ["1", "2", "3"] * 2  # $connection_requests
    assert len({i[3] for i in ids[:3]}) == 1 and ids[3][3] == str(int(ids[0][3]) + 1)  # $connection
    assert {(i[0], i[1]) for i in ids} == {("127.0.0.1", str(port))}


def test_correlation_id_refuses_an_unknown_generator():
    assert "config.generator: expected one of" in refused(plugin("correlation-id", generator="snowflake"))


# --- request-termination --------------------------------------------------------------------------------------------


async def test_request_termination_answers_503_with_kongs_default_message(nursery, gateway):
    backend, port = await start(nursery, gateway, plugins=[plugin("request-termination")])
    reply = await call(port, "/x")
    assert (reply.status, body_json(reply)) == (503, {"message": "Service unavailable"})
    assert backend.requests == []


async def test_request_termination_sends_a_raw_body_with_its_content_type(nursery, gateway):
    """kong.response.exit's Content-Type, with nginx's charset filter's `; charset=UTF-8` (nginx_http_charset)."""
    rt = plugin("request-termination", status_code=418, body="<h1>no</h1>", content_type="text/html")
    _, port = await start(nursery, gateway, plugins=[rt])
    reply = await call(port, "/x")
    assert (reply.status, reply.body, reply.header("content-type")) == (418, b"<h1>no</h1>",
                                                                        "text/html; charset=UTF-8")


async def test_without_a_message_a_status_of_kongs_error_page_list_gets_kongs_error_page(nursery, gateway):
    """handler.lua: kong.response.exit(400, nil) is ngx.exit(400) with nothing sent; nginx_kong.lua's error_page
    hands 400 to kong/error_handlers.lua (text/plain without an Accept)."""
    backend, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=400)])
    reply = await call(port, "/x")
    assert reply.status == 400
    assert reply.body.startswith(b"Bad request\nrequest_id: "), reply.body
    assert headers_of(reply, "content-type") == ["text/plain; charset=utf-8"]
    assert not backend.requests


async def test_without_a_message_another_status_gets_nginxs_own_page(nursery, gateway):
    """ngx.exit(410) outside Kong's error_page list: nginx's special response page, text/html (with Kong's charset,
    as nginx's charset filter leaves its pages)."""
    backend, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=410)])
    reply = await call(port, "/x")
    assert reply.status == 410
    assert (410, reply.body) == nginx_special_page(410)
    assert b"<title>410 Gone</title>" in reply.body
    assert headers_of(reply, "content-type") == ["text/html; charset=UTF-8"]
    assert not backend.requests


async def test_without_a_message_a_2xx_is_sent_empty(nursery, gateway):
    """ngx.exit(201) below 300: lua-nginx-module sends the head Kong set (Content-Length: 0), nginx adds no page."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=201)])
    reply = await call(port, "/x")
    assert (reply.status, reply.body, headers_of(reply, "content-length")) == (201, b"", ["0"])
    assert headers_of(reply, "content-type") == []


@pytest.mark.parametrize(("status", "answer"), [
    (302, (302, "302 Found", "302 Found", "")),
    (498, (498, "404 Not Found", "404 Not Found", "")),  # nginx's 404 page
    (495, (400, "400 The SSL certificate error", "400 Bad Request", "<center>The SSL certificate error</center>\r\n")),
])
def test_nginxs_special_pages_are_ngx_http_special_responses(status, answer):
    sent, title, heading, extra = answer
    page = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{heading}</h1></center>\r\n"
            f"{extra}<hr><center>mcp-gateway</center>\r\n</body>\r\n</html>\r\n")
    assert nginx_special_page(status) == (sent, page.encode())


@pytest.mark.parametrize("status", [300, 304, 418, 422, 499, 506, 599])
def test_a_status_nginx_has_no_page_for_is_sent_empty(status):
    assert nginx_special_page(status) is None


@pytest.mark.parametrize(("status", "close"), [(400, True), (413, True), (501, True), (410, False), (408, False)])
def test_without_a_message_nginx_closes_the_connection_after_some_statuses(status, close):
    """ngx_http_special_response_handler turns keep-alive off for 400, 413, 414, 495-497, 500 and 501."""
    assert RequestTermination(RequestTerminationConfig(status_code=status)).close is close


async def test_a_trigger_terminates_only_requests_that_carry_it(nursery, gateway):
    rt = plugin("request-termination", status_code=403, message="maintenance", trigger="x-maint")
    backend, port = await start(nursery, gateway, plugins=[rt])
    assert (await call(port, "/x")).status == 200
    assert body_json(await call(port, "/x", [("x-maint", "1")])) == {"message": "maintenance"}
    assert (await call(port, "/x?x-maint")).status == 403
    assert len(backend.requests) == 1


async def test_echo_returns_the_request(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=200, echo=True)])
    reply = await call(port, "/x?a=1&a=2", [("x-h", "v"), ("content-type", "application/json")], method="POST",
                       body=b'{"k": 1}')
    doc = body_json(reply)["request"]
    assert (doc["method"], doc["path"], doc["query"], doc["body"]) == ("POST", "/x", {"a": ["1", "2"]}, {"k": 1})
    assert doc["headers"]["x-h"] == "v" and doc["raw_body"] == '{"k": 1}'


async def test_the_echoed_path_is_kongs_normalized_path(nursery, gateway):
    """handler.lua: path = kong.request.get_path(), since 3.0 normalize(get_raw_path(), true)."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=200, echo=True)])
    reply = await call(port, "/a/../b%41//c/./d?x=1")
    assert body_json(reply)["request"]["path"] == "/bA/c/d"


async def test_echo_has_the_body_nginx_keeps_in_memory_and_none_it_wrote_to_a_file(nursery, gateway):
    """kong/plugins/request-termination/handler.lua:51-52 get_body() and get_raw_body(): ngx.req.get_body_data(),
    nil for a body nginx wrote to a file (cjson then writes neither key). nginx sizes a Content-Length body's buffer
    to what is left past the preread when that is under client_body_buffer_size + 25% (release-1.27.1
    ngx_http_request_body.c:175-187; 10240 bytes with Kong's 8k): a 9000-byte body stays in memory, a 20000-byte
    one goes to a file."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=200, echo=True)])
    for size, kept in ((8192, True), (9000, True), (20000, False)):
        body = json.dumps({"k": "x" * (size - 9)}).encode()
        assert len(body) == size
        reply = await call(port, "/", [("content-type", "application/json")], method="POST", body=body)
        request = body_json(reply)["request"]
        assert ("raw_body" in request, "body" in request) == (kept, kept), size


@pytest.mark.parametrize(("config", "message"), [
    ({"message": "m", "body": "b"}, "message cannot be used with content_type or body"),
    ({"content_type": "text/plain"}, "content_type requires a body"),
    ({"echo": True, "body": "b"}, "echo cannot be used with content_type and body"),
    ({"status_code": 600}, "config.status_code: expected int >= 100 and <= 599, got 600"),
    # kong/db/schema/init.lua: a string field without len_min gets len_min 1
    ({"message": ""}, "config.message: length must be at least 1"),
    ({"body": ""}, "config.body: length must be at least 1"),
    ({"body": "x", "content_type": ""}, "config.content_type: length must be at least 1"),
])
def test_request_termination_config_errors(config, message):
    assert message in refused({"name": "request-termination", "config": config})


# --- bot-detection --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("agent", "status"), [
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36", 200),
    ("curl/8.4.0", 200),
    ("Googlebot/2.1 (+http://www.google.com/bot.html)", 403),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", 403),
    ("facebookexternalhit/1.1", 403),
])
async def test_known_bots_are_refused_and_browsers_pass(nursery, gateway, agent, status):
    _, port = await start(nursery, gateway, plugins=[plugin("bot-detection")])
    reply = await call(port, "/x", [("user-agent", agent)])
    assert reply.status == status
    if status == 403:
        assert body_json(reply)["message"] == "Forbidden"


async def test_allow_beats_the_bot_list_and_deny_refuses_more(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin("bot-detection", allow=["Googlebot"], deny=["^curl/"])])
    assert (await call(port, "/x", [("user-agent", "Googlebot/2.1")])).status == 200
    assert (await call(port, "/x", [("user-agent", "curl/8.4.0")])).status == 403
    assert (await call(port, "/x")).status == 200  # no User-Agent


async def test_two_user_agents_get_400(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin("bot-detection")])
    reply = await call(port, "/x", [("user-agent", "a"), ("user-agent", "b")])
    assert (reply.status, body_json(reply)["message"]) == (400, "Only one User-Agent header allowed")


def test_bot_detection_refuses_an_invalid_regex():
    assert "config.deny[0]: not a valid regex: missing closing parenthesis at offset 1" in \
        refused(plugin("bot-detection", deny=["("]))


async def test_a_deny_rule_with_a_posix_class_refuses_as_pcre_does(nursery, gateway):
    """Kong runs the rules with PCRE (handler.lua: ngx.re.find(user_agent, rule, "jo")), where `[[:digit:]]` is any
    digit; Python's re, which ran them before, read it as the set `[:digt` and a "]" and let the bot through."""
    _, port = await start(nursery, gateway, plugins=[plugin("bot-detection", deny=["^python-requests/[[:digit:]]"])])
    assert (await call(port, "/x", [("user-agent", "python-requests/2.31.0")])).status == 403


async def test_an_allow_rule_with_a_posix_class_lets_a_bot_through_as_pcre_does(nursery, gateway):
    """Allowed before Kong's bot list is looked at: Googlebot, on Kong's list, passes."""
    _, port = await start(nursery, gateway, plugins=[plugin("bot-detection", allow=["Googlebot/[[:digit:]]"])])
    assert (await call(port, "/x", [("user-agent", "Googlebot/2.1")])).status == 200


async def test_a_rule_with_pcre_syntax_pythons_re_lacks_is_taken_and_enforced(nursery, gateway):
    """Kong's schema checks a rule with ngx.re.match (kong/db/schema/init.lua is_regex): PCRE takes named groups
    (?<name>...) and \\z, which Python's re refused, so check-config refused a config Kong loads."""
    _, port = await start(nursery, gateway, plugins=[plugin("bot-detection", deny=[r"^(?<tool>curl)/\d+(\.\d+)*\z"])])
    assert (await call(port, "/x", [("user-agent", "curl/8.5.0")])).status == 403
    assert (await call(port, "/x", [("user-agent", "curl/8.5.0 x")])).status == 200


def test_a_rule_that_fails_on_an_agent_finds_nothing_as_kongs_if_re_find_reads_it():
    """ngx.re.find returns nil and an error when PCRE's match limit is reached: Kong's `if re_find(...)` reads that
    as no match, so a catastrophic deny rule lets the agent through (and the verdict is cached) instead of hanging."""
    detector = bot_detection.BotDetection(BotDetectionConfig(deny=[r"^(\w+\s?)+$"]))
    assert not detector.refused(b"a" * 40 + b"!")
    assert detector.refused(b"curl")
    allowed_first = bot_detection.BotDetection(BotDetectionConfig(allow=[r"^(\w+\s?)+$"], deny=["!"]))
    assert allowed_first.refused(b"a" * 40 + b"!")  # the failed allow rule did not allow it


GENERIC_AGENT_PIECES = [b"Bot", b"bot", b"BOT", b"bOt", b"Spider", b"SPIDER", b"spider", b"Crawl", b"CRAWL",
                        b"crawler", b"Scraper", b"scrape", b"SCRAPE", b"Archiver", b"Indexer", b"indexer", b"/", b" ",
                        b"1", b".2", b"x", b"-", b"the ", b"v", b"!", b"[", b":", b"Mozilla/5.0 ", b"(compatible; ",
                        b")", b"  "]


@settings(max_examples=1500, deadline=None, database=None)
@given(pieces=st.lists(st.sampled_from(GENERIC_AGENT_PIECES), max_size=14))
def test_kongs_generic_bot_patterns_only_find_agents_with_one_of_the_words(pieces):
    """What lets the gateway skip them (their cost) for an agent without the words: they could not have matched."""
    agent = b"".join(pieces)
    if any(r.search(agent) for r in bot_detection.bot_rules()[1]):
        assert any(w in agent.lower() for w in bot_detection.GENERIC_WORDS), agent


def test_the_bot_list_is_kongs_whole_list():
    bots, generic = bot_detection.bot_rules()
    assert sorted(r.pattern for r in bots + generic) == sorted(BOTS) and len(generic) == 3


def test_the_generic_patterns_run_only_for_an_agent_with_a_bot_word():
    """With PCRE2 they are 11 of the 26 µs the whole list takes for a browser's agent, and 140 ms for 60 KB of
    spaces; a browser's agent holds none of the words."""
    ran = []

    class Spy:
        def search(self, agent: bytes) -> bool:
            ran.append(agent)
            return False

    detector = bot_detection.BotDetection(BotDetectionConfig())
    detector.generic_bots = (Spy(),)  # type: ignore[assignment]
    assert not detector.refused(b" " * 16000 + b"x")
    assert not detector.refused(b"Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0")
    assert ran == []
    assert not detector.refused(b"a RoBoT")
    assert ran == [b"a RoBoT"]


# --- a route without a service (Kong's) -----------------------------------------------------------------------------


async def test_a_route_without_a_service_answers_503_unless_a_plugin_does(nursery, gateway):
    port = await gateway({"routes": [{"name": "bare", "paths": ["/bare"]},
                                     {"name": "ended", "paths": ["/ended"],
                                      "plugins": [plugin("request-termination", status_code=200, message="ok")]}]})
    bare = await call(port, "/bare")
    assert (bare.status, body_json(bare)["message"]) == (503, "no Service found with those values")
    ended = await call(port, "/ended")
    assert (ended.status, body_json(ended)) == (200, {"message": "ok"})
