"""A Trio-based, multi-process L7 gateway for clusters of MCP servers."""

__version__ = "0.1.0"
