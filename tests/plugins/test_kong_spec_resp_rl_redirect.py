"""response-ratelimiting and redirect against Kong's own source and spec (kong/plugins/response-ratelimiting,
kong/plugins/redirect; spec/03-plugins/24-response-rate-limiting, spec/03-plugins/45-redirect): the divergences an
audit found, each stated as Kong behaves.

redirect's keep_incoming_path goes through ada (lua-resty-ada, ada 2.9.2 in Kong 3.x): the Location is the href of
the configured URL with its pathname set to kong.request.get_path() and its search to the raw query. The expected
values below are what ada 2.9.2 answers for those inputs."""

from __future__ import annotations

import pytest
from plugin_helpers import (
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    plugin,
    refused,
    start,
)

# ---- redirect: keep_incoming_path writes the Location as ada does ----------------------------------------------------


async def keeping_gateway(nursery, gateway, location: str = "https://example.com/some_path?foo=bar") -> int:  # noqa: ANN001
    _, port = await start(nursery, gateway, plugins=[plugin("redirect", location=location, keep_incoming_path=True)])
    return port


async def test_keep_incoming_path_leaves_the_characters_ada_does_not_encode_in_a_path(nursery, gateway):
    """get_path decodes %7C and %5E (not reserved); ada's path percent-encode set leaves "|" and "^" as they are."""
    port = await keeping_gateway(nursery, gateway)
    assert (await call(port, "/a%7Cb%5Ec")).header("location") == "https://example.com/a|b^c"


async def test_keep_incoming_path_takes_a_backslash_for_a_slash_in_an_http_url(nursery, gateway):
    """For http(s) URLs ada splits the path at "\\" as at "/" (and removes the dot segments that makes)."""
    port = await keeping_gateway(nursery, gateway)
    assert (await call(port, "/a%5Cb")).header("location") == "https://example.com/a/b"
    assert (await call(port, "/a%5C..%5Cb")).header("location") == "https://example.com/b"


async def test_keep_incoming_path_encodes_the_query_as_ada_sets_a_search(nursery, gateway):
    """ada's special-query percent-encode set: quotes, apostrophes and angle brackets are escaped, "|" is not."""
    port = await keeping_gateway(nursery, gateway)
    reply = await call(port, "/p?a='x'&b=\"y\"&c=<z>&d=|")
    assert reply.header("location") == "https://example.com/p?a=%27x%27&b=%22y%22&c=%3Cz%3E&d=|"


async def test_keep_incoming_path_drops_one_leading_question_mark_of_the_query(nursery, gateway):
    """ada's set_search("?a") sets the search to "a"; set_search("?") leaves an empty one ("?")."""
    port = await keeping_gateway(nursery, gateway)
    assert (await call(port, "/p??a")).header("location") == "https://example.com/p?a"
    assert (await call(port, "/p??")).header("location") == "https://example.com/p?"
    assert (await call(port, "/p?")).header("location") == "https://example.com/p"


async def test_keep_incoming_path_writes_the_scheme_and_host_lower_case_without_a_default_port(nursery, gateway):
    """ada's href: scheme and host lower-cased, the scheme's default port dropped, the fragment kept."""
    port = await keeping_gateway(nursery, gateway, "HTTPS://Example.COM:443/x?y=1#Top")
    assert (await call(port, "/status/200")).header("location") == "https://example.com/status/200#Top"


async def test_without_keep_incoming_path_the_location_is_sent_as_configured(nursery, gateway):
    """Kong sends conf.location as it is unless keep_incoming_path (02-access_spec "supports path and query
    params in location")."""
    _, port = await start(nursery, gateway, plugins=[plugin("redirect", location="HTTPS://Example.COM:443/x")])
    assert (await call(port, "/status/200")).header("location") == "HTTPS://Example.COM:443/x"


@pytest.mark.parametrize("location", ["https://:80/x", "https://user@/x"])
def test_a_location_without_a_host_is_refused(location):
    """typedefs.url (01-schema_spec "location must be a url"): socket.url finds no host: "missing host in url"."""
    assert "config.location: expected a URL with a scheme and a host" in refused(
        {"name": "redirect", "config": {"location": location}})


# ---- response-ratelimiting -------------------------------------------------------------------------------------------


def test_an_empty_header_name_is_refused():
    """Kong's schema strings are non-empty by default (len_min 1): header_name "" is refused."""
    message = refused(plugin("response-ratelimiting", header_name="", limits={"video": {"second": 1}}))
    assert "config.header_name" in message


async def test_a_limit_name_may_be_any_header_name_token(nursery, gateway):
    """Kong takes any limit name; one with "." (a header-name character) names the headers and counts."""
    backend, port = await start(nursery, gateway, plugins=[plugin(
        "response-ratelimiting", limits={"video.hd": {"second": 6}})])
    backend.extra_headers = [(b"x-kong-limit", b"video.hd=2")]
    reply = await call(port, "/")
    assert reply.status == 200
    assert dict(reply.json()["headers"])["x-ratelimit-remaining-video.hd"] == "6"
    assert (reply.header("x-ratelimit-limit-video.hd-second"), reply.header("x-ratelimit-remaining-video.hd-second")) \
        == ("6", "4")


async def test_an_answer_of_a_later_plugin_carries_the_client_headers(nursery, gateway):
    """Kong runs response-ratelimiting's header_filter (usage read in its access, priority 900) on the answer of a
    plugin after it, redirect's (779): the 301 carries X-RateLimit-Limit/Remaining-<name>-<period>."""
    backend, port = await start(nursery, gateway, plugins=[
        plugin("response-ratelimiting", limits={"video": {"second": 6}}),
        plugin("redirect", location="https://example.com")])
    reply = await call(port, "/")
    assert (reply.status, reply.header("location")) == (301, "https://example.com")
    assert (reply.header("x-ratelimit-limit-video-second"), reply.header("x-ratelimit-remaining-video-second")) \
        == ("6", "6")
    assert backend.requests == []
