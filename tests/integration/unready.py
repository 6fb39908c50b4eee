"""A real ``hubbub serve`` that is alive but not ready (its notification store
cannot open): ``HubProcess`` waits for ``/healthz`` 200, which such a hub
never answers, so this one waits for ``/livez`` on both ports instead."""
from __future__ import annotations

import httpx

from .server import HubProcess


class UnreadyHubProcess(HubProcess):
    def serving(self) -> bool:
        return all(httpx.get(self.url(kind, "/livez"), timeout=1).status_code == 200
                   for kind in ("asgi", "native"))
