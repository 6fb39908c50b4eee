"""Hubbub: a real-time fan-out hub."""
from ._core import NATIVE
from .auth import Principal, Request
from .config import Config, ConfigError
from .errors import HubError
from .filters import FilterError
from .hub import Hub
from .priority import Priority
from .topics import TopicError

__all__ = ["NATIVE", "Hub", "Config", "ConfigError", "Priority", "Principal", "Request",
           "HubError", "TopicError", "FilterError"]
__version__ = "0.1.0"
