"""kong.conf's keys in the `gateway:` section: each key of Kong's kong.conf.default that the gateway does not take
under its own name is refused by name, saying what it is in Kong and what to write here instead; never "unknown
field", never accepted and ignored.

- `ALIASES`: Kong's name of a setting of ours with the same meaning and the same value format; it is taken under
  either name, and a problem with its value names the key as written. Where both names are Kong's, both set is
  what Kong settles (`REPLACED_BY`: the replacement kept); our name beside Kong's is an error.
- `KONG_CONF`: every other key, with why it is refused: either ours under another name (`listen` for proxy_listen)
  or not built (no database, no Admin API, no hybrid mode, no nginx to inject directives into, no Lua ...).
- `ACCEPTED`: the few of those whose value may be the one that says what the gateway does anyway (`database: off`,
  `role: traditional`, `new_dns_client: off` ...): that value passes, any other is refused with the key's message.
- Families by prefix (`nginx_*`, `pg_*`, `cluster_*`, `admin_*` ...) cover Kong's keys that kong.conf.default does
  not list, such as the nginx directives any `nginx_<block>_<directive>` injects.

A refused key set to null (or empty) configures nothing and passes, as a refused entity field does.

A `KONG_<KEY>` environment variable sets kong.conf's `<key>` over the file's value, as in Kong (parse.lua's
overrides: the environment beats the file, which beats the default, name by name): for a key taken here, the
variable's text is the value, read as kong.conf's text is (over the file's value under our own name of the setting
too; of Kong's two names, the replacement wins whichever source gave each); for a refused one, it is refused as the
file key is. Variables that name no kong.conf key are ignored, as Kong ignores them (`KONG_DATADOG_AGENT_HOST` is the
datadog plugin's own).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.config.errors import show
from gateway.config.schema import MAX_PROXY_BUFFER_SIZE, GatewaySettings
from gateway.http.codec import PROXY_BUFFER_SIZE
from gateway.kong_array import kong_array

log = logging.getLogger("gateway.config")

_NOT = "is not supported by the gateway"


def _ours(field: str, how: str) -> str:
    return f"is `{field}` here: {how}"


# --- why, by family ------------------------------------------------------------------------------------------------

_DB = ("the gateway has no database: its configuration is the file given to `gateway start --config` (Kong's "
       "declarative format, as DB-less Kong takes it), applied again by `gateway reload`")
_CACHE = ("the gateway has no database, hence no entity cache: each worker holds the whole configuration in memory, "
          "and `gateway reload` applies a changed file")
_LMDB = "the gateway keeps no LMDB store: each worker holds the whole configuration in memory"
_HYBRID = ("hybrid mode (control plane and data planes) is not built: each gateway loads its own configuration "
           "file, as a traditional DB-less Kong node does (for several hosts, see README's 'Several hosts')")
_ADMIN = ("Kong's Admin API is not built: the configuration is this file, applied by `gateway reload`; the gateway's "
          "own control endpoint is `admin` (ipc://, used by the `gateway` commands)")
_GUI = "Kong Manager is not built (it is a front end of the Admin API, which the gateway does not have)"
_STREAM = "stream (TCP, TLS and UDP) proxying is not built: the gateway proxies HTTP and HTTPS only"
_NGINX = "nginx directives cannot be injected: the gateway is not nginx"
_LUA = "the gateway runs no Lua"
_WASM = "WebAssembly filters and filter chains are not built"
_NEW_DNS = ("Kong's new DNS client (new_dns_client) is not built: the gateway's DNS client is Kong's default one, "
            "set by the dns_* keys (dns_resolver, dns_hostsfile, dns_order, dns_valid_ttl, ...)")
_DEBUG = "Kong's debug listener (debug_listen) is not built"
_PLUGINSERVER = ("external plugin servers (plugins written in Go, JavaScript or Python) are not built: the plugins "
                 "are those the gateway builds (README's Plugins)")
_SSL_PY = "Python's ssl module cannot set it, so OpenSSL's default applies"


def _not(what: str, why: str) -> str:
    return f"({what}) {_NOT}: {why}"


# kong.conf's pg_<setting> and pg_ro_<setting> (the read-only connection's)
_PG = {"host": "host", "port": "port", "timeout": "timeout", "user": "user", "password": "password",
       "database": "database", "schema": "schema", "ssl": "TLS", "ssl_verify": "certificate verification",
       "max_concurrent_queries": "concurrent queries", "semaphore_timeout": "wait for a query slot",
       "keepalive_timeout": "idle timeout", "pool_size": "pool size", "backlog": "queue of waiting queries"}

KONG_CONF: dict[str, str] = {
    # GENERAL
    "prefix": _ours("pid_file", "the run directory (config copies, metrics, the key file) is the directory of "
                                "`pid_file` (e.g. `pid_file: /usr/local/kong/gateway.pid`), and the log is `log_file`"),
    "log_level": ("is the command line's `--log-level` here, not a config key: `gateway --log-level WARNING start "
                  "--config FILE` (DEBUG, INFO, the default, WARNING or ERROR)"),
    "proxy_access_log": _ours("access_log", "`access_log: /var/log/gateway/access.log` (true: access.log beside "
                                            "pid_file; false, the default: none, Kong's off); each line is a JSON "
                                            "object in the shape of Kong's log plugins, not nginx's access-log line"),
    "proxy_error_log": _ours("log_file", "where a daemonised `gateway start` writes what all its processes log "
                                         "(with --foreground: standard error); its level is `--log-level`"),
    "proxy_stream_access_log": _not("the access log of stream proxying", _STREAM),
    "proxy_stream_error_log": _not("the error log of stream proxying", _STREAM),
    "admin_access_log": _not("the Admin API's access log", _ADMIN),
    "admin_error_log": _not("the Admin API's error log", _ADMIN),
    "status_access_log": _not("the Status API's access log", "the status server (`status_listen`) logs no "
                                                             "requests"),
    "status_error_log": _not("the Status API's error log", "the status server's errors go to `log_file` with "
                                                           "everything the gateway logs"),
    "vaults": _not("the vaults a node loads", "the gateway has the vault Kong OSS bundles, env, always loaded, "
                                              "configured by `vaults` entries; Kong's other vaults are Enterprise"),
    "plugins": _not("the plugins a node loads", "the gateway loads every plugin it builds (README's Plugins): one is "
                                                "enabled by configuring it, one it does not build is refused where "
                                                "it is configured, and custom plugins cannot be added"),
    "dedicated_config_processing": _not("a worker process for a data plane's configuration updates", _HYBRID),
    "pluginserver_names": _not("the external plugin servers to start", _PLUGINSERVER),
    "port_maps": _not("the ports a container maps to the ones Kong listens on",
                      "X-Forwarded-Port, routes' ports and the log's port are the port the gateway listens on"),
    "anonymous_reports": _not("usage reports sent to Kong Inc.", "the gateway reports nothing to anyone"),
    "proxy_server": _not("a forward proxy for Kong's connections to a control plane, with cluster_use_proxy",
                         "the gateway's own clients (health probes, log senders, Redis, ...) connect directly"),
    "proxy_server_ssl_verify": _not("TLS verification of proxy_server", "the gateway's own clients use no forward "
                                                                         "proxy"),
    # HYBRID MODE
    "role": _not("hybrid mode's role of the node", _HYBRID),
    "cluster_mtls": _not("how hybrid mode's nodes verify each other", _HYBRID),
    "cluster_cert": _not("hybrid mode's certificate", _HYBRID),
    "cluster_cert_key": _not("hybrid mode's certificate key", _HYBRID),
    "cluster_ca_cert": _not("hybrid mode's CA certificate", _HYBRID),
    "cluster_server_name": _not("the SNI a data plane sends to its control plane", _HYBRID),
    "cluster_control_plane": _not("a data plane's control plane", _HYBRID),
    "cluster_max_payload": _not("the largest configuration a control plane sends", _HYBRID),
    "cluster_dp_labels": _not("a data plane's labels for Konnect", _HYBRID),
    "cluster_listen": _not("a control plane's listener for data planes", _HYBRID),
    "cluster_data_plane_purge_delay": _not("how long a control plane remembers an offline data plane", _HYBRID),
    "cluster_ocsp": _not("OCSP checks of data planes' certificates", _HYBRID),
    "cluster_use_proxy": _not("hybrid mode's connections through proxy_server", _HYBRID),
    # NGINX
    "proxy_listen": _ours("listen", '`listen: ["0.0.0.0:8000", "0.0.0.0:8443 ssl"]` (a list, or one "host:port"); '
                                    "its suffixes `ssl`, `proxy_protocol`, `reuseport`, `backlog=N`, `deferred`, "
                                    "`bind`, `ipv6only=` and `so_keepalive=` are taken, `http2` is not (HTTP/2 is not "
                                    "built: remove the word), and there is no off"),
    "stream_listen": _not("the listeners of stream proxying", _STREAM),
    "admin_listen": _not("the Admin API's listeners", _ADMIN),
    "nginx_user": _not("the user and group of nginx's workers", f"{_NGINX}; its processes run as the user that "
                                                                 "starts it"),
    "nginx_daemon": ("is how `gateway start` is run here, not a config key: it runs as a daemon, and `gateway start "
                     "--foreground` stays in the foreground (Kong's nginx_daemon = off)"),
    "mem_cache_size": _not("the size of Kong's entity caches", _CACHE),
    "ssl_prefer_server_ciphers": _not("nginx's ssl_prefer_server_ciphers", "TLS listeners always prefer their own "
                                                                           "cipher order (OpenSSL's "
                                                                           "SSL_OP_CIPHER_SERVER_PREFERENCE)"),
    "ssl_dhparam": _not("DH parameters for the DHE ciphers", "the intermediate suite uses RFC 7919's ffdhe2048, as "
                                                             "Kong's; no other parameters can be set"),
    "ssl_session_timeout": _not("how long a TLS session may be resumed", _SSL_PY),
    "ssl_session_cache_size": _not("the size of nginx's shared TLS session cache",
                                   f"{_SSL_PY} (each worker process keeps its own sessions)"),
    "admin_ssl_cert": _not("the certificates of the Admin API's TLS listeners", _ADMIN),
    "admin_ssl_cert_key": _not("the keys of the Admin API's TLS listeners", _ADMIN),
    "status_ssl_cert": _not("the certificates of the Status API's TLS listeners", "the status server "
                                                                                  "(`status_listen`) speaks plain "
                                                                                  "HTTP only"),
    "status_ssl_cert_key": _not("the keys of the Status API's TLS listeners", "the status server (`status_listen`) "
                                                                              "speaks plain HTTP only"),
    "debug_ssl_cert": _not("the certificates of the debug listener", _DEBUG),
    "debug_ssl_cert_key": _not("the keys of the debug listener", _DEBUG),
    "allow_debug_header": _not("Kong-Debug: 1 answered with the route's and service's ids and names",
                               "the gateway adds no such headers"),
    # NGINX injected directives
    "nginx_main_worker_rlimit_nofile": _ours("worker_rlimit_nofile", "`worker_rlimit_nofile: 16384` (nginx's "
                                                                     "worker_rlimit_nofile); leave it unset in "
                                                                     "place of auto: the soft limit is then raised to "
                                                                     "the hard one (Kong's auto: ulimit -n, 1024 to "
                                                                     "16384)"),
    "nginx_events_worker_connections": _ours("max_connections", "`max_connections: 16384`, counted as clients "
                                                                "(each proxied one also holds an upstream "
                                                                "connection, which nginx counts too), and a "
                                                                "client beyond it gets a fast 503; leave it unset "
                                                                "in place of auto: it is then derived from the "
                                                                "descriptor limit"),
    "nginx_http_client_header_buffer_size": _not("nginx's first buffer for a request head", f"{_NGINX}; a request "
                                                                                            "head's limits are "
                                                                                            "`max_header_bytes` and "
                                                                                            "`max_header_line_bytes`"),
    "nginx_http_large_client_header_buffers": _ours("max_header_bytes` and `max_header_line_bytes",
                                                    "nginx's `4 8k` is `max_header_bytes: 32768` (the 4 buffers' "
                                                    "total) with `max_header_line_bytes: 8192` (one buffer), the "
                                                    "defaults"),
    "nginx_http_client_max_body_size": _not("nginx's limit on request bodies", f"{_NGINX}; a limit is the "
                                                                              "request-size-limiting plugin here "
                                                                              "(a global one: no service or route)"),
    "nginx_admin_client_max_body_size": _not("the Admin API's limit on request bodies", _ADMIN),
    "nginx_http_client_body_buffer_size": _not("nginx's buffer for request bodies, other than Kong's default 8k",
                                               f"{_NGINX}; a body a route buffers (`request_buffering`, the default) "
                                               "is kept in memory up to 8 KiB, beyond that whole in an unnamed "
                                               "temporary file (nginx's client_body_temp_path), as with Kong's 8k, "
                                               "and the plugins that read a body from memory (hmac-auth, ai-prompt-*, "
                                               "request-termination's echo) read what an 8k buffer holds; with "
                                               "`request_buffering: false` it streams to the upstream as it arrives"),
    "nginx_admin_client_body_buffer_size": _not("the Admin API's buffer for request bodies", _ADMIN),
    "nginx_http_lua_regex_match_limit": _not("PCRE's match limit for Lua's regexes", f"{_LUA}: the plugins that run "
                                             "PCRE (bot-detection, ai-prompt-guard, cors) use Kong's default limit, "
                                             "100000, which is not configurable"),
    "nginx_http_lua_regex_cache_max_entries": _not("the cache of Lua's compiled regexes", f"{_LUA}: each configured "
                                                   "regex is compiled once, when the config loads; there is no cache "
                                                   "to size"),
    # DATASTORE
    "database": _not("the database Kong keeps its entities in", _DB),
    **{f"pg_{ro}{name}": _not(f"the {'read-only ' if ro else ''}Postgres connection's {what}", _DB)
       for ro in ("", "ro_") for name, what in _PG.items()},
    "declarative_config": ("is the configuration file itself here: `gateway start --config FILE` (Kong's "
                           "declarative format with this `gateway:` section)"),
    "declarative_config_string": _not("the declarative configuration as a string", "the configuration is the file "
                                                                                    "given to `gateway start "
                                                                                    "--config`"),
    "lmdb_environment_path": _not("where DB-less Kong keeps its configuration in LMDB", _LMDB),
    "lmdb_map_size": _not("the size of DB-less Kong's LMDB store", _LMDB),
    # DATASTORE CACHE
    "db_update_frequency": _not("how often Kong polls the database for changed entities", _CACHE),
    "db_update_propagation": _not("the replication delay of the database", _CACHE),
    "db_cache_ttl": _not("how long a cached entity is kept", _CACHE),
    "db_cache_neg_ttl": _not("how long a database miss is cached", _CACHE),
    "db_resurrect_ttl": _not("how long stale entities are used while the database is unreachable", _CACHE),
    "db_cache_warmup_entities": _not("the entities loaded into the cache at start", f"{_CACHE} (all of it is "
                                                                                    "loaded at start)"),
    # DNS RESOLVER
    "new_dns_client": _not("Kong's new DNS client", _NEW_DNS),
    "resolver_address": _not("the new DNS client's nameservers", f"{_NEW_DNS}; dns_resolver names the "
                                                                 "nameservers"),
    "resolver_hosts_file": _not("the new DNS client's hosts file", f"{_NEW_DNS}; dns_hostsfile is the hosts file"),
    "resolver_family": _not("the record types the new DNS client asks for", _NEW_DNS),
    "resolver_valid_ttl": _not("the new DNS client's TTL override", f"{_NEW_DNS}; dns_valid_ttl is its TTL override"),
    "resolver_error_ttl": _not("how long the new DNS client caches an error", _NEW_DNS),
    "resolver_stale_ttl": _not("how long the new DNS client uses a record past its TTL", _NEW_DNS),
    "resolver_lru_cache_size": _not("the size of the new DNS client's per-worker cache", _NEW_DNS),
    "resolver_mem_cache_size": _not("the size of the new DNS client's shared cache", _NEW_DNS),
    # VAULTS
    "vault_env_prefix": ("is read from the environment variable KONG_VAULT_ENV_PREFIX here, as Kong reads it (the "
                         "env vault's default prefix), not from the file: set the variable, or give the prefix in a "
                         "`vaults` entry (`vaults: [{name: env, prefix: my-env, config: {prefix: APP_}}]` makes "
                         "`{vault://my-env/token}` read APP_TOKEN) or in the reference "
                         "(`{vault://env/token?prefix=APP_}`)"),
    # TUNING & BEHAVIOR
    "worker_consistency": _not("whether workers rebuild the router at once or in the background",
                               "a configuration is applied by `gateway reload`: each new generation of workers "
                               "starts with it whole"),
    # Kong's keys from kong_defaults.lua and constants.lua's CONF_PARSERS that kong.conf.default does not list
    "router_consistency": _not("the deprecated name of worker_consistency",
                               "a configuration is applied by `gateway reload`: each new generation of workers "
                               "starts with it whole"),
    "privileged_worker": _not("the deprecated name of dedicated_config_processing", _HYBRID),
    "_debug_pg_ttl_cleanup_interval": _not("a Postgres debugging setting", _DB),
    "worker_events_max_payload": _not("the largest payload of Kong's worker events",
                                      "workers share state through the state keeper's bus, whose messages have no "
                                      "such limit to set"),
    "client_body_buffer_size": _not("the name nginx_http_client_body_buffer_size had before Kong 3.0, which removed "
                                    "it: Kong 3 sets nothing from it",
                                    "the buffer is nginx_http_client_body_buffer_size, whose default, 8k, is what "
                                    "the gateway does: a body a route buffers is kept in memory up to 8 KiB, beyond "
                                    "that whole in an unnamed temporary file"),
    "host_ports": _not("the ports a container maps to the ones Kong listens on (port_maps' older form)",
                       "X-Forwarded-Port, routes' ports and the log's port are the port the gateway listens on"),
    "kic": _not("whether Kong runs under the Kong Ingress Controller", "the gateway is configured by its file, "
                                                                       "applied by `gateway reload`"),
    "worker_state_update_frequency": _not("how often workers look for changed entities", "there is no database to "
                                                                                        "look at: a changed "
                                                                                        "configuration is applied "
                                                                                        "by `gateway reload`"),
    "router_flavor": _not("the router implementation", "the gateway's router is Kong's default, "
                                                       "traditional_compatible; expression routes (expressions) and "
                                                       "the pre-3.0 traditional router are not built"),
    "lua_max_req_headers": _not("how many request headers plugins read", "plugins read the first 100, Kong's "
                                                                         "default, which cannot be changed"),
    "lua_max_resp_headers": _not("how many response headers plugins read", "it cannot be set"),
    "lua_max_uri_args": _not("how many query arguments plugins read", "plugins read the first 100, Kong's default, "
                                                                      "which cannot be changed"),
    "lua_max_post_args": _not("how many form arguments plugins read", "plugins read the first 100, Kong's default, "
                                                                      "which cannot be changed"),
    # MISCELLANEOUS
    "lua_ssl_protocols": _not("the TLS versions of Kong's own TLS clients", "the gateway's own TLS clients (health "
                                                                            "probes, Redis, log senders, ...) speak "
                                                                            "TLSv1.2 and TLSv1.3, Kong's default, "
                                                                            "which cannot be changed"),
    "lua_package_path": _not("the Lua module search path", _LUA),
    "lua_package_cpath": _not("the Lua C module search path", _LUA),
    "lua_socket_pool_size": _not("the size of each Lua socket pool", f"{_LUA}; each of its own clients keeps its "
                                                                     "own connections"),
    "untrusted_lua_sandbox_requires": _not("the modules sandboxed Lua may require", _LUA),
    "untrusted_lua_sandbox_environment": _not("the globals sandboxed Lua may use", _LUA),
    "openresty_path": _not("the OpenResty installation Kong runs on", "the gateway is a Python program, not "
                                                                      "OpenResty"),
    "node_id": _not("this node's id", "the gateway's node id is derived from the host name and the run directory "
                                      "(the directory of `pid_file`), so it is stable across restarts"),
    # KONG MANAGER
    "admin_gui_listen": _not("Kong Manager's listeners", _GUI),
    "admin_gui_url": _not("Kong Manager's URL", _GUI),
    "admin_gui_path": _not("Kong Manager's base path", _GUI),
    "admin_gui_api_url": _not("the Admin API's URL for Kong Manager", _GUI),
    "admin_gui_csp_header": _not("Kong Manager's Content-Security-Policy header", _GUI),
    "admin_gui_ssl_cert": _not("the certificate of Kong Manager's TLS listeners", _GUI),
    "admin_gui_ssl_cert_key": _not("the key of Kong Manager's TLS listeners", _GUI),
    "admin_gui_access_log": _not("Kong Manager's access log", _GUI),
    "admin_gui_error_log": _not("Kong Manager's error log", _GUI),
    # WEBASSEMBLY
    "wasm": _not("WebAssembly support", _WASM),
    "wasm_filters_path": _not("the directory of WebAssembly filters", _WASM),
    "wasm_filters": _not("the WebAssembly filters available", _WASM),
    # REQUEST DEBUGGING
    "request_debug": _not("timings of a request answered to X-Kong-Request-Debug", "the gateway does not answer "
                                                                                  "X-Kong-Request-Debug"),
    "request_debug_token": _not("the token X-Kong-Request-Debug-Token must carry", "the gateway does not answer "
                                                                                   "X-Kong-Request-Debug"),
}

# Kong's names of settings of ours with the same meaning and value format: taken under either name.
ALIASES: dict[str, str] = {
    "opentelemetry_tracing": "tracing_instrumentations",  # Kong's deprecated name of it (conf_loader's alias)
    "opentelemetry_tracing_sampling_rate": "tracing_sampling_rate",  # likewise
    "upstream_keepalive_pool_size": "upstream_keepalive",  # idle connections kept per pool; 0: none
    "upstream_keepalive_idle_timeout": "upstream_idle_timeout_s",  # seconds; 0: kept however long idle
    "nginx_http_keepalive_requests": "keepalive_requests",  # nginx's keepalive_requests
    "nginx_http_charset": "charset",  # nginx's charset (Kong's UTF-8; off: none)
    "nginx_http_client_body_temp_path": "client_body_temp_path",  # nginx's (relative: to the prefix, our run dir)
    "dns_valid_ttl": "dns_valid_ttl_s",  # seconds, in place of every record's TTL
    "dns_stale_ttl": "dns_stale_ttl_s",
    "dns_not_found_ttl": "dns_not_found_ttl_s",
    "dns_error_ttl": "dns_error_ttl_s",
    # the nginx directives kong.conf's keys of ours stand for (constants.lua's CONF_PARSERS: real_ip_header and
    # real_ip_recursive are their aliases, ssl_protocols and ssl_session_tickets fill them): given, they are the setting
    "nginx_proxy_real_ip_header": "real_ip_header",
    "nginx_proxy_real_ip_recursive": "real_ip_recursive",
    "nginx_http_ssl_protocols": "ssl_protocols",
    "nginx_http_ssl_session_tickets": "ssl_session_tickets",
    # nginx's worker_processes: a number, or auto (one per CPU, nginx.c's ngx_ncpu), which is `workers` unset
    # (kong_value); Kong's nginx_worker_processes is its older name (constants.lua's alias)
    "nginx_main_worker_processes": "workers",
    "nginx_worker_processes": "workers",
    # nginx's proxy_buffer_size where it reaches every route: Kong's proxy server block, or the http block above it
    "nginx_proxy_proxy_buffer_size": "proxy_buffer_size",
    "nginx_http_proxy_buffer_size": "proxy_buffer_size",
}
# Kong's two names of one setting here, each older or wider name with the one Kong's nginx obeys when both have a
# value, from the file or a KONG_ variable (parse.lua's overrides merge them name by name first): init.lua:62-78
# aliased_properties copies an alias to its replacement only when that is nil, :107-124 dynamic_properties fills a
# directive only when it is not given, and nginx's proxy server block (nginx_kong.lua:135) overrides the http
# block's directive (:42)
REPLACED_BY: dict[str, str] = {
    "opentelemetry_tracing": "tracing_instrumentations",  # constants.lua:529-537, alias
    "opentelemetry_tracing_sampling_rate": "tracing_sampling_rate",  # :543-551, alias
    "real_ip_header": "nginx_proxy_real_ip_header",  # :324-329, alias
    "real_ip_recursive": "nginx_proxy_real_ip_recursive",  # :330-335, alias
    "nginx_worker_processes": "nginx_main_worker_processes",  # :305-310, alias
    "ssl_protocols": "nginx_http_ssl_protocols",  # :428-434, directives
    "ssl_session_tickets": "nginx_http_ssl_session_tickets",  # :449-455, directives
    "nginx_http_proxy_buffer_size": "nginx_proxy_proxy_buffer_size",  # the server block's over the http block's
}

# kong/conf_loader/constants.lua's CONF_PARSERS typ of the keys taken here (ours and aliases, as written), read as
# parse.lua's parse_value reads kong.conf's text: a boolean from on/off/true/false, a number from its digits (any
# other text is left to the decoder, which refuses it naming the key)
KONG_TYPES: dict[str, str] = {
    **dict.fromkeys(("client_ssl", "ssl_session_tickets", "real_ip_recursive", "nginx_proxy_real_ip_recursive",
                     "nginx_http_ssl_session_tickets"), "boolean"),
    **dict.fromkeys(("dns_no_sync",), "boolean"),
    **dict.fromkeys(("dns_valid_ttl", "dns_stale_ttl", "dns_not_found_ttl", "dns_error_ttl", "dns_cache_size"),
                    "number"),
    **dict.fromkeys(("upstream_keepalive_max_requests", "upstream_keepalive_pool_size",
                     "upstream_keepalive_idle_timeout", "lua_ssl_verify_depth", "tracing_sampling_rate",
                     "opentelemetry_tracing_sampling_rate", "nginx_http_keepalive_requests"), "number"),
}
_BOOLEANS = {"on": True, "true": True, "off": False, "false": False}
# kong.conf's `nginx_<block>_<directive> = NONE` writes no directive (parse.lua's parse_nginx_directives), so nginx's
# default holds: for the keys that are settings of ours, nginx's default value; the ones refused otherwise pass when
# no directive is what the gateway does (no ssl_conf_command; no stream block at all).
NGINX_NONE: dict[str, Any] = {
    "nginx_http_charset": "off",  # ngx_http_charset_filter_module: charset off
    "nginx_http_keepalive_requests": 1000,  # ngx_http_core_module.c
    "nginx_http_client_body_temp_path": "client_body_temp",  # auto/options' NGX_HTTP_CLIENT_TEMP_PATH
    "nginx_proxy_real_ip_header": "X-Real-IP",  # ngx_http_realip_module.c
    "nginx_proxy_real_ip_recursive": False,
    "nginx_http_ssl_protocols": "TLSv1.2 TLSv1.3",  # ngx_event_openssl.h's NGX_SSL_DEFAULT_PROTOCOLS
    "nginx_http_ssl_session_tickets": True,  # ngx_http_ssl_module.c
    "nginx_main_worker_processes": 1,  # nginx.c's ngx_core_module_init_conf
    "nginx_worker_processes": 1,
    "nginx_proxy_proxy_buffer_size": PROXY_BUFFER_SIZE,  # ngx_http_proxy_module.c: one page
    "nginx_http_proxy_buffer_size": PROXY_BUFFER_SIZE,
}
_NONE_PASSES = re.compile(r"nginx_(?:stream_.+|.+_ssl_conf_command)")
# our keys (and aliases) whose kong.conf value may be the word `off` (a list's entry too): YAML reads it unquoted as
# false. (tracing_instrumentations and its alias take false itself; the refused keys' `off` is read by `_words`.)
_OFF_WORD = frozenset(("headers", "headers_upstream", "status_listen", "listen", "charset", "nginx_http_charset",
                       "untrusted_lua"))
# ... and those whose `off` (the word, as kong.conf writes it) is our false: prefix_handler.lua's `~= "off"`
_OFF_FALSE = frozenset(("access_log",))
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# `number` keys whose Kong default is NONE (kong_defaults.lua): their text NONE is tonumber("NONE"), nil: unset
_NONE_UNSET = frozenset(("dns_valid_ttl",))
# nginx's worker_processes: `auto` is one worker per CPU, what `workers` unset is; a number is taken as it is
_WORKER_PROCESSES = frozenset(("nginx_main_worker_processes", "nginx_worker_processes"))
_DIGITS = re.compile(r"[0-9]+")  # ngx_atoi's
# nginx's proxy_buffer_size, under our name and Kong's: a number, or nginx's size text (ngx_parse_size: bytes, or
# KiB or MiB with k or m)
_SIZES = frozenset(("proxy_buffer_size", "nginx_proxy_proxy_buffer_size", "nginx_http_proxy_buffer_size"))
_SIZE = re.compile(r"([0-9]+)([kKmM]?)")
_UNIT_SHIFT = {"": 0, "k": 10, "m": 20}

# The values of refused keys that say what the gateway does anyway (each a set of words, Kong's lists being
# comma-separated): they pass.
ACCEPTED: dict[str, tuple[str, ...]] = {
    "database": ("off",),
    "role": ("traditional",),
    "stream_listen": ("off",),
    "admin_listen": ("off",),
    "admin_gui_listen": ("off",),
    "status_access_log": ("off",),  # Kong's default
    "anonymous_reports": ("off",),
    "allow_debug_header": ("off",),  # Kong's default
    "request_debug": ("off",),
    "wasm": ("off",),  # Kong's default
    "vaults": ("bundled", "env", "bundled env"),  # Kong OSS bundles the env vault only (kong/constants.lua)
    "plugins": ("bundled",),
    "router_flavor": ("traditional_compatible",),  # Kong's default
    "ssl_prefer_server_ciphers": ("on",),  # Kong's default
    "lua_ssl_protocols": ("TLSv1.2 TLSv1.3",),  # Kong's default
    "new_dns_client": ("off",),  # Kong's default
    "lua_max_req_headers": ("100",),  # Kong's default
    "lua_max_uri_args": ("100",),  # Kong's default
    "lua_max_post_args": ("100",),  # Kong's default
    "nginx_http_client_max_body_size": ("0", "0k", "0m"),  # Kong's default: no limit
    "nginx_http_client_body_buffer_size": ("8k", "8192"),  # Kong's default: request_buffer.MEMORY_LIMIT
    "client_body_buffer_size": ("8k", "8192"),  # (Kong's kong_defaults.lua still lists it, with 8k)
    "nginx_http_lua_regex_match_limit": ("100000",),  # Kong's default: the limit the gateway's PCRE runs use
}

# Keys whose value passes when its words are any of these: nginx's proxy_ignore_headers naming headers the gateway
# never acts on anyway (the ones nginx's cache reads, which Kong does not use, and X-Accel-Redirect, which the gateway
# does not follow: Kong's users set `nginx_location_proxy_ignore_headers = X-Accel-Redirect` for that)
_IGNORED_ANYWAY = frozenset(("x-accel-redirect", "x-accel-expires", "expires", "cache-control", "set-cookie", "vary"))
ACCEPTED_ANY_OF: dict[str, frozenset[str]] = {
    f"nginx_{block}_proxy_ignore_headers": _IGNORED_ANYWAY for block in ("http", "proxy", "location")}

# Kong's keys that kong.conf.default does not list, by family.
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("pg_", _not("a Postgres setting", _DB)),
    ("cassandra_", _not("a Cassandra setting", _DB)),
    ("db_", _not("a database cache setting", _CACHE)),
    ("lmdb_", _not("an LMDB setting", _LMDB)),
    ("cluster_", _not("a hybrid mode setting", _HYBRID)),
    ("admin_gui_", _not("a Kong Manager setting", _GUI)),
    ("admin_", _not("an Admin API setting", _ADMIN)),
    ("pluginserver_", _not("a plugin server setting", _PLUGINSERVER)),
    ("vault_", _not("a setting of Kong's vaults", "the gateway has the env vault, configured by `vaults` entries "
                                                  "and references; Kong's other vaults are Enterprise")),
    ("wasm_", _not("a WebAssembly setting", _WASM)),
    ("resolver_", _not("a setting of the new DNS client", _NEW_DNS)),
    ("untrusted_lua", _not("a setting of Lua code in plugin configurations", _LUA)),
    ("debug_", _not("a setting of the debug listener", _DEBUG)),
)
# Kong's nginx_<block>_<directive> keys inject the directive into that block of nginx.conf.
_NGINX_KEY = re.compile(r"nginx_(main|events|http|proxy|location|upstream|admin|status|debug|stream|sproxy|"
                        r"supstream|wasm)_(.+)")
_NGINX_BLOCKS = {"admin": f"; {_ADMIN}", "debug": f"; {_DEBUG}", "wasm": f"; {_WASM}", "stream": f"; {_STREAM}",
                 "sproxy": f"; {_STREAM}", "supstream": f"; {_STREAM}"}
# what the gateway has in place of nginx's directives on the proxy path (Kong's upstream block: to upstreams)
_NGINX_EQUIVALENTS = {
    "worker_processes": "`workers`",
    "worker_rlimit_nofile": "`worker_rlimit_nofile`",
    "worker_connections": "`max_connections` (client connections per worker, a fast 503 beyond)",
    "keepalive_timeout": "`keepalive_timeout_s` (seconds)",
    "keepalive_requests": "`keepalive_requests`",
    "keepalive_time": "`keepalive_time_s` (seconds)",
    "client_header_timeout": "`header_timeout_s` (seconds)",
    "client_body_timeout": "`client_body_timeout_s` (seconds)",
    "send_timeout": "`send_timeout_s` (seconds)",
    "large_client_header_buffers": "`max_header_bytes` and `max_header_line_bytes`",
    "client_max_body_size": "the request-size-limiting plugin",
    "client_body_temp_path": "`client_body_temp_path` (kong.conf's nginx_http_client_body_temp_path)",
    "proxy_request_buffering": "a route's `request_buffering`",
    "proxy_buffering": "a route's `response_buffering` (responses are relayed as they arrive either way)",
    # (Kong's location block is that of the routes that buffer both ways only: the setting is every route's)
    "proxy_buffer_size": "`proxy_buffer_size`, every route's (kong.conf's nginx_proxy_proxy_buffer_size)",
    "ssl_protocols": "`ssl_protocols`, with `ssl_cipher_suite: custom`",
    "ssl_ciphers": "`ssl_ciphers`, with `ssl_cipher_suite: custom`",
    "ssl_session_tickets": "`ssl_session_tickets`",
    "set_real_ip_from": "`trusted_ips`",
    "real_ip_header": "`real_ip_header`",
    "real_ip_recursive": "`real_ip_recursive`",
    "access_log": "`access_log` (JSON lines)",
    "error_log": "`log_file`",
}
_NGINX_UPSTREAM_EQUIVALENTS = {
    "keepalive": "`upstream_keepalive`",
    "keepalive_requests": "`upstream_keepalive_max_requests`",
    "keepalive_timeout": "`upstream_idle_timeout_s` (seconds)",
}
_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(GatewaySettings))
# kong.conf's keys that are fields here under the same name (the others of ours, `listen`, `workers`, `bus` ..., are
# not kong.conf's: no KONG_ variable sets them)
KONG_KEYS = frozenset((
    "client_ssl", "client_ssl_cert", "client_ssl_cert_key", "dns_cache_size", "dns_hostsfile", "dns_no_sync",
    "dns_order", "dns_resolver", "error_default_type", "error_template_html", "error_template_json",
    "error_template_plain", "error_template_xml", "headers", "headers_upstream", "lua_ssl_trusted_certificate",
    "lua_ssl_verify_depth", "real_ip_header", "real_ip_recursive", "ssl_cert", "ssl_cert_key", "ssl_cipher_suite",
    "ssl_ciphers", "ssl_protocols", "ssl_session_tickets", "status_listen", "tracing_instrumentations",
    "tracing_sampling_rate", "trusted_ips", "untrusted_lua", "upstream_keepalive_max_requests"))
# Kong's keys in kong_defaults.lua that neither kong.conf.default nor a dynamic namespace covers
_UNLISTED = frozenset(("cluster_cjson", "cluster_rpc", "cluster_rpc_sync", "wasm_dynamic_module"))
# conf_loader/constants.lua's DYNAMIC_KEY_NAMESPACES: any KONG_<namespace>_<name> variable is a key of Kong's
_DYNAMIC = re.compile(r"(?:nginx_(?:main|events|http|upstream|proxy|location|status|admin|stream|supstream|sproxy|"
                      r"wasm)|pluginserver|vault)_.+")
ENVIRONMENT_PREFIX = "KONG_"
VAULT_ENV_PREFIX = "vault_env_prefix"  # read by the env vault itself (gateway.config.vaults), not a setting here


def refusal(key: str) -> str | None:
    """Why kong.conf's `key` is refused (what it is in Kong, and what the gateway has instead), or None when it is
    not one of Kong's (a field of ours, an alias, or unknown)."""
    if key in _FIELDS or key in ALIASES:
        return None
    why = KONG_CONF.get(key)
    if why is not None:
        return why
    m = _NGINX_KEY.fullmatch(key)
    if m is not None:
        block, directive = m.groups()
        if block in _NGINX_BLOCKS:
            return _not(f"nginx's {directive} in Kong's {block} block", _NGINX + _NGINX_BLOCKS[block])
        equivalent = (_NGINX_UPSTREAM_EQUIVALENTS if block == "upstream" else _NGINX_EQUIVALENTS).get(directive)
        instead = f"; nginx's {directive} is {equivalent} here" if equivalent else ""
        return _not(f"nginx's {directive} in Kong's {block} block", _NGINX + instead)
    return next((text for prefix, text in _PREFIXES if key.startswith(prefix)), None)


