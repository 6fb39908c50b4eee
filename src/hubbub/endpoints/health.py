"""The probes (SPEC 10), on both ports: ``GET``/``HEAD`` ``/healthz``, ``/readyz``, ``/livez``.

- ``/readyz`` (readiness; ``/healthz`` is the same answer): 200 when this
  process should get traffic; 503 with ``status`` saying why when it should
  not: ``starting``, ``draining``, ``backplane_unavailable`` (connections
  stay up, but publications would fail) or ``store_unavailable`` (the
  notification store is not open; ``reason`` says why).
- ``/livez`` (liveness): 200 whenever the process answers at all. An
  orchestrator restarts a process on this one, so nothing outside the
  process (Redis, the database) ever turns it: restarting every node of a
  fleet would not bring Redis back.

Both ports call ``HealthEndpoints.answer``, so they answer alike.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .responses import Response, not_allowed

if TYPE_CHECKING:
    from ..core.hub import HubCore

PATHS = ("/healthz", "/readyz", "/livez")


class HealthEndpoints:
    def __init__(self, core: "HubCore", started: Callable[[], bool],
                 store_unavailable: Callable[[], str | None]) -> None:
        """``started()``: the hub finished starting; ``store_unavailable()``:
        why the notification store is not open, or None when it is."""
        self.core = core
        self.started = started
        self.store_unavailable = store_unavailable

    @staticmethod
    def handles(path: str) -> bool:
        return path in PATHS

    def answer(self, method: str, path: str) -> Response:
        """The answer to ``method`` on one of ``PATHS`` (the body of a HEAD is
        the transport's to leave out)."""
        if method not in ("GET", "HEAD"):
            return not_allowed(method, path, "GET, HEAD")
        return self.live() if path == "/livez" else self.ready()

    def ready(self) -> Response:
        core = self.core
        if core.draining or not self.started():
            return 503, {"status": "draining" if core.draining else "starting"}, []
        if not core.broker.healthy:  # connections stay up, but publishes would fail: route elsewhere
            return 503, {"status": "backplane_unavailable", **core.stats()}, []
        store_error = self.store_unavailable()
        if store_error is not None:  # /notifications would answer 503: route elsewhere
            return 503, {"status": "store_unavailable", "reason": store_error, **core.stats()}, []
        # "worker": which process answered, when several share the port (--workers N).
        return 200, {"status": "ok", "worker": os.getpid(), **core.stats()}, []

    def live(self) -> Response:
        return 200, {"status": "alive", "worker": os.getpid()}, []
