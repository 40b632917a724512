"""Configuration: the schema (models), the YAML loader with human error lines, and secrets."""

from vistream.config.loader import ConfigError, check_config, load_config, validate_config
from vistream.config.models import (
    BatchingConfig,
    CameraConfig,
    Config,
    MetricsConfig,
    ModelConfig,
    MqttConfig,
    TlsConfig,
)
from vistream.config.secrets import mqtt_password, redact_text, redact_url

__all__ = [
    "BatchingConfig",
    "CameraConfig",
    "Config",
    "ConfigError",
    "MetricsConfig",
    "ModelConfig",
    "MqttConfig",
    "TlsConfig",
    "check_config",
    "load_config",
    "mqtt_password",
    "redact_text",
    "redact_url",
    "validate_config",
]
