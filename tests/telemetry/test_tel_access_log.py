"""gateway.access_log and the file-log plugin end to end (the gateway in-process, real sockets): one JSON line per
request in the shape of Kong's serializer, proxied or answered by the gateway itself."""

from __future__ import annotations

import socket

import trio
from backends import BadBackend, EchoBackend, log_lines, parse_raw_response, raw_exchange, request, service

TIMEOUT = 10
KONG_V6_LOOPBACK = "[0000:0000:0000:0000:0000:0000:0000:0001]"  # kong/tools/ip.lua format_host(normalize_ip("::1"))


async def test_access_log_has_one_kong_shaped_line_per_request(nursery, gateway, tmp_path):
    backend = EchoBackend()
    await nursery.start(backend.serve)
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}/base", [
        {"name": "api", "paths": ["/api"]}])]}, access_log=str(log))
    with trio.fail_after(TIMEOUT):
        ok = await request(port, "GET", "/api/items?x=1&flag&x=2", headers=[("authorization", "Bearer secret")])
        missing = await request(port, "GET", "/nowhere")
    assert ok.status == 200 and missing.status == 404
    first, second = await log_lines(log, 2)
    assert first["request"]["method"] == "GET"
    assert first["request"]["uri"] == "/api/items?x=1&flag&x=2"
    assert first["request"]["querystring"] == {"x": ["1", "2"], "flag": True}
    assert first["request"]["headers"]["authorization"] == "REDACTED"
    assert first["request"]["id"] == ok.header("x-request-id")
    assert first["upstream_uri"] == "/base/items?x=1&flag&x=2"
    assert first["upstream_status"] == "200"
    assert first["response"]["status"] == 200
    assert first["response"]["headers"]["x-backend"] == "echo"
    assert first["response"]["size"] > len(ok.body)
    assert first["route"]["name"] == "api" and first["service"]["name"] == "svc"
    assert first["service"]["host"] == "127.0.0.1" and first["service"]["port"] == backend.port
    assert first["source"] == "upstream"
    assert first["client_ip"] == "127.0.0.1"
    assert set(first["latencies"]) == {"kong", "proxy", "request", "receive"}
    assert 0 <= first["latencies"]["proxy"] <= first["latencies"]["request"]
    assert first["tries"][0]["ip"] == "127.0.0.1" and first["tries"][0]["port"] == backend.port
    assert isinstance(first["started_at"], int) and first["started_at"] > 1_600_000_000_000
    assert second["response"]["status"] == 404 and second["source"] == "kong"
    assert "route" not in second and second["latencies"]["proxy"] == -1
    assert "tries" not in second  # no route: no balancer data


async def test_a_matched_request_answered_before_any_try_has_empty_tries(nursery, gateway, tmp_path):
    """Kong's spec 01-tcp-log "tries field encoded as JSON array" (#6390): a route matched, request-termination
    answered, and `tries` is an empty array, not missing."""
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("svc", "http://127.0.0.1:9", [{"paths": ["/"]}])],
                          "plugins": [{"name": "request-termination", "config": {"status_code": 200}}]},
                         access_log=str(log))
    assert (await request(port, "GET", "/x")).status == 200
    (line,) = await log_lines(log, 1)
    assert line["tries"] == []


async def test_a_failed_upstream_is_logged_with_its_tries(nursery, gateway, tmp_path):
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("dead", "http://127.0.0.1:9", retries=1)]}, access_log=str(log))
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/")
    assert reply.status == 502
    (line,) = await log_lines(log, 1)
    assert line["response"]["status"] == 502 and line["source"] == "kong"
    assert [t["state"] for t in line["tries"]] == ["failed", "failed"]  # retries: 1, one target tried again
    assert line["upstream_status"] == "502, 502"  # nginx's $upstream_status: each try's


