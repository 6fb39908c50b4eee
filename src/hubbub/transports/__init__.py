"""The transports: the ASGI app (any ASGI server) and the native fast
listener (picows WebSocket, a minimal SSE streamer), the WebSocket session
both ports share, and the stream opening shared by SSE, WebSocket and poll.

They are handed the assembled hub (``hubbub.app.Hub``) as a ``Served``:
exactly what they use of it, so no transport imports the app.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import Config
    from ..core.hub import HubCore
    from ..endpoints.operations import OperationsEndpoints
    from ..endpoints.router import Router
    from ..services.inbox.unread import UnreadCounts
    from .streams import Streams


class Served(Protocol):
    config: "Config"
    core: "HubCore"
    streams: "Streams"
    router: "Router"
    operations: "OperationsEndpoints"
    unread: "UnreadCounts"

    async def start(self) -> None: ...

    async def stop(self, timeout: float | None = None) -> None: ...

    async def listen(self, host: str = "127.0.0.1", port: int = 0, *, ssl: Any = None,
                     reuse_port: bool = False) -> Any: ...
