"""bot-detection: Kong's User-Agent check against its bot patterns and the plugin's allow and deny lists."""

from gateway.policies.bot_detection.handler import BotDetection
from gateway.policies.bot_detection.schema import BotDetectionConfig

name = "bot-detection"
priority = BotDetection.priority
schema = BotDetectionConfig
consumer_scoped = False  # Kong's no_consumer


def build(config: BotDetectionConfig, plugin_id: str, shared: object) -> BotDetection:
    return BotDetection(config)
