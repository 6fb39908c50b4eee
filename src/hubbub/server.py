"""The app ``hubbub serve`` runs in each Granian worker (an app factory).

Settings reach the workers through the environment (the CLI puts its flags
there); each worker builds its hub and, in the same event loop, the native
fast listener on FAST_PORT (shared between workers with SO_REUSEPORT).
"""
from __future__ import annotations

from .config import Config
from .hub import Hub


def create_app():
    config = Config.from_env()
    hub = Hub(config)
    app = hub.asgi()
    if config.effective_fast_port:
        app.fast_listener = (config.host, config.effective_fast_port, config.workers > 1)
    return app
