"""Load-balancing algorithms: pure, synchronous, O(1) or O(log n) per pick, for the proxy's hot path."""

from .base import Balancer as Balancer
from .consistent_hashing import ConsistentHashing as ConsistentHashing
from .continuum import KongConsistentHashing as KongConsistentHashing
from .ip_hash import IpHash as IpHash
from .latency import KongLatency as KongLatency
from .least_connections import LeastConnections as LeastConnections
from .random_p2c import RandomTwoChoices as RandomTwoChoices
from .registry import ALGORITHMS as ALGORITHMS
from .registry import canonical_algorithm as canonical_algorithm
from .registry import make_balancer as make_balancer
from .round_robin import RoundRobin as RoundRobin
