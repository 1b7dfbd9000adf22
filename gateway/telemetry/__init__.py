"""Telemetry: what happens after each response (the log phase), access-log lines in the shape of Kong's log
serializer, the line writer they share with the file-log plugin (and the MCP audit log), Kong's batch queue and the
HTTP sender of the http-log and opentelemetry plugins, trace context propagation and OTLP encoding.

    pipeline ─▶ response sent ─▶ LogPhase.done(ex) ─▶ counts (gateway.metrics), access log, log plugins
                                                          └─ line writers / batch queues: written off the request path
"""
