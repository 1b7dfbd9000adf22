"""Kong's documented examples of the log, metrics and tracing plugins and of the AI prompt plugins
(developer.konghq.com: app/_kong_plugins/<name>/examples/*.yaml and the how-to guides), through a gateway in front of
an echo backend, checked against what Kong 3.9.3's plugin code does with the same config and traffic."""

from __future__ import annotations

import json

import pytest
import trio
from backends import EchoBackend, UdpCollector, log_lines, request, service, wait_until
from plugins.plugin_helpers import body_json, call, http_codec, seen, start  # noqa: F401 - http_codec: one codec

JSON = [("content-type", "application/json")]
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def chat(*contents: str) -> bytes:
    """An OpenAI chat body with one user message per content."""
    return json.dumps({"messages": [{"role": "user", "content": c} for c in contents]}).encode()


def headers(got: dict) -> dict:
    """The headers the echo backend received, by lower-case name."""
    return {k.lower(): v for k, v in got["headers"].items()}


def tracing(plugin: str, **propagation: object) -> dict:
    """A zipkin or opentelemetry plugin with a propagation block (opentelemetry needs a traces endpoint)."""
    config: dict = {"propagation": propagation}
    if plugin == "opentelemetry":
        config["traces_endpoint"] = "http://127.0.0.1:9/v1/traces"
    return {"name": plugin, "config": config}


# --- ai-prompt-guard, ai-prompt-template, ai-prompt-decorator ---------------------------------------------------------

GUARD_DOC = {
    "allow_patterns": ["(?i).*what is .*", "(?i).*how do i .*", "(?i).*install .*", "(?i).*configure .*",
                       "(?i).*reset .*", "(?i).*troubleshoot .*"],
    "deny_patterns": ["(?i).*bypass.*(login|password|auth).*", "(?i).*hack.*", "(?i).*phish.*", "(?i).*malware.*",
                      "(?i).*cve.*", "(?i).*exploit.*", "(?i).*social engineering.*", "(?i).*pentest.*",
                      "(?i).*impersonate.*", "(?i).*dating.*"]}


async def test_docs_prompt_guard_how_to(nursery, gateway):
    """how-to/use-ai-prompt-guard-plugin (examples/allow-and-deny.yaml's patterns): its three requests get 200, then
    400 twice; the body is Kong 3.9.3's (ai-prompt-guard/filters/guard-prompt.lua:138 `bad_request("bad request")`),
    the docs' "prompt pattern is blocked" being a newer Kong's."""
    _, port = await start(nursery, gateway, plugins=[{"name": "ai-prompt-guard", "config": GUARD_DOC}])
    assert (await call(port, "/anything", JSON, "POST", chat("What is DNS?"))).status == 200
    for text in ["How do I bypass login on a secure web portal?", "What’s a good line to use on a dating app?"]:
        r = await call(port, "/anything", JSON, "POST", chat(text))
        assert (r.status, body_json(r)) == (400, {"error": {"message": "bad request"}})


async def test_docs_prompt_guard_allow_only_and_deny_only(nursery, gateway):
    """examples/allow-only.yaml and deny-only.yaml (card numbers): a prompt matching no allow pattern, or a deny
    pattern, gets 400; the others pass."""
    _, port = await start(nursery, gateway, routes=[
        {"name": "allow", "paths": ["/allow"], "plugins": [{"name": "ai-prompt-guard", "config": {
            "allow_patterns": ['.*\\"card\\".*\\"4[0-9]{3}\\*{12}\\"']}}]},
        {"name": "deny", "paths": ["/deny"], "plugins": [{"name": "ai-prompt-guard", "config": {
            "deny_patterns": ['\\"card\\".*\\"5[0-9]{12}(?:[0-9]{3})?\\"']}}]}])
    assert (await call(port, "/allow", JSON, "POST", chat('{"card": "4111************"}'))).status == 200
    assert (await call(port, "/allow", JSON, "POST", chat('{"card": "4111111111111111"}'))).status == 400
    assert (await call(port, "/deny", JSON, "POST", chat('{"card": "5111111111111111"}'))).status == 400
    assert (await call(port, "/deny", JSON, "POST", chat('{"card": "4111111111111111"}'))).status == 200


def template(name: str, system: str, user: str) -> dict:
    return {"name": name, "template": json.dumps(
        {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}, indent=2)}


TEMPLATES = [
    template("summarizer", "You summarize long texts into concise bullet points.",
             "Summarize the following text: {{text}}"),
    template("code-explainer", "You are a helpful assistant who explains code to beginners.",
             "Explain what the following code does: {{code}}"),
    template("email-drafter", "You write professional emails based on user input.",
             "Draft an email about {{topic}} to {{recipient}}."),
    template("product-describer", "You write engaging product descriptions.",
             "Describe the product: {{product_name}, which has the following features: {{features}}."),
    template("qna", "You answer questions clearly and accurately.", "Answer the following question: {{question}}"),
]


