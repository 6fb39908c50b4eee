"""Hubbub: a real-time fan-out hub."""
from ._core import NATIVE
from .app import Hub
from .auth import Principal, Request
from .config import Config, ConfigError
from .errors import HubError
from .filters import FilterError
from .priority import Priority
from .topics import TopicError
from .version import __version__
from . import client  # noqa: E402  (so `import hubbub` is enough for `hubbub.client.connect`)

__all__ = ["NATIVE", "Hub", "Config", "ConfigError", "Priority", "Principal", "Request",
           "HubError", "TopicError", "FilterError", "client", "__version__"]
