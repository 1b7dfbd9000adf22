"""The ZeroMQ side of the gateway: Trio-driven sockets, and the admin channel's request/reply protocol."""
