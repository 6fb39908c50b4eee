"""The app ``hubbub serve`` runs in each Granian worker (an app factory).

Settings reach the workers through the environment (the CLI puts its flags
there); each worker builds its hub and, in the same event loop, the native
fast listener on FAST_PORT (shared between workers with SO_REUSEPORT).

Graceful drain: on SIGTERM a Granian worker stops its server at once, cutting
WebSocket connections without a close frame, and only then runs the lifespan
shutdown. So the worker's signal handler is wrapped: the hub drains first,
then Granian stops as it would. The drain has two steps:

1. For DRAIN_GRACE seconds the listeners stay open (Granian's main process
   closes only its own copy of the socket) while the hub is draining:
   /healthz answers 503 and new subscribers are refused with 503, so a load
   balancer polling /healthz sees the node leave and stops routing to it
   before its port closes. Existing connections are still served.
2. Then every connection is closed (WS 1001, SSE streams ended), waiting at
   most DRAIN_TIMEOUT for them, and the worker stops.

A second signal stops at once.
"""
from __future__ import annotations

import asyncio
import signal

import granian._signals as granian_signals

from .config import Config
from .app import Hub

_hubs: list[Hub] = []


def create_app():
    config = Config.from_env()
    hub = Hub(config)
    _hubs.append(hub)
    app = hub.asgi()
    if config.effective_fast_port:
        app.inner.fast_listener = (config.host, config.effective_fast_port, config.workers > 1)
    return app


_granian_set_loop_signals = granian_signals.set_loop_signals


def _set_loop_signals_draining_first(loop):
    stop_granian = _granian_set_loop_signals(loop)  # Granian's own event and handlers
    state = {"draining": False}

    def on_signal(signum: int) -> None:
        if state["draining"]:  # a second signal: stop now
            stop_granian.set()
            return
        state["draining"] = True
        drain = asyncio.ensure_future(_drain(list(_hubs)))
        drain.add_done_callback(lambda _: stop_granian.set())

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    return stop_granian


async def _drain(hubs: list[Hub]) -> None:
    for hub in hubs:
        hub.draining = True  # /healthz 503 and new subscribers 503, listeners still open
    grace = max((hub.config.drain_grace for hub in hubs), default=0.0)
    if grace:
        await asyncio.sleep(grace)
    await asyncio.gather(*(hub.stop() for hub in hubs))


# Granian's worker imports this module (to load the app) before it installs
# its signal handlers, and looks set_loop_signals up at that moment.
granian_signals.set_loop_signals = _set_loop_signals_draining_first