async def test_the_tries_ip_of_an_ipv6_literal_is_the_one_kongs_balancer_gives(nursery, gateway, tmp_path):
    """Kong's tries[].ip is balancer_data.ip (kong/init.lua:1411). For an upstream's target `[::1]:PORT` it is the
    address its DNS client returns for the target's name (kong/runloop/balancer/targets.lua:513, 565), that name
    itself (kong/resty/dns/client.lua:1003 `address = qname`), and the name is the target as the targets DAO formats
    it (kong/db/dao/targets.lua:31-36, :160-164; targets.lua:96): bracketed and expanded. For a service whose host is
    the address, balancer_data.ip is the host as the service gives it (kong/runloop/balancer/init.lua:291-293)."""
    backend = EchoBackend()
    backend.host = "::1"
    await nursery.start(backend.serve)
    log = tmp_path / "access.log"
    port = await gateway({
        "services": [{"name": "u", "host": "up", "routes": [{"name": "ru", "paths": ["/u"]}]},
                     {"name": "d", "host": "::1", "port": backend.port, "routes": [{"name": "rd", "paths": ["/d"]}]}],
        "upstreams": [{"name": "up", "targets": [{"target": f"[::1]:{backend.port}"}]}]}, access_log=str(log))
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/u")).status == 200
        assert (await request(port, "GET", "/d")).status == 200
    upstream, direct = await log_lines(log, 2)
    assert upstream["tries"][0]["ip"] == KONG_V6_LOOPBACK and upstream["tries"][0]["port"] == backend.port
    assert direct["tries"][0]["ip"] == "::1" and direct["tries"][0]["port"] == backend.port


async def test_the_tries_ip_of_a_names_ipv6_address_is_bracketed(nursery, gateway, tmp_path):
    """Kong's DNS client brackets the IPv6 addresses it answers with: an AAAA record's (kong/resty/dns/client.lua:
    210-212 `record.address = parseHostname(record.address)`, utils.lua:327-332), a hosts file's (parseHosts keeps
    parseHostname's bracketed form); that address is the try's ip (kong/init.lua:1411)."""
    backend = EchoBackend()
    backend.host = "::1"
    await nursery.start(backend.serve)
    hosts = tmp_path / "hosts"
    hosts.write_text("::1 v6only.test\n")
    log = tmp_path / "access.log"
    port = await gateway({"services": [{"name": "d", "host": "v6only.test", "port": backend.port,
                                        "routes": [{"name": "rd", "paths": ["/d"]}]}]},
                         access_log=str(log), dns_hostsfile=str(hosts), dns_order=["LAST", "AAAA"])
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/d")).status == 200
    (line,) = await log_lines(log, 1)
    assert line["tries"][0]["ip"] == "[::1]" and line["tries"][0]["port"] == backend.port


async def test_file_log_plugin_writes_the_routes_requests_only(nursery, gateway, tmp_path):
    backend = EchoBackend()
    await nursery.start(backend.serve)
    log = tmp_path / "file.log"
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "logged", "paths": ["/logged"], "plugins": [{"name": "file-log", "config": {"path": str(log)}}]},
        {"name": "quiet", "paths": ["/quiet"]}])]})
    with trio.fail_after(TIMEOUT):
        for target in ("/logged/1", "/quiet", "/logged/2"):
            assert (await request(port, "GET", target)).status == 200
    lines = await log_lines(log, 2)
    await trio.sleep(0.1)
    assert [line["request"]["uri"] for line in lines] == ["/logged/1", "/logged/2"]
    assert len(log.read_text().splitlines()) == 2


