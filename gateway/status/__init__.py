"""The status server: /health /ready /live /metrics (an ASGI app on hypercorn's Trio worker)."""

from gateway.status.app import CHECKS as CHECKS
from gateway.status.app import BaseStatusSource as BaseStatusSource
from gateway.status.app import CheckResult as CheckResult
from gateway.status.app import StatusApp as StatusApp
from gateway.status.app import StatusSource as StatusSource
from gateway.status.app import memory_check as memory_check
from gateway.status.server import serve_status as serve_status