async def test_docs_prompt_template_how_to(nursery, gateway):
    """how-to/use-ai-prompt-template-plugin: each of its five templated requests is rendered (the docs'
    `{{product_name}` is no placeholder for Kong's `{{([%w_]+)}}` and stays as written), and an untemplated request
    gets 400 with allow_untemplated_requests false."""
    _, port = await start(nursery, gateway, plugins=[{"name": "ai-prompt-template", "config": {
        "allow_untemplated_requests": False, "templates": TEMPLATES}}])
    cases = [("summarizer", {"text": "Of all human sciences ..."}),
             ("code-explainer", {"code": "def add(a, b):\n    return a + b"}),
             ("email-drafter", {"topic": "weekly team update", "recipient": "the engineering team"}),
             ("product-describer", {"product_name": "SuperSonic Vacuum X5",
                                    "features": "cordless design, HEPA filter"}),
             ("qna", {"question": "What is life?"})]
    for name, props in cases:
        r = await call(port, "/anything", JSON, "POST",
                       json.dumps({"messages": f"{{template://{name}}}", "properties": props}).encode())
        sent = json.loads(seen(r)["body"])
        assert sent["messages"][0]["role"] == "system"
        if name == "product-describer":
            assert sent["messages"][1]["content"] == ("Describe the product: {{product_name}, which has the "
                                                      "following features: cordless design, HEPA filter.")
        if name == "code-explainer":
            assert sent["messages"][1]["content"].endswith("def add(a, b):\n    return a + b")
    r = await call(port, "/anything", JSON, "POST", chat("What is Pythagorean theorem?"))
    assert (r.status, body_json(r)) == (400, {"error": {"message": "this LLM route only supports templated requests"}})


async def test_docs_prompt_decorator_complex_history(nursery, gateway):
    """examples/create-a-complex-chat-history.yaml: the prepended and appended messages surround the client's, and
    the body goes up as application/json (ai-prompt-decorator/filters/decorate-prompt.lua:81, set_body(t,
    "application/json"))."""
    prompts = {"prepend": [
        {"role": "system", "content": "You are data scientist, specialising in survey analytics."},
        {"role": "user", "content": "Classify this test result set as positive, negative, or neutral."},
        {"role": "assistant", "content": "These tests are NEUTRAL."}],
        "append": [{"role": "user", "content": "Do not mention any real participant names in your justification."}]}
    _, port = await start(nursery, gateway, plugins=[{"name": "ai-prompt-decorator", "config": {"prompts": prompts}}])
    got = seen(await call(port, "/anything", [("content-type", "application/json; charset=utf-8")], "POST",
                          chat("Classify: great course")))
    sent = json.loads(got["body"])
    assert [m["content"] for m in sent["messages"]] == [
        *[m["content"] for m in prompts["prepend"]], "Classify: great course", prompts["append"][0]["content"]]
    assert got["headers"]["content-type"] == ["application/json"]


# --- datadog, statsd --------------------------------------------------------------------------------------------------

async def test_docs_datadog_request_count(nursery, gateway):
    """datadog examples/request-count.yaml: a counter tagged with the service name (dots made underscores), the
    status and the consumer's id (consumer_identifier: consumer_id)."""
    collector = UdpCollector()
    await nursery.start(collector.serve)
    backend = EchoBackend()
    await nursery.start(backend.serve)
    cid = "4fd6b3d8-6c3e-4a5a-9d09-0b6c1b2a9c01"
    port = await gateway({
        "services": [service("example.service", f"http://127.0.0.1:{backend.port}")],
        "consumers": [{"username": "alice", "id": cid, "keyauth_credentials": [{"key": "k"}]}],
        "plugins": [{"name": "key-auth"}, {"name": "datadog", "config": {
            "host": "127.0.0.1", "port": collector.port, "flush_timeout": 0.1, "retry_count": 10,
            "metrics": [{"name": "request_count", "stat_type": "counter", "consumer_identifier": "consumer_id",
                         "sample_rate": 1}]}}]})
    assert (await request(port, "GET", "/x", headers=[("apikey", "k")])).status == 200
    assert await collector.received(1) == [
        "kong.request.count:1|c|#name:example_service,status:200,consumer:" + cid.replace("-", "_")]