async def test_the_logged_uri_is_the_one_sent_and_the_querystring_the_one_forwarded(nursery, gateway, tmp_path):
    """Kong's serializer: request.uri and request.url are $request_uri (with key-auth's query key still in it), the
    querystring is the arguments after hide_credentials took the key out, as upstream_uri is."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    log = tmp_path / "access.log"
    port = await gateway({
        "services": [service("svc", f"http://127.0.0.1:{backend.port}", [
            {"name": "api", "paths": ["/api"],
             "plugins": [{"name": "key-auth", "config": {"hide_credentials": True}}]}])],
        "consumers": [{"username": "bob", "keyauth_credentials": [{"key": "kong"}]}]}, access_log=str(log))
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/api/x?a=1&apikey=kong&b=2")).status == 200
    (line,) = await log_lines(log, 1)
    assert line["request"]["uri"] == "/api/x?a=1&apikey=kong&b=2"
    assert line["request"]["url"].endswith(f":{port}/api/x?a=1&apikey=kong&b=2")
    assert line["request"]["querystring"] == {"a": "1", "b": "2"}
    assert line["upstream_uri"] == "/x?a=1&b=2"  # strip_path


async def test_the_logged_uri_keeps_the_fragment_the_query_sent_upstream_ends_at(nursery, gateway, tmp_path):
    """nginx's $args end at a `#` (release-1.27.1 ngx_http_parse.c ngx_http_parse_complex_uri, args: loop), while
    $request_uri is the target as sent: Kong's serializer logs request.uri and url from $request_uri, the querystring
    from the args (kong.request.get_query), upstream_uri "?" .. $args (kong/runloop/handler.lua)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "api", "paths": ["/api"], "strip_path": False}])]}, access_log=str(log))
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/api/x?a=1#frag")).status == 200
    (line,) = await log_lines(log, 1)
    assert line["request"]["uri"] == "/api/x?a=1#frag"
    assert line["request"]["url"].endswith(f":{port}/api/x?a=1#frag")
    assert line["request"]["querystring"] == {"a": "1"}
    assert line["upstream_uri"] == "/api/x?a=1"


async def test_an_unnamed_service_is_logged_without_a_name_as_kong_logs_it(nursery, gateway, tmp_path):
    """The loader names an unnamed service after its path for its own use; Kong's serializer has no name for it."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    log = tmp_path / "access.log"
    port = await gateway({"services": [{"url": f"http://127.0.0.1:{backend.port}", "routes": [{"paths": ["/"]}]}]},
                         access_log=str(log))
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/x")).status == 200
    (line,) = await log_lines(log, 1)
    assert "name" not in line["service"]
    assert line["service"]["host"] == "127.0.0.1" and line["service"]["port"] == backend.port


async def test_requests_nginx_refuses_are_logged_by_global_log_plugins_and_the_access_log(nursery, gateway,
                                                                                        tmp_path):
    """Kong's spec (04-plugins_triggering): a global log plugin runs on nginx's own 400 and 414, and sees what the
    request line said; nginx's access log has a line for each."""
    log, access = tmp_path / "file.log", tmp_path / "access.log"
    port = await gateway({"services": [service("svc", "http://127.0.0.1:9", [{"paths": ["/"]}])],
                          "plugins": [{"name": "file-log", "config": {"path": str(log)}}]}, access_log=str(access))
    large = await raw_exchange(port, b"POST /status/200?foo=bar HTTP/1.1\r\nhost: gw\r\nx-large: " + b"a" * 10240
                               + b"\r\n\r\n")
    long_uri = await raw_exchange(port, b"POST /?foo=" + b"a" * 10240 + b" HTTP/1.1\r\nhost: gw\r\n\r\n")
    assert parse_raw_response(large[0])[0] == 400 and parse_raw_response(long_uri[0])[0] == 414
    header_too_large, uri_too_long = await log_lines(log, 2)
    assert header_too_large["response"]["status"] == 400
    assert header_too_large["request"]["method"] == "POST"
    assert header_too_large["request"]["querystring"] == {"foo": "bar"}
    assert header_too_large["upstream_uri"] == ""  # nothing was sent upstream
    assert header_too_large["request"]["id"] == parse_raw_response(large[0])[1]["x-kong-request-id"]
    assert "route" not in header_too_large and "service" not in header_too_large
    assert header_too_large["source"] == "kong"  # Kong's get_source: neither proxied nor exited
    assert uri_too_long["response"]["status"] == 414
    assert uri_too_long["request"]["method"] == "POST" and uri_too_long["request"]["headers"] == {}
    assert [line["response"]["status"] for line in await log_lines(access, 2)] == [400, 414]


