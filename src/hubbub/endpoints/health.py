"""``GET /healthz``: 200 while this process can serve, 503 (with the reason) when
it cannot: starting, draining, or its backplane unreachable."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .responses import Response

if TYPE_CHECKING:
    from ..core.hub import HubCore


def health(core: "HubCore", started: bool) -> Response:
    if core.draining or not started:
        return 503, {"status": "draining" if core.draining else "starting"}, []
    if not core.broker.healthy:  # connections stay up, but publishes would fail: route elsewhere
        return 503, {"status": "backplane_unavailable", **core.stats()}, []
    # "worker": which process answered, when several share the port (--workers N).
    return 200, {"status": "ok", "worker": os.getpid(), **core.stats()}, []