def problem(key: str, value: Any) -> str | None:
    """The message refusing kong.conf's `key` set to `value` (after "gateway.<key>: "), or None: not one of Kong's
    keys, or a value that passes (null, empty, or one that says what the gateway does)."""
    why = refusal(key)
    if why is None or value is None or value in ("", [], {}):
        return None
    accepted = ACCEPTED.get(key, ())
    words = _words(value)
    if words is not None and any(words == frozenset(a.lower().split()) for a in accepted):
        return None
    if (any_of := ACCEPTED_ANY_OF.get(key)) is not None:
        if words is not None and words <= any_of:
            return None
        why += (f"; it is accepted naming only headers the gateway does not act on anyway: "
                f"{', '.join(sorted(h.title() for h in any_of))}")
    if accepted:
        why += f"; `{key}: {accepted[0]}` is accepted (it is what the gateway does)"
    return f"kong.conf's {key} {why}"


def _words(value: Any) -> frozenset[str] | None:
    """A value as the words of Kong's comma-separated form, lower-cased: booleans as on/off, numbers without a
    fraction when they have none."""
    words: set[str] = set()
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, bool):
            words.add("on" if item else "off")
        elif isinstance(item, int | float):
            words.add(_number(item))
        elif isinstance(item, str):
            words.update({"true": "on", "false": "off"}.get(w, _number(w)) for w in re.split(r"[\s,]+", item.lower())
                         if w)
        else:
            return None
    return frozenset(words)


