"""redirect: Kong's redirect plugin (3.9): answer every request with a status and a Location."""

from gateway.policies.redirect.handler import Redirect
from gateway.policies.redirect.schema import RedirectConfig

name = "redirect"
priority = Redirect.priority
schema = RedirectConfig
consumer_scoped = True


def build(config: RedirectConfig, plugin_id: str, shared: object) -> Redirect:
    return Redirect(config)
