"""Request routing with Kong's matching rules."""

from gateway.routing.router import NEEDS_MCP as NEEDS_MCP
from gateway.routing.router import Match as Match
from gateway.routing.router import Router as Router
from gateway.routing.router import RouteSpec as RouteSpec
