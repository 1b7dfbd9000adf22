"""Service discovery: an upstream's targets from static config, etcd v3 or Consul, reported live.

Every source has the shape `async def run_x(upstream, settings, on_change, *, task_status)` and calls
`on_change(upstream, [TargetInfo, ...])` with the full current list whenever it changes. `run_discovery(config,
on_change)` runs one source per upstream with a `discovery:` block; `run_registration(settings, gateway)`
registers the gateway itself in Consul or etcd while it runs.
"""

from gateway.discovery.backoff import Backoff as Backoff
from gateway.discovery.backoff import LinkState as LinkState
from gateway.discovery.consul import run_consul as run_consul
from gateway.discovery.etcd import run_etcd as run_etcd
from gateway.discovery.registration import Registration as Registration
from gateway.discovery.registration import deregister_service as deregister_service
from gateway.discovery.registration import register_service as register_service
from gateway.discovery.registration import resolve_registration as resolve_registration
from gateway.discovery.registration import run_registration as run_registration
from gateway.discovery.service import DiscoveryStatus as DiscoveryStatus
from gateway.discovery.service import config_targets as config_targets
from gateway.discovery.service import run_discovery as run_discovery
from gateway.discovery.service import run_static as run_static
from gateway.discovery.types import OnChange as OnChange
from gateway.discovery.types import TargetInfo as TargetInfo
