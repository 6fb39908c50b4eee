"""Hubbub: a real-time fan-out hub."""
from ._core import NATIVE
from .filters import FilterError
from .priority import Priority
from .topics import TopicError

__all__ = ["NATIVE", "Priority", "TopicError", "FilterError"]
__version__ = "0.1.0"