async def test_docs_statsd_status_range(nursery, gateway):
    """statsd examples/log-on-status-range.yaml (allow_status_codes 200-205 and 400-499) with the how-to
    collect-metrics-with-statsd's metrics: a 500 and a 206 are not counted, a 200 is, one datagram per line
    (udp_packet_size 0, Kong's default)."""
    collector = UdpCollector()
    await nursery.start(collector.serve)
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({
        "services": [service("example-service", f"http://127.0.0.1:{backend.port}")],
        "plugins": [{"name": "statsd", "config": {
            "host": "127.0.0.1", "port": collector.port, "allow_status_codes": ["200-205", "400-499"],
            "flush_timeout": 0.1, "retry_count": 10,
            "metrics": [{"name": "request_count", "stat_type": "counter", "sample_rate": 1},
                        {"name": "status_count", "stat_type": "counter", "sample_rate": 1}]}}]})
    assert (await request(port, "GET", "/anything?status=500")).status == 500
    assert (await request(port, "GET", "/anything?status=206")).status == 206
    assert (await request(port, "GET", "/anything")).status == 200
    assert sorted(await collector.received(2)) == ["kong.service.example-service.request.count:1|c",
                                                   "kong.service.example-service.status.200:1|c"]


# --- the log plugins --------------------------------------------------------------------------------------------------

async def test_docs_file_log_entry_shape(nursery, gateway, tmp_path):
    """file-log examples/output-log-file-path.yaml: the entry holds the fields the log format page shows
    (app/_includes/plugins/logging/log-format.md), tries with their balancer timings, upstream_status as a string."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    path = tmp_path / "file.log"
    port = await gateway({"services": [service("example_service", f"http://127.0.0.1:{backend.port}",
                                               routes=[{"name": "example_route", "paths": ["/example-route"]}])],
                          "plugins": [{"name": "file-log", "config": {"path": str(path)}}]})
    assert (await request(port, "GET", "/example-route")).status == 200
    (entry,) = await log_lines(path, 1)
    assert set(entry) >= {"response", "route", "workspace", "workspace_name", "tries", "client_ip", "request",
                          "upstream_uri", "started_at", "source", "upstream_status", "latencies", "service"}
    assert set(entry["tries"][0]) >= {"balancer_start", "balancer_start_ns", "ip", "balancer_latency", "port",
                                      "balancer_latency_ns"}
    assert entry["upstream_status"] == "200" and entry["workspace_name"] == "default"
    assert set(entry["request"]) >= {"id", "headers", "uri", "size", "method", "querystring", "url"}
    assert entry["request"]["querystring"] == {}


async def test_docs_http_log_custom_headers(nursery, gateway):
    """http-log examples/custom-headers.yaml: the entry is POSTed as JSON with the configured Authorization header,
    to the endpoint's path."""
    collector = EchoBackend("collector")
    await nursery.start(collector.serve)
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}")],
                          "plugins": [{"name": "http-log", "config": {
                              "http_endpoint": f"http://127.0.0.1:{collector.port}/log?x=1",
                              "headers": {"Authorization": "Bearer tok"}, "method": "POST", "timeout": 3000,
                              "retry_count": 1}}]})
    assert (await request(port, "GET", "/a")).status == 200
    await wait_until(lambda: collector.requests, "a log request")
    got = collector.requests[0]
    names = {k.lower(): v for k, v in got.headers}
    assert (got.method, got.target) == ("POST", "/log")
    assert names["authorization"] == "Bearer tok" and names["content-type"] == "application/json"
    entry = json.loads(got.body)
    assert isinstance(entry, dict) and entry["request"]["uri"] == "/a"


async def test_docs_tcp_log_udp_log_and_loggly(nursery, gateway):
    """tcp-log examples/enable-tcp-log.yaml, udp-log enable-udp-log.yaml and loggly send-data-to-loggly.yaml: a JSON
    line over TCP, a JSON datagram, and a syslog datagram (<14>1, the key's structured data, tag kong) around the
    same JSON entry."""
    lines: list[bytes] = []

    async def tcp_collector(stream: trio.SocketStream) -> None:
        buf = b""
        async for data in stream:
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                lines.append(line)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    tcp_port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, tcp_collector, listeners)
    udp = UdpCollector()
    await nursery.start(udp.serve)
    loggly = UdpCollector()
    await nursery.start(loggly.serve)
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}")],
                          "plugins": [{"name": "tcp-log", "config": {"host": "127.0.0.1", "port": tcp_port}},
                                      {"name": "udp-log", "config": {"host": "127.0.0.1", "port": udp.port}},
                                      {"name": "loggly", "config": {"key": "abc", "host": "127.0.0.1",
                                                                    "port": loggly.port}}]})
    assert (await request(port, "GET", "/a?b=1")).status == 200
    await wait_until(lambda: lines and udp.datagrams and loggly.datagrams, "the three entries")
    assert json.loads(lines[0])["request"]["querystring"] == {"b": "1"}
    assert json.loads(udp.datagrams[0])["request"]["querystring"] == {"b": "1"}
    text = loggly.datagrams[0].decode()
    assert text.startswith("<14>1 ") and '[abc@41058 tag="kong"] {' in text, text
    json.loads(text.split('tag="kong"] ', 1)[1])


