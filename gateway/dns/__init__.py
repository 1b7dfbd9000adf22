"""The gateway's DNS client: Kong's DNS client semantics (kong/resty/dns/client.lua) over its own wire client."""
