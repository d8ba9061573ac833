"""The bridge's YAML config file: `${VAR}` substitution, validation, every problem with its path.

types         field types and checks: durations, names, URLs, secrets
subscription  what every subscription has (each sink module adds its own model)
models        the file's models; the subscription types come from bridge.sinks.registry
errors        pydantic's errors as `path: message` lines
loading       YAML and `${VAR}` in, a validated BridgeConfig out
"""

from bridge.config.errors import ConfigError
from bridge.config.loading import load_config, parse_config
from bridge.config.models import ApiConfig, BridgeConfig, RedisConfig, StoreConfig
from bridge.config.subscription import Filter, SubscriptionBase
from bridge.config.types import (
    DEFAULT_RETRY_SCHEDULE,
    Status,
    format_duration,
    parse_duration,
)

__all__ = [
    "DEFAULT_RETRY_SCHEDULE",
    "ApiConfig",
    "BridgeConfig",
    "ConfigError",
    "Filter",
    "RedisConfig",
    "Status",
    "StoreConfig",
    "SubscriptionBase",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
]
