"""Typed settings and the project's exception root: the one package every stage may import."""

from config.errors import ConcertbotError, ConfigError, UnknownNameError
from config.settings import Settings, load_settings

__all__ = ["ConcertbotError", "ConfigError", "Settings", "UnknownNameError", "load_settings"]
