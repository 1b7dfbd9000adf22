"""The declarative configuration as msgspec Structs: Kong's format plus a `gateway:` block.

Kong's own field names and units are kept (timeouts in ms on services) so a kong.yml loads unchanged;
fields of our own carry their unit in the name where Kong has no precedent. Unknown keys are errors.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from gateway.config.consumers import Acl, BasicAuthCredential, HmacAuthCredential, JwtSecret, KeyAuthCredential
from gateway.config.discovery import DiscoverySettings, HealthcheckAliases, RegistrationSettings
from gateway.config.errors import inline, key_part
from gateway.config.mcp import McpSettings
from gateway.config.tls import CaCertificateEntity, CertificateEntity, CipherSuite, Ref, SniEntity
from gateway.config.typedefs import any_address, header_name_problem, kong_path_problem, sni_problem
from gateway.config.units import Seconds, SecondsOrNever, TimeoutMs
from gateway.dns.sources import parse_nameserver
from gateway.http.codec import PROXY_BUFFER_SIZE
from gateway.http.kong_errors import TEMPLATE_SETTINGS, read_template
from gateway.http.kong_headers import CHARSET_OFF, KONG_CHARSET, RESPONSE_HEADERS, UPSTREAM_HEADERS, invalid_entries
from gateway.kong_array import kong_array
from gateway.telemetry.tracing import instrumentation_names, tracing_problems

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosInt = Annotated[int, msgspec.Meta(ge=1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]  # typedefs.port: 0 too (a connection to it is refused)
HttpStatus = Annotated[int, msgspec.Meta(ge=100, le=999)]
# A DNS cache lifetime in seconds: Kong's dns_*_ttl are plain numbers (conf_loader/constants.lua), no timer holds them
DnsTtl = Annotated[float, msgspec.Meta(ge=0)]


class Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, dict=True):
    """Every config object rejects unknown keys, so a typo is an error and not a silently ignored setting.

    `dict=True` lets the loader note where each entity came from (`_path`) for error messages.
    """


NGINX_SSL_CIPHERS = "HIGH:!aNULL:!MD5"  # nginx's default ssl_ciphers
# The largest proxy_buffer_size nginx starts with beside Kong's proxy_buffers (nginx's 8 4k): its default
# proxy_busy_buffers_size, twice it, must be at most 7 of those buffers (ngx_http_proxy_module.c:3521-3565)
MAX_PROXY_BUFFER_SIZE = 14336
MAX_UNIX_PATH = 107  # bytes in a Unix socket's path (sun_path holds 108, with the terminating NUL)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110's token: a charset name, written in Content-Type


# --- gateway: block (what Kong keeps in kong.conf) ---------------------------------------------------------------


class AdminCurve(Base):
    """gateway.admin_curve: the CURVE keys of a tcp:// admin endpoint, in zmq.auth's certificate files
    (gateway.bus.curve): the server's NAME.key_secret, and a directory of the clients' public NAME.key it lets in."""

    secret_key_file: str
    authorized_keys: str


class GatewaySettings(Base):
    listen: str | list[str] = "127.0.0.1:8000"
    status_listen: str | None = "127.0.0.1:8100"
    workers: PosInt | None = None  # None: one per CPU
    admin: str = "ipc://run/admin.sock"
    admin_curve: AdminCurve | None = None  # required by a tcp:// admin, refused beside an ipc:// one
    bus: str = "ipc://run/bus.sock"
    pid_file: str = "run/gateway.pid"
    http_codec: Literal["auto", "h11", "llhttp"] = "auto"
    drain_timeout: Seconds = 30.0  # seconds old workers get to finish in-flight requests on reload/stop
    sse_keepalive: Seconds = 15.0  # seconds of SSE silence before the gateway sends a ":" comment
    # a client must send a whole request head within this (408): nginx's client_header_timeout, whose default, 60 s,
    # Kong leaves as it is
    header_timeout_s: Seconds = 60.0
    keepalive_timeout_s: Seconds = 75.0  # idle client connection lifetime (nginx keepalive_timeout)
    # nginx's keepalive_requests (Kong's nginx_http_keepalive_requests: 10000) and keepalive_time: the request that
    # reaches either is answered with `Connection: close`, so long-lived clients are spread again over the workers
    # (keepalive_requests 0, as nginx takes it: every response ends its connection)
    keepalive_requests: NonNegInt = 10000
    keepalive_time_s: Seconds = 3600.0
    client_body_timeout_s: Seconds = 60.0  # between two reads of a request body, else 408 (nginx client_body_timeout)
    send_timeout_s: Seconds = 60.0  # a client that reads nothing of its response for this long is cut (nginx)
    # nginx's large_client_header_buffers (Kong's: 4 8k) as max_header_bytes / max_header_line_bytes buffers of
    # max_header_line_bytes after the 1k first one (gateway.http.codec.check_head_lines): a head they cannot hold, or
    # a header line longer than one, gets 400 "Request header or cookie too large"; a longer request line 414
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 20)] = 32768
    max_header_line_bytes: Annotated[int, msgspec.Meta(ge=256, le=1 << 20)] = 8192
    # nginx's proxy_buffer_size (kong.conf's nginx_proxy_proxy_buffer_size or nginx_http_proxy_buffer_size, in nginx's
    # size syntax: 8k; gateway.config.kong_conf reads it): an upstream's response head must end within it, else 502
    # "upstream sent too big header" (gateway.http.codec.PROXY_BUFFER_SIZE)
    proxy_buffer_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_PROXY_BUFFER_SIZE)] = PROXY_BUFFER_SIZE
    # per worker; beyond it new connections get a fast 503. Not set: derived from the descriptors the worker may open
    # (the soft RLIMIT_NOFILE, raised to the hard one at start): two per connection, some kept back
    max_connections: PosInt | None = None
    # nginx's worker_rlimit_nofile: each worker's RLIMIT_NOFILE (soft and hard) at start; above the hard limit it
    # needs root (CAP_SYS_RESOURCE) and at most fs.nr_open. Not set: the soft limit is raised to the hard one
    worker_rlimit_nofile: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] | None = None
    upstream_keepalive: NonNegInt = 512  # idle pooled connections a worker keeps per pool, LRU (Kong's pool size)
    # kong.conf's DNS client (gateway.dns): the nameservers ("ip[:port]"; none: /etc/resolv.conf's), the hosts file
    # read before them, the record types asked for in turn (LAST: the one that last answered the name), how long an
    # answer is kept (dns_valid_ttl: in place of every record's TTL), used stale while it is asked again, and how long
    # a name error or another failure is remembered; whether concurrent queries for a name go as one; the cache size
    dns_resolver: list[str] | str = []  # a list, or kong.conf's comma-separated string (made a list at load)
    dns_hostsfile: str = "/etc/hosts"
    dns_order: list[str] | str = msgspec.field(default_factory=lambda: ["LAST", "SRV", "A", "CNAME"])
    # (Kong's plain numbers, from 0 without an upper bound: 0 valid_ttl refreshes an answer at each use)
    dns_valid_ttl_s: DnsTtl | None = None
    dns_stale_ttl_s: DnsTtl = 3600.0
    dns_not_found_ttl_s: DnsTtl = 30.0
    dns_error_ttl_s: DnsTtl = 1.0
    dns_no_sync: bool = False
    dns_cache_size: PosInt = 10000
    upstream_idle_timeout_s: SecondsOrNever = 60.0  # (0: kept however long idle)
    upstream_keepalive_max_requests: NonNegInt = 10000  # kong.conf's: a connection's last request (0: no limit)
    log_file: str = "run/gateway.log"  # where a daemonised `gateway start` writes its log
    restart_intensity: NonNegInt = 5  # root supervisor: more than this many restarts ...
    restart_period_s: PosInt = 60  # ... within this many seconds stops the gateway (erlmcp's 5 in 60)
    worker_restart_intensity: NonNegInt = 5  # workers supervisor, per generation; escalates to the root
    worker_restart_period_s: PosInt = 10
    worker_start_timeout_s: Seconds = 15.0
    # A JSON line per request in the shape of Kong's log plugins (gateway.telemetry): false or "off" (Kong's off),
    # true (access.log beside pid_file) or a file path alone (no nginx parameters), in a directory that exists.
    # Every worker appends to the same file; SIGUSR1 reopens it (log rotation).
    access_log: bool | str = False
    # kong.conf's nginx_http_client_body_temp_path (nginx's client_body_temp_path, client_body_temp in Kong's prefix):
    # where request bodies too large for memory are spooled, in unnamed files (gateway.pipeline.request_buffer);
    # relative to the run directory (pid_file's), as nginx's to its prefix; each worker makes it 0700 if missing
    client_body_temp_path: str = "client_body_temp"
    syslog_socket: str = "/dev/log"  # where the syslog plugin sends (a Unix datagram socket; syslog(3)'s is /dev/log)
    # The client address, as kong.conf's settings of the same names (nginx's realip module): a request from a peer
    # in trusted_ips (IPs or CIDRs) takes its client address from real_ip_header (the last address in it, or with
    # real_ip_recursive the last one not itself trusted), and keeps its X-Forwarded-Proto/Host/Port/For.
    trusted_ips: list[str] | str = []  # a list, or kong.conf's comma-separated string (made a list at load)
    real_ip_header: str = "X-Real-IP"
    real_ip_recursive: bool = False
    registration: RegistrationSettings | None = None  # self-registration in Consul/etcd (config/discovery.py)
    mcp: McpSettings = msgspec.field(default_factory=McpSettings)  # session ids, Origin policy (config/mcp.py)
    # TLS on listeners with ` ssl` (config/tls.py), as kong.conf names it: the default certificate (a file, the PEM
    # text or its base64; for clients without SNI or with an unknown one), Mozilla's cipher suites (each with its
    # protocols) or a custom list and protocols, tickets.
    ssl_cert: str | list[str] | None = None  # several (e.g. RSA and ECDSA): a list, or kong.conf's comma-separated
    ssl_cert_key: str | list[str] | None = None  # string of paths; each as ssl_cert_paths reads it
    ssl_protocols: str = "TLSv1.2 TLSv1.3"  # only with ssl_cipher_suite: custom (the other suites name their own)
    ssl_cipher_suite: CipherSuite = "intermediate"
    ssl_ciphers: str | None = None  # OpenSSL cipher list for TLS 1.2, with ssl_cipher_suite: custom
    ssl_session_tickets: bool = True
    ssl_handshake_timeout_s: Seconds = 10.0  # ours: a TLS handshake slower than this is dropped
    # kong.conf's client_ssl: the certificate (a file, the PEM text or its base64) presented to https upstreams whose
    # service and upstream name no client_certificate (gateway.tls_runtime)
    client_ssl: bool = False
    client_ssl_cert: str | None = None
    client_ssl_cert_key: str | None = None
    # kong.conf's: the CAs the gateway's own TLS clients trust (health probes, Redis, log senders, ldap-auth): a list
    # or Kong's comma-separated string of `system`, files, PEM texts or their base64 (gateway.http.tls_contexts);
    # lua_ssl_verify_depth only as OpenSSL's own limit (100): Python's ssl module cannot set another
    lua_ssl_trusted_certificate: list[str] | str = "system"
    lua_ssl_verify_depth: NonNegInt | None = None
    # kong.conf's: whether Lua in plugin configurations runs. The gateway runs none, but renders request-transformer's
    # $(...) templates as Kong's default (sandbox) and `on` do; with `off` Kong fails each request such a template is
    # rendered for (a 500), so a template is refused at load then (gateway.policies.request_transformer.build)
    untrusted_lua: Literal["sandbox", "on", "off"] = "sandbox"
    # kong.conf's: the format of the errors nginx itself answers (502, 504, 400...) to a request with neither an
    # Accept nor a Content-Type header (gateway.http.kong_errors.page_type)
    error_default_type: Literal["text/plain", "text/html", "application/json", "application/xml"] = "text/plain"
    # kong.conf's: a file each whose text replaces Kong's template of that format for the errors the gateway answers
    # itself, its first `%s` the message and its second the request id (gateway.http.kong_errors.templates_of)
    error_template_html: str | None = None
    error_template_json: str | None = None
    error_template_xml: str | None = None
    error_template_plain: str | None = None
    # kong.conf's: the headers added to responses and to proxied requests (gateway.http.kong_headers), a list or
    # Kong's comma-separated string; "off" for none
    headers: list[str] | str = msgspec.field(default_factory=lambda: ["server_tokens", "latency_tokens",
                                                                      "X-Kong-Request-Id"])
    headers_upstream: list[str] | str = msgspec.field(default_factory=lambda: ["X-Kong-Request-Id"])
    # kong.conf's nginx_http_charset (nginx's `charset`, Kong's UTF-8): `; charset=<it>` added to the Content-Type of
    # a response of nginx's charset_types (text/html, text/plain ...) that names none (gateway.http.kong_headers);
    # off (YAML's unquoted off, false, too): none
    charset: str = KONG_CHARSET
    # kong.conf's: which of Kong's tracing instrumentations make spans (a list or Kong's comma-separated string; off,
    # all, request, router, balancer; YAML's unquoted off, false, is off), and the tracer's sampling rate
    # (gateway.telemetry.tracing; the opentelemetry plugin exports them)
    tracing_instrumentations: list[str] | str | bool = "off"
    tracing_sampling_rate: float = 0.01

    def __post_init__(self) -> None:
        self.listen = any_address(self.listen) if isinstance(self.listen, str) else list(map(any_address, self.listen))
        if self.status_listen is not None:
            self.status_listen = any_address(self.status_listen)
        if isinstance(self.trusted_ips, str):  # kong.conf's array form: "10.0.0.0/8, 192.168.0.1"
            self.trusted_ips = kong_array(self.trusted_ips)
        self._check_dns()
        if self.ssl_cipher_suite == "custom" and not self.ssl_ciphers:
            self.ssl_ciphers = NGINX_SSL_CIPHERS  # Kong writes no ssl_ciphers directive then: nginx's default
        for name, known in (("headers", RESPONSE_HEADERS), ("headers_upstream", UPSTREAM_HEADERS)):
            if bad := invalid_entries(getattr(self, name), known):
                raise ValueError(f"{name}: invalid entry {bad[0]!r} (Kong's: {', '.join(known)}, or off)")
        if self.charset != CHARSET_OFF and not _TOKEN.fullmatch(self.charset):
            raise ValueError("charset (kong.conf's nginx_http_charset): expected a charset name (such as UTF-8) or "
                             f"off, got '{inline(self.charset)}'")
        # parse.lua checks both only for a non-empty tracing_instrumentations (empty, kong.conf's `key =`: none)
        if instrumentation_names(self.tracing_instrumentations) and (
                problems := tracing_problems(self.tracing_instrumentations, self.tracing_sampling_rate)):
            raise ValueError("; ".join(problems))
        for name in TEMPLATE_SETTINGS:
            if (path := getattr(self, f"error_template_{name}")) is not None:
                try:
                    read_template(path)
                except ValueError as e:
                    raise ValueError(f"error_template_{name}: {e}") from None
        if len(words := self.client_body_temp_path.split()) != 1:  # nginx's `path [level1 [level2 [level3]]]`
            raise ValueError("client_body_temp_path (kong.conf's nginx_http_client_body_temp_path): expected a "
                             "directory" + (f" alone, got '{inline(self.client_body_temp_path)}': nginx's levels (the "
                                            "words after the path) are not taken, the gateway's body files having no "
                                            "name to spread over subdirectories" if words else ", got nothing"))
        if not 0 < len(self.syslog_socket.encode()) <= MAX_UNIX_PATH:
            raise ValueError(f"syslog_socket: expected the path of a Unix socket, 1 to {MAX_UNIX_PATH} bytes, got "
                             f"{len(self.syslog_socket.encode())} bytes")

    def _check_dns(self) -> None:
        """kong.conf's dns_* as Kong's conf_loader checks them (kong/conf_loader/parse.lua), in its words."""
        if isinstance(self.dns_resolver, str):
            self.dns_resolver = kong_array(self.dns_resolver)
        if isinstance(self.dns_order, str):
            self.dns_order = kong_array(self.dns_order)
        for server in self.dns_resolver:
            try:
                parse_nameserver(server)
            except ValueError:
                raise ValueError("dns_resolver must be a comma separated list in the form of IPv4/6 or IPv4/6:port, "
                                 f"got '{inline(server)}'") from None
        if not os.path.isfile(self.dns_hostsfile):
            raise ValueError(f"dns_hostsfile: file does not exist: {inline(self.dns_hostsfile)}")
        for kind in self.dns_order:
            if kind.upper() not in ("LAST", "A", "AAAA", "CNAME", "SRV"):
                raise ValueError(f"dns_order: invalid entry '{inline(kind)}'")
        if not self.dns_order:
            raise ValueError("dns_order: expected at least one of LAST, SRV, A, AAAA, CNAME")


# --- healthchecks (Kong's upstream schema) --------------------------------------------------------------------------


# Kong's upstream schema: intervals and the probe timeout are seconds, a number from 0 to 65535; the counts are
# one-byte integers, 0 (the check is off) to 255
HealthSeconds = Annotated[float, msgspec.Meta(ge=0, le=65535)]
HealthCount = Annotated[int, msgspec.Meta(ge=0, le=255)]
class ActiveHealthy(Base):
    interval: HealthSeconds = 0  # 0: healthy targets are not probed
    successes: HealthCount = 0
    http_statuses: list[HttpStatus] = msgspec.field(default_factory=lambda: [200, 302])


class ActiveUnhealthy(Base):
    interval: HealthSeconds = 0
    http_failures: HealthCount = 0
    tcp_failures: HealthCount = 0
    timeouts: HealthCount = 0
    http_statuses: list[HttpStatus] = msgspec.field(default_factory=lambda: [429, 404, 500, 501, 502, 503, 504, 505])


class ActiveHealthcheck(Base):
    NULL_REFUSED: ClassVar[frozenset[str]] = frozenset({"https_verify_certificate"})  # Kong's required (decode.py)
    type: Literal["http", "https", "tcp"] = "http"
    http_path: str = "/"
    timeout: HealthSeconds = 1  # Kong's seconds (under 1 ms: ngx's 60 s default, gateway.health.policy)
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=2**31)] = 10
    https_verify_certificate: bool = True
    https_sni: str | None = None
    headers: dict[str, list[str]] | None = None
    healthy: ActiveHealthy = msgspec.field(default_factory=ActiveHealthy)
    unhealthy: ActiveUnhealthy = msgspec.field(default_factory=ActiveUnhealthy)

    def __post_init__(self) -> None:
        problem = kong_path_problem(self.http_path)
        if problem:
            raise ValueError(f"http_path: {problem}")
        if self.https_sni is not None and (problem := sni_problem(self.https_sni)):
            raise ValueError(f"https_sni: {problem}")
        for name, values in (self.headers or {}).items():
            if problem := header_name_problem(name):
                raise ValueError(f"headers: {problem}")
            if "" in values:  # typedefs.headers: each value a string, so not empty
                raise ValueError(f"headers.{key_part(name)}[{values.index('')}]: length must be at least 1")
            if any(c in value for value in values for c in "\r\n\0"):
                raise ValueError(f"headers.{key_part(name)}: a value may not hold a line break or NUL")


class PassiveHealthy(Base):
    successes: HealthCount = 0
    http_statuses: list[HttpStatus] = msgspec.field(
        default_factory=lambda: [200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305,
                                 306, 307, 308])


class PassiveUnhealthy(Base):
    http_failures: HealthCount = 0
    tcp_failures: HealthCount = 0
    timeouts: HealthCount = 0
    http_statuses: list[HttpStatus] = msgspec.field(default_factory=lambda: [429, 500, 503])


class PassiveHealthcheck(Base):
    type: Literal["http", "https", "tcp"] = "http"
    healthy: PassiveHealthy = msgspec.field(default_factory=PassiveHealthy)
    unhealthy: PassiveUnhealthy = msgspec.field(default_factory=PassiveUnhealthy)


class Healthchecks(Base):
    active: ActiveHealthcheck = msgspec.field(default_factory=ActiveHealthcheck)
    passive: PassiveHealthcheck = msgspec.field(default_factory=PassiveHealthcheck)
    threshold: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0
    check: HealthcheckAliases | None = None  # nginx/HAProxy terms: interval rise fall timeout (config/discovery.py)

    def __post_init__(self) -> None:
        # Kong's schema takes 0-255, but the checker it builds for an upstream that uses checks asserts each count
        # is below 255 (lua-resty-healthcheck 3.1.0 healthcheck.lua:1602-1609: 8-bit counters), and without a
        # checker Kong builds no balancer for it (healthcheckers.lua:226-236, 274)
        active, passive = self.active, self.passive
        if not (active.healthy.interval or active.unhealthy.interval or passive.unhealthy.tcp_failures
                or passive.unhealthy.timeouts or passive.unhealthy.http_failures or self.check is not None):
            return
        for kind, check in (("active", active), ("passive", passive)):
            for state, field in _HEALTH_COUNTS:
                if getattr(getattr(check, state), field) == 255:
                    raise ValueError(f"{kind}.{state}.{field}: must be at most 254 on an upstream that uses health "
                                     "checks (Kong's checker keeps each count in 8 bits and refuses 255, leaving "
                                     "the upstream without a balancer)")


_HEALTH_COUNTS = (("healthy", "successes"), ("unhealthy", "tcp_failures"), ("unhealthy", "http_failures"),
                  ("unhealthy", "timeouts"))


# --- entities -------------------------------------------------------------------------------------------------------

HashOn = Literal["none", "consumer", "ip", "header", "cookie", "path", "query_arg", "uri_capture"]


class Target(Base):
    target: str
    upstream: str | None = None  # implied when nested under an upstream
    weight: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 100
    id: str | None = None
    tags: list[str] = []


class Upstream(Base):
    name: str
    algorithm: str = "round-robin"
    hash_on: HashOn = "none"
    hash_fallback: HashOn = "none"
    hash_on_header: str | None = None
    hash_fallback_header: str | None = None
    hash_on_cookie: str | None = None
    hash_on_cookie_path: str = "/"
    hash_on_query_arg: str | None = None
    hash_fallback_query_arg: str | None = None
    hash_on_uri_capture: str | None = None
    hash_fallback_uri_capture: str | None = None
    host_header: str | None = None
    use_srv_name: bool = False  # the Host header of an SRV record's addresses: the record's target, not the name
    panic_mode: bool = False  # ours (Envoy's panic): when every target is unhealthy, use them all instead of 503
    healthchecks: Healthchecks = msgspec.field(default_factory=Healthchecks)
    slots: Annotated[int, msgspec.Meta(ge=10, le=65536)] = 10000
    discovery: DiscoverySettings | None = None  # ours: static / etcd / consul targets (config/discovery.py)
    # the certificate (id) presented to the targets of https services that name none themselves (Kong's)
    client_certificate: str | Ref | None = None
    targets: list[Target] = []
    id: str | None = None
    tags: list[str] = []


class Plugin(Base):
    NULL_REFUSED: ClassVar[frozenset[str]] = frozenset({"enabled", "protocols"})  # Kong's required (decode.py)
    name: str
    service: str | None = None
    route: str | None = None
    consumer: str | None = None
    config: dict[str, Any] = {}
    enabled: bool = True
    protocols: list[str] = msgspec.field(default_factory=lambda: ["grpc", "grpcs", "http", "https"])
    instance_name: str | None = None
    id: str | None = None
    tags: list[str] = []


class NotGiven(list[str]):
    """The default of a list field whose absence Kong tells from an empty list (a route's hosts): empty, and not what
    the file gave. Its one instance is every such default: never change it in place."""

    __slots__ = ()


class Route(Base):
    NULL_REFUSED: ClassVar[frozenset[str]] = frozenset({  # Kong's required fields that have a default (decode.py)
        "protocols", "https_redirect_status_code", "strip_path", "preserve_host", "request_buffering",
        "response_buffering"})
    name: str | None = None
    service: str | None = None  # implied when nested under a service
    created_at: int | None = None  # Kong's (whole seconds), as the file gives it; else the load time is logged
    paths: list[str] = []
    methods: list[str] = []
    # not given (or null) and given as [] differ in Kong's router: an empty list still sets get_priority's plain-host
    # bit (kong/router/transform.lua:609); the shared NotGiven marks the first
    hosts: list[str] = NotGiven()
    # the TLS server names an https request may have come with (a plain one is not asked); null: none, as in Kong
    snis: list[str] | None = None
    headers: dict[str, list[str]] = {}
    query: dict[str, list[str]] = {}  # ours: query argument -> accepted values ([] = present with any value)
    strip_path: bool = True
    preserve_host: bool = False
    regex_priority: int = 0
    # ours: None (default) = MCP session affinity only; true = also header checks, Origin policy, method/tool
    # routing; false = a plain proxy, even Mcp-Session-Id passes untouched
    mcp: bool | None = None
    mcp_methods: list[str] = []  # ours: match the JSON-RPC method (Mcp-Method, or the body); implies mcp
    mcp_tools: list[str] = []  # ours: match the tool name of tools/call (Mcp-Name, or the body); implies mcp
    path_handling: Literal["v0", "v1"] = "v0"
    protocols: list[Literal["http", "https"]] = msgspec.field(default_factory=lambda: ["http", "https"])
    # a route without http among its protocols: a plain HTTP request gets 426, or this redirect to https (Kong)
    https_redirect_status_code: Literal[426, 301, 302, 307, 308] = 426
    request_buffering: bool = True
    response_buffering: bool = True
    plugins: list[Plugin] = []
    id: str | None = None
    tags: list[str] = []


class Service(Base):
    NULL_REFUSED: ClassVar[frozenset[str]] = frozenset({"protocol", "port", "enabled"})  # Kong's required (decode.py)
    name: str | None = None  # Kong's services need no name: an unnamed one is known by its id (or its path)
    created_at: int | None = None  # Kong's (whole seconds), as the file gives it; else the load time is logged
    url: str | None = None
    protocol: Literal["http", "https"] = "http"
    host: str | None = None
    port: Port | None = None  # default 80 (Kong's, whatever the protocol); an https:// url without one: 443
    path: str | None = None
    connect_timeout: TimeoutMs = 60000
    write_timeout: TimeoutMs = 60000
    read_timeout: TimeoutMs = 60000
    retries: Annotated[int, msgspec.Meta(ge=0, le=32767)] = 5
    # protocol https only (Kong's): verify the upstream's certificate (default: no, as Kong's proxy_ssl_verify),
    # against these CA certificates (ids; default: the system's), how deep; the certificate (id) to present.
    tls_verify: bool | None = None
    tls_verify_depth: Annotated[int, msgspec.Meta(ge=0, le=64)] | None = None
    ca_certificates: list[str] | None = None
    client_certificate: str | Ref | None = None
    enabled: bool = True
    routes: list[Route] = []
    plugins: list[Plugin] = []
    id: str | None = None
    tags: list[str] = []


class Consumer(Base):
    """Kong's consumer, with its credentials and plugins nested or top-level (gateway.config.consumers)."""

    username: str | None = None
    custom_id: str | None = None
    jwt_secrets: list[JwtSecret] = []
    created_at: int | None = None  # Kong's (whole seconds), as the file gives it; else the load time is logged
    keyauth_credentials: list[KeyAuthCredential] = []
    basicauth_credentials: list[BasicAuthCredential] = []
    hmacauth_credentials: list[HmacAuthCredential] = []
    acls: list[Acl] = []
    plugins: list[Plugin] = []
    id: str | None = None
    tags: list[str] = []


class Config(Base):
    format_version: Literal["1.1", "2.1", "3.0"] = msgspec.field(default="3.0", name="_format_version")
    transform: bool = msgspec.field(default=True, name="_transform")
    gateway: GatewaySettings = msgspec.field(default_factory=GatewaySettings)
    services: list[Service] = []
    routes: list[Route] = []
    upstreams: list[Upstream] = []
    targets: list[Target] = []
    plugins: list[Plugin] = []
    consumers: list[Consumer] = []
    jwt_secrets: list[JwtSecret] = []
    keyauth_credentials: list[KeyAuthCredential] = []
    basicauth_credentials: list[BasicAuthCredential] = []
    hmacauth_credentials: list[HmacAuthCredential] = []
    acls: list[Acl] = []
    certificates: list[CertificateEntity] = []
    snis: list[SniEntity] = []
    ca_certificates: list[CaCertificateEntity] = []


def ssl_cert_values(value: str | list[str] | None) -> list[str]:
    """kong.conf's ssl_cert / ssl_cert_key as the list Kong's conf loader makes of them: a list as it is, a string of
    PEM text as one item, any other string split at its commas (kong.conf's arrays)."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if "-----BEGIN " in value:
        return [value]
    return kong_array(value)