def _number(n: float | str) -> str:
    try:
        f = float(n)
    except ValueError:
        return str(n)
    return str(int(f)) if f.is_integer() else str(f)


def settle(block: dict[str, Any], errors: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The `gateway:` mapping with kong.conf's keys settled: each refused one reported in `errors`, each passing one
    dropped, of Kong's two names of a setting the one Kong obeys kept (`kong_kept`), each alias renamed to our field
    (beside our own name of it: an error). Returns the mapping and {our field: the alias it was given as}, for
    `as_written`."""
    out: dict[str, Any] = {}
    aliased: dict[str, str] = {}
    block = kong_kept(block)
    for key, value in block.items():
        if not isinstance(key, str):
            out[key] = value
            continue
        value = kong_value(key, value)
        if value == "NONE" and key.startswith("nginx_"):
            if key in NGINX_NONE:
                value = NGINX_NONE[key]
            elif _NONE_PASSES.fullmatch(key):
                continue
        if key in _WORKER_PROCESSES and isinstance(value, str):
            errors.append(f"gateway.{key}: expected auto or a number of worker processes, got {show(value)}")
            continue
        if key in _SIZES and value is not None:
            try:
                value = proxy_buffer_size(value)
            except ValueError as e:
                errors.append(f"gateway.{key}: {e}")
                continue
        target = ALIASES.get(key)
        if target is not None:
            if target in block:  # our own name (Kong's two names are settled by kong_kept)
                errors.append(f"gateway.{key} and gateway.{target}: set one of them (kong.conf's {key} is "
                              f"{target} here, under either name)")
            else:
                out[target] = value
                aliased[target] = key
        elif refusal(key) is None:
            out[key] = value  # ours, or unknown: the decoder says which
        elif (why := problem(key, value)) is not None:
            errors.append(f"gateway.{key}: {why}")
    return out, aliased


def kong_kept(block: dict[str, Any]) -> dict[str, Any]:
    """`block` with one of Kong's two names of a setting given under both (REPLACED_BY) dropped, as Kong's conf loader
    settles them: the replacement wins when it has a value (not null), else the old name does."""
    dropped: dict[str, str] = {}  # {the name dropped: the one kept}
    for old, new in REPLACED_BY.items():
        if old in block and new in block:
            kept, loser = (new, old) if block[new] is not None else (old, new)
            dropped[loser] = kept
    _tell(dropped)
    return {key: value for key, value in block.items() if key not in dropped} if dropped else block


_told: dict[str, str] = {}  # kong_kept's outcome last logged


def _tell(dropped: dict[str, str]) -> None:
    """Log which of two names kong_kept took, once per process for each outcome (each process loads the file)."""
    if dropped != _told:
        _told.clear()
        _told.update(dropped)
        for loser, kept in dropped.items():
            log.info("gateway.%s and gateway.%s are both given (in the file or by KONG_ variables): %s is taken, as "
                     "Kong does, and %s is ignored", kept, loser, kept, loser)


def proxy_buffer_size(value: Any) -> int:
    """nginx's proxy_buffer_size from a number or nginx's size text (`8k`), as nginx starts with it beside Kong's
    proxy_buffers; ValueError saying what it takes."""
    size = _SIZE.fullmatch(value) if isinstance(value, str) else None
    number = int(size[1]) << _UNIT_SHIFT[size[2].lower()] if size else value
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValueError(f"expected a size as nginx writes one: bytes, or with k or m (4096, 8k), got {show(value)}")
    if number < 1:
        raise ValueError(f"expected at least 1, got {show(value)}: no response head fits an empty buffer")
    if number > MAX_PROXY_BUFFER_SIZE:
        raise ValueError(f"expected at most 14k, got {show(value)}: nginx does not start with a larger one beside "
                         "Kong's proxy_buffers (8 4k), whose proxy_busy_buffers_size, twice it, may be at most 7 of "
                         "them")
    return number


def as_written(message: str, aliased: dict[str, str]) -> str:
    """A message about one of our fields, naming the field as the file does when it was given under Kong's name."""
    for target, alias in aliased.items():
        rest = message.removeprefix(f"gateway.{target}")
        if rest != message and rest[:1] in (":", ".", "["):
            return f"gateway.{alias}{rest}"
    return message


def kong_value(key: str, value: Any) -> Any:
    """`value` of kong.conf's `key` as Kong's conf loader reads it (parse_value, listeners.lua): the text of each of
    kong.conf's keys stripped, whatever its type (a KONG_ variable's too); a boolean or number key's text as the
    boolean or number, NONE as unset where that is Kong's default; nginx's worker_processes auto as `workers` unset;
    YAML's false (an unquoted `off`) as `off` where kong.conf takes the word, and the word as false where our field
    is a boolean (access_log); `listen`'s comma-separated string as its list; `status_listen` off (its first entry
    `off`) as null, one entry in the array form as that entry."""
    typ = KONG_TYPES.get(key)
    if isinstance(value, str) and is_kong_key(key):
        value = value.strip()  # parse.lua's parse_value, before any check
    if key in _OFF_FALSE and value == "off":
        return False
    if key in _OFF_WORD:
        value = [_off(v) for v in value] if isinstance(value, list) else _off(value)
    if key == "untrusted_lua" and value is True:  # (YAML's true: an unquoted `on`)
        value = "on"
    if isinstance(value, str) and typ == "boolean":
        return _BOOLEANS.get(value, value)
    if isinstance(value, str) and typ == "number" and _NUMBER.fullmatch(value):
        number = float(value)
        return int(number) if number.is_integer() else number
    if value == "NONE" and key in _NONE_UNSET:
        return None
    if isinstance(value, str) and key in _WORKER_PROCESSES:
        return None if value == "auto" else int(value) if _DIGITS.fullmatch(value) else value
    if key == "listen" and isinstance(value, str) and "," in value:
        return kong_array(value)
    if key == "status_listen" and (isinstance(value, str) or
                                   (isinstance(value, list) and all(isinstance(v, str) for v in value))):
        entries = kong_array(value)
        if entries and entries[0] == "off":
            return None
        if entries:
            return ", ".join(entries)  # several: refused by the loader, naming them
    return value


def _off(value: Any) -> Any:
    """YAML's false, an unquoted `off`, as the word."""
    return "off" if value is False else value


def is_kong_key(key: str) -> bool:
    """Whether `key` is one of kong.conf's keys (taken here, under Kong's name, or refused), as a KONG_<KEY> variable
    names one."""
    return (key in KONG_KEYS or key in ALIASES or key in KONG_CONF or key in _UNLISTED
            or _DYNAMIC.fullmatch(key) is not None)


def from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """kong.conf's keys that KONG_<KEY> variables set (parse.lua's overrides reads `"KONG_" .. upper(k)`), as {key:
    variable}, in the variables' order by name. KONG_VAULT_ENV_PREFIX is left to the env vault, which reads it."""
    found: dict[str, str] = {}
    for variable in sorted(environ):
        if not variable.startswith(ENVIRONMENT_PREFIX):
            continue
        key = variable[len(ENVIRONMENT_PREFIX):].lower()
        if variable == ENVIRONMENT_PREFIX + key.upper() and key != VAULT_ENV_PREFIX and is_kong_key(key):
            found[key] = variable
    return found


def overridden(block: dict[str, Any], environment: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, Any]:
    """The `gateway:` mapping with each key of `environment` (from_environment) set to its variable's text, name by
    name as parse.lua's overrides merges them, and the file's value of the same setting under our own name (`workers`,
    no kong.conf key) dropped: the variable beats the file there too. Of Kong's two names of a setting, each may come
    from either source: `settle` keeps the one Kong obeys (kong_kept)."""
    if not environment:
        return block
    ours = {name for key in environment for name in _NAMES.get(key, ()) if not is_kong_key(name)}
    out = {key: value for key, value in block.items() if key not in ours}
    out.update({key: environ[variable] for key, variable in environment.items()})
    return out


def _setting_names() -> dict[str, frozenset[str]]:
    """Each name of a setting taken under several (ALIASES), with all of that setting's names."""
    by_target: dict[str, set[str]] = {}
    for alias, target in ALIASES.items():
        by_target.setdefault(target, {target}).add(alias)
    return {name: frozenset(names) for names in by_target.values() for name in names}


_NAMES = _setting_names()


def carried(environ: Mapping[str, str]) -> dict[str, str]:
    """The KONG_<KEY> variables of `environ` that set kong.conf's keys (KONG_VAULT_ENV_PREFIX too), as {variable:
    text}: what `gateway reload` carries to the running gateway, whose root applies them over its own environment,
    as `kong reload` loads kong.conf with its own process's variables (kong/cmd/reload.lua)."""
    variables = [*from_environment(environ).values(), ENVIRONMENT_PREFIX + VAULT_ENV_PREFIX.upper()]
    return {variable: environ[variable] for variable in sorted(variables) if variable in environ}
