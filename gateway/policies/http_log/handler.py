"""Kong's http-log: every request's serialized entry, JSON, sent to a collector in batches (Kong's queue: bounded,
retried, never waited for by a request). A batch of one is the entry itself; a larger one is a JSON array."""

from __future__ import annotations

from typing import Any

from gateway.policies.http_log.schema import HttpLogConfig, http_log_endpoint
from gateway.telemetry.batch import QUEUES, BatchQueue, Queues, public_url
from gateway.telemetry.entry import Entry
from gateway.telemetry.sender import Endpoint, HttpSender, Wording


class HttpLog:
    name = "http-log"
    priority = 12  # Kong's
    entries = True  # its log step takes the whole Entry (gateway.telemetry.phase)

    def __init__(self, config: HttpLogConfig, queues: Queues = QUEUES) -> None:
        timeout = config.timeout / 1000
        headers = [(k.encode(), v.encode()) for k, v in (config.headers or {}).items()]
        endpoint = kong_endpoint(config.http_endpoint)
        self.sender = HttpSender(endpoint, headers, connect_timeout=timeout, send_timeout=timeout,
                                 read_timeout=timeout, keepalive=config.keepalive / 1000,
                                 wording=HttpLogWording(endpoint))
        self.method = config.method.encode()
        self.content_type = config.content_type.encode()
        self.single = config.queue.max_batch_size == 1
        # Kong's queue name: instances sending to the same place with the same settings share a queue; its label
        # (metrics, log lines) without the endpoint's credentials and query
        settings = (config.method, config.content_type, config.timeout, config.keepalive)
        name = ":".join(str(x) for x in ("http-log", config.http_endpoint, *settings))
        label = ":".join(str(x) for x in ("http-log", public_url(config.http_endpoint), *settings))
        self.queue: BatchQueue = queues.queue_for(name, config.queue, self.send, Entry.json, settings=config.headers,
                                                  label=label)

    def log_entry(self, entry: Entry) -> None:
        self.queue.put(entry)

    async def send(self, batch: list[Any]) -> None:
        """One batch of JSON entries (the queue formatted them): the entry alone, or a JSON array of them."""
        body = batch[0] if self.single and len(batch) == 1 else b"[" + b",".join(batch) + b"]"
        await self.sender.send(body, self.content_type, self.method)


class HttpLogWording(Wording):
    """Kong's http-log's messages of a failed send (handler.lua:137, 150): the host and port it connects to."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(f"{endpoint.host}:{endpoint.port}")

    def failed(self, err: str) -> str:
        return f"failed request to {self.where}: {err}"

    def answered(self, status: int, reason: str, body: str) -> str:
        return f"request to {self.where} returned status code {status} and body {body}"


def kong_endpoint(url: str) -> Endpoint:
    """The collector as Kong's http-log reaches it (handler.lua, with socket.url's parse): it requests the path of
    `url` only, without its ;params and ?query ("/" when there is none), and sends the userinfo, as written (not
    percent-decoded, no ":" added), as Basic credentials (see http_log_endpoint)."""
    return http_log_endpoint(url)
