"""The app ``hubbub serve`` runs in each Granian worker (an app factory).

Settings reach the workers through the environment (the CLI puts its flags
there); each worker builds its hub and, in the same event loop, the native
fast listener on FAST_PORT (shared between workers with SO_REUSEPORT).

Graceful drain. On SIGTERM or SIGINT a Granian worker stops its server at
once, cutting WebSocket connections without a close frame, and only then
runs the lifespan shutdown. So the worker's signal handler is wrapped
(``signals.py``): the hub drains first, then Granian stops as it would:

1. For DRAIN_GRACE seconds both ports stay open while the hub is draining:
   /healthz answers 503 and new subscribers are refused with 503, so a load
   balancer polling /healthz sees the node leave and stops routing to it
   before its ports close. Existing connections are still served.
2. Then every connection is closed (WS 1001, SSE streams ended), waiting at
   most DRAIN_TIMEOUT for them, and the worker stops.

A second signal stops at once.

What Granian does with a signal, and why that once raced (issue 19: with the
process group signalled, 1 run in 3 never showed a 503):

- On Linux the main process holds no listening socket: it binds PORT once to
  check it, then every worker binds its own with SO_REUSEPORT. The fast port
  is the worker's too. So the ports stay open exactly as long as the workers
  serve; the main process closing its copy plays no part.
- The main process answers SIGTERM or SIGINT by sending SIGTERM to every
  worker at once (``WorkerProcess.terminate``) and waits for them without a
  time limit. Signalled alone, it is what starts the workers' drain.
- A worker signalled alone drains and exits; the main process then reports
  "Unexpected exit from worker" and stops the other workers (SIGTERM, so
  they drain too) and exits with status 1.
- Signalled as a group (systemd's default KillMode=control-group, Ctrl-C in
  a terminal), a worker gets the group's signal and, milliseconds later, the
  main process's SIGTERM. The drain took that copy for a second signal and
  stopped the worker at once; the race was only whether the two arrived
  close enough for the kernel to merge them into one. A worker now takes one
  SIGTERM within ``signals.RELAY_WINDOW`` of its first signal for that copy.
"""
from __future__ import annotations

from . import signals
from .app import Hub
from .config import Config


def create_app():
    signals.wrap_granian()  # before this worker installs its signal handlers
    config = Config.from_env()
    hub = Hub(config)
    app = hub.asgi()
    if config.effective_fast_port:
        app.inner.fast_listener = (config.host, config.effective_fast_port, config.workers > 1)
    return app