# --- zipkin and opentelemetry propagation -----------------------------------------------------------------------------

@pytest.mark.parametrize("plugin", ["zipkin", "opentelemetry"])
async def test_docs_extract_clear_inject(nursery, gateway, plugin):
    """examples/extract-clear-inject.yaml (both plugins): the b3 trace is extracted, the b3 and uber-trace-id headers
    cleared, and the trace goes on as w3c traceparent."""
    doc = tracing(plugin, extract=["w3c", "b3", "jaeger", "ot", "aws", "datadog"], clear=["b3", "uber-trace-id"],
                  inject=["w3c"], default_format="ot" if plugin == "opentelemetry" else "w3c")
    _, port = await start(nursery, gateway, plugins=[doc])
    got = headers(seen(await call(port, "/", [("b3", f"{TRACE}-{SPAN}-1"),
                                             ("uber-trace-id", f"{TRACE}:{SPAN}:0:1")])))
    assert "b3" not in got and "uber-trace-id" not in got
    (traceparent,) = got["traceparent"]
    assert traceparent.split("-")[1] == TRACE, traceparent


@pytest.mark.parametrize("plugin", ["zipkin", "opentelemetry"])
async def test_docs_ignore_incoming_headers(nursery, gateway, plugin):
    """zipkin examples/ignore-headers.yaml and opentelemetry ignore-incoming-headers.yaml ("No tracing context
    extraction", extract: [], which the opentelemetry example's config leaves out): the incoming traceparent passes
    untouched, and a new trace is injected as b3 and datadog."""
    doc = tracing(plugin, extract=[], inject=["b3", "datadog"],
                  default_format="ot" if plugin == "opentelemetry" else "w3c")
    _, port = await start(nursery, gateway, plugins=[doc])
    incoming = f"00-{TRACE}-{SPAN}-01"
    got = headers(seen(await call(port, "/", [("traceparent", incoming)])))
    assert got["traceparent"] == [incoming]
    assert got["x-b3-traceid"][0] != TRACE and TRACE[16:] not in got["x-b3-traceid"][0]
    assert "x-datadog-trace-id" in got


@pytest.mark.parametrize("plugin", ["zipkin", "opentelemetry"])
async def test_docs_multiple_injection(nursery, gateway, plugin):
    """examples/multiple-injection.yaml (both plugins): a b3 trace is injected in all seven formats, each with the
    trace id in its own size and form."""
    doc = tracing(plugin, extract=["b3"], inject=["w3c", "b3", "jaeger", "ot", "aws", "datadog", "gcp"],
                  default_format="ot" if plugin == "opentelemetry" else "w3c")
    _, port = await start(nursery, gateway, plugins=[doc])
    got = headers(seen(await call(port, "/", [("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN),
                                             ("x-b3-sampled", "1")])))
    assert got["traceparent"][0].split("-")[1] == TRACE
    assert got["x-b3-traceid"] == [TRACE]
    assert got["uber-trace-id"][0].startswith(TRACE + ":")
    assert got["ot-tracer-traceid"] in ([TRACE[16:]], [TRACE])
    assert got["x-amzn-trace-id"][0].startswith("Root=1-" + TRACE[:8] + "-" + TRACE[8:])
    assert got["x-datadog-trace-id"] == [str(int(TRACE[16:], 16))]
    assert got["x-cloud-trace-context"][0].startswith(TRACE + "/")


@pytest.mark.parametrize("plugin", ["zipkin", "opentelemetry"])
async def test_docs_preserve_incoming_format(nursery, gateway, plugin):
    """zipkin examples/preserve-format.yaml and opentelemetry preserve-incoming-format.yaml: the trace goes on in
    the format it came in (jaeger as jaeger, b3 single as b3 single), and as default_format when none came."""
    doc = tracing(plugin, extract=["w3c", "b3", "jaeger", "ot", "aws", "datadog"], inject=["preserve"],
                  default_format="w3c")
    _, port = await start(nursery, gateway, plugins=[doc])
    got = headers(seen(await call(port, "/", [("uber-trace-id", f"{TRACE}:{SPAN}:0:1")])))
    assert got["uber-trace-id"][0].startswith(TRACE + ":") and "traceparent" not in got
    got = headers(seen(await call(port, "/", [("b3", f"{TRACE}-{SPAN}-1")])))
    assert got["b3"][0].startswith(TRACE + "-") and "x-b3-traceid" not in got
    assert "traceparent" in headers(seen(await call(port, "/")))
