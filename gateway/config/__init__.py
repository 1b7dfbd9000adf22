"""Configuration: Kong's declarative format plus a `gateway:` block, decoded into msgspec Structs."""

from gateway.config.errors import ConfigError as ConfigError
from gateway.config.loader import load_config as load_config
from gateway.config.loader import parse_config as parse_config
from gateway.config.loader import parse_host_port as parse_host_port
from gateway.config.loader import path_of as path_of
from gateway.config.schema import Config as Config
