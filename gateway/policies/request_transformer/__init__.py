"""request-transformer: Kong's changes to the request before it is proxied (method, headers, query, body)."""

from gateway.config.schema import GatewaySettings
from gateway.policies.request_transformer.handler import RequestTransformer
from gateway.policies.request_transformer.schema import RequestTransformerConfig

name = "request-transformer"
priority = RequestTransformer.priority
schema = RequestTransformerConfig
consumer_scoped = True


def build(config: RequestTransformerConfig, plugin_id: str, shared: object,
          gateway: GatewaySettings) -> RequestTransformer:
    """The plugin; with kong.conf's `untrusted_lua: off` a $(...) template is refused, since Kong then fails every
    request it is rendered for (access.lua param_value: "loading of untrusted Lua code disabled")."""
    if gateway.untrusted_lua == "off" and (where := config.first_template()) is not None:
        raise ValueError(f"config.{where}: a $(...) template, which Kong runs as Lua: with kong.conf's untrusted_lua "
                         "off Kong answers 500 to every request it is rendered for; write the value "
                         "without $(...) or set untrusted_lua to sandbox, Kong's default")
    return RequestTransformer(config)
