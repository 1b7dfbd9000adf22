"""statsd: Kong's metrics of every request, as statsd lines, to a statsd server over UDP or TCP."""

from gateway.policies.statsd.handler import Statsd
from gateway.policies.statsd.schema import StatsdConfig

name = "statsd"
priority = Statsd.priority
schema = StatsdConfig
consumer_scoped = True


def build(config: StatsdConfig, plugin_id: str, shared: object) -> Statsd:
    return Statsd(config, plugin_id)
