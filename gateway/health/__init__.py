"""Target health: Kong's active and passive checks on one sans-I/O state machine per target.

`machine` is the state machine (states, events, counters, the explicit transition table), `policy` reads Kong's
`healthchecks` block (and the nginx/HAProxy `check:` aliases) into what a result means, `board` holds every
target's machine and feeds it both checks' outcomes (the state keeper's), `probe` does one TCP or HTTP(S) probe,
`checker` runs the probes as a Trio service, `process` is the health checker process reporting them to the keeper.
"""

from gateway.health.board import HealthBoard as HealthBoard
from gateway.health.checker import HealthChecker as HealthChecker
from gateway.health.checker import UpstreamChecks as UpstreamChecks
from gateway.health.checker import run_checks as run_checks
from gateway.health.checker import upstreams_from_config as upstreams_from_config
from gateway.health.machine import TRANSITIONS as TRANSITIONS
from gateway.health.machine import Event as Event
from gateway.health.machine import State as State
from gateway.health.machine import TargetHealth as TargetHealth
from gateway.health.machine import Thresholds as Thresholds
from gateway.health.machine import Transition as Transition
from gateway.health.policy import TCP_FAILURE as TCP_FAILURE
from gateway.health.policy import TIMEOUT as TIMEOUT
from gateway.health.policy import ActivePolicy as ActivePolicy
from gateway.health.policy import PassivePolicy as PassivePolicy
from gateway.health.probe import probe as probe