async def test_the_logged_url_names_the_host_as_nginxs_host_variable(nursery, gateway, tmp_path):
    """Kong's serializer builds `url` from nginx's $host: the Host header's name lowercased without its port, or,
    with no Host (HTTP/1.0, or a head refused before one was read), Kong's `server_name kong`."""
    log = tmp_path / "access.log"
    port = await gateway({"services": []}, access_log=str(log))
    with trio.fail_after(TIMEOUT):
        await raw_exchange(port, b"GET /a HTTP/1.1\r\nHost: API.Example.COM:8080\r\nConnection: close\r\n\r\n")
        await raw_exchange(port, b"GET /b HTTP/1.0\r\n\r\n")
        await raw_exchange(port, b"GET /c?x=1 HTTP/1.1\r\nx-large: " + b"a" * 10240 + b"\r\n\r\n")  # 400
    named, no_host, refused = await log_lines(log, 3)
    assert named["request"]["url"] == f"http://api.example.com:{port}/a"
    assert no_host["request"]["url"] == f"http://kong:{port}/b"
    assert refused["request"]["url"] == f"http://kong:{port}/c?x=1"


async def test_a_request_head_that_times_out_is_logged_408(nursery, gateway, tmp_path):
    """Closed unanswered, logged 408: nginx release-1.27.1 src/http/ngx_http_request.c:1097-1101
    `ngx_http_close_request(r, NGX_HTTP_REQUEST_TIME_OUT)`, whose status only the log gets (:3740-3742)."""
    access = tmp_path / "access.log"
    port = await gateway({"services": []}, access_log=str(access), header_timeout_s=0.2)
    received, _ = await raw_exchange(port, b"GET / HTTP/1.1\r\nhost: gw\r\n")
    assert received == b""
    (line,) = await log_lines(access, 1)
    assert line["response"]["status"] == 408


async def test_a_connection_that_sends_nothing_is_closed_unanswered_and_unlogged(nursery, gateway, tmp_path):
    """nginx's client_header_timeout on a connection with no request byte: closed, no 408, no log line (browsers
    open such connections ahead of need)."""
    access = tmp_path / "access.log"
    port = await gateway({"services": []}, access_log=str(access), header_timeout_s=0.2)
    received, _ = await raw_exchange(port, b"")
    assert received == b""
    received, _ = await raw_exchange(port, b"GET / HTTP/1.1\r\n")  # then one that did start: logged (unanswered)
    assert received == b""
    (line,) = await log_lines(access, 1)
    assert line["response"]["status"] == 408


async def test_an_upstream_read_timeout_is_logged_as_waiting_time_not_gateway_latency(nursery, gateway, tmp_path):
    # Kong (init.lua): latencies.kong ends as the last try goes out, latencies.proxy is its waiting time until the
    # error page (KONG_WAITING_TIME), also when no head came
    hang = BadBackend("hang")
    await nursery.start(hang.serve)
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("slow", f"http://127.0.0.1:{hang.port}", retries=0,
                                               read_timeout=400)]}, access_log=str(log))
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/")).status == 504
    latencies = (await log_lines(log, 1))[0]["latencies"]
    assert latencies["proxy"] >= 350 and latencies["kong"] < 100, latencies


async def test_a_response_the_upstream_cut_is_logged_with_the_status_its_head_gave(nursery, gateway, tmp_path):
    # nginx's $upstream_status is the status line's, kept when the body is cut later
    cut = BadBackend("truncate")  # 200, Content-Length 1000, 10 bytes, close
    await nursery.start(cut.serve)
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{cut.port}", retries=0)]},
                         access_log=str(log))
    await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    (line,) = await log_lines(log, 1)
    assert (line["response"]["status"], line["upstream_status"]) == (200, "200")


async def test_a_client_gone_mid_body_is_logged_with_the_upstreams_status(nursery, gateway, tmp_path):
    backend = EchoBackend()
    await nursery.start(backend.serve)
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]}, access_log=str(log))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await stream.send_all(b"GET /?bytes=20000000 HTTP/1.1\r\nHost: gw\r\n\r\n")
    received = 0
    with trio.fail_after(TIMEOUT):
        while received < 100_000:
            received += len(await stream.receive_some(65536))
    await trio.aclose_forcefully(stream)
    (line,) = await log_lines(log, 1)
    assert (line["response"]["status"], line["upstream_status"]) == (200, "200")
