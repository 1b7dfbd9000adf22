"""Cluster-exact rate limiting: the keeper's Ledger, the workers' LeaseTable, and what they exchange on the bus."""

from .headers import RateLimitHeaders as RateLimitHeaders
from .lease import Decision as Decision
from .lease import LeaseTable as LeaseTable
from .lease import Status as Status
from .ledger import Ledger as Ledger
from .messages import FallbackUsage as FallbackUsage
from .messages import Grant as Grant
from .messages import LeaseRequest as LeaseRequest
from .messages import ReturnedLease as ReturnedLease
from .spec import LimitSpec as LimitSpec
from .spec import Window as Window
