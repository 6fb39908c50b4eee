"""The rules of signals.py, in one process: what drains, what is handed on, and when.

The real servers and signals are in tests/integration/test_drain_signals.py
(``hubbub serve``) and test_embedding.py (uvicorn, Hypercorn, Granian)."""
from __future__ import annotations

import asyncio
import signal
from types import SimpleNamespace

import pytest_asyncio

from hubbub import signals


class FakeHub:
    def __init__(self, grace: float = 0.0) -> None:
        self.config = SimpleNamespace(drain_grace=grace)
        self.draining = False
        self.stops = 0

    async def stop(self, timeout: float | None = None) -> None:
        self.stops += 1


@pytest_asyncio.fixture
async def gate():
    """A gate on the running loop whose hand-on is recorded, not done."""
    handed_on: list[int] = []
    gate = signals._Gate(asyncio.get_running_loop())
    for sig in signals.SIGNALS:
        gate.hand_on[sig] = handed_on.append
    gate.handed = handed_on
    yield gate
    for hub in list(signals._running):
        signals._running.discard(hub)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_first_signal_drains_then_is_handed_on(gate):
    hub = FakeHub(grace=0.2)
    signals.running(hub)
    gate.on_signal(signal.SIGTERM)
    await settle()
    assert hub.draining and hub.stops == 0 and gate.handed == []  # the grace: still serving
    await asyncio.wait_for(gate.drain, 2)
    await settle()
    assert hub.stops == 1 and gate.handed == [signal.SIGTERM]


async def test_without_a_running_hub_the_signal_is_handed_on_at_once(gate):
    gate.on_signal(signal.SIGINT)
    assert gate.handed == [signal.SIGINT]


async def test_in_a_worker_the_main_process_copy_is_not_a_second_signal(gate):
    gate.in_worker = True
    hub = FakeHub(grace=5)
    signals.running(hub)
    gate.on_signal(signal.SIGINT)  # Ctrl-C reaches the group...
    gate.on_signal(signal.SIGTERM)  # ...and the main process sends each worker SIGTERM
    await settle()
    assert gate.handed == [] and not gate.hurry.is_set()
    gate.on_signal(signal.SIGINT)  # Ctrl-C again: now
    assert gate.handed == [signal.SIGINT, signal.SIGINT] and gate.hurry.is_set()
    await asyncio.wait_for(gate.drain, 2)  # the drain goes on without its grace
    assert hub.stops == 1


async def test_a_second_sigterm_stops_at_once_outside_a_worker_or_after_the_window(gate, monkeypatch):
    hub = FakeHub(grace=5)
    signals.running(hub)
    gate.on_signal(signal.SIGTERM)
    gate.on_signal(signal.SIGTERM)  # a single process has no main process to copy it
    assert gate.handed == [signal.SIGTERM, signal.SIGTERM]
    await asyncio.wait_for(gate.drain, 2)

    late = signals._Gate(asyncio.get_running_loop())
    late.in_worker, late.hand_on = True, gate.hand_on
    late.on_signal(signal.SIGTERM)
    late.first_at -= signals.RELAY_WINDOW + 0.1
    late.on_signal(signal.SIGTERM)
    assert gate.handed[2:] == [signal.SIGTERM, signal.SIGTERM]
    await asyncio.wait_for(late.drain, 2)


async def test_a_server_that_stops_by_itself_gets_nothing_handed_on(gate):
    hub = FakeHub(grace=5)
    signals.running(hub)
    gate.on_signal(signal.SIGTERM)
    gate.server_stopping()  # Hypercorn's workers: their main process's event
    await asyncio.wait_for(gate.drain, 2)  # no grace left
    await settle()
    assert hub.stops == 1 and gate.handed == []


async def test_drain_first_goes_in_front_of_a_python_handler_and_steps_back_after_the_last_hub():
    calls = []

    def server_handler(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGTERM, server_handler)
    try:
        hub = FakeHub()
        signals.running(hub)
        signals.drain_first()
        assert signal.getsignal(signal.SIGTERM) != server_handler
        signal.raise_signal(signal.SIGTERM)
        for _ in range(50):
            if calls:
                break
            await asyncio.sleep(0.01)
        assert calls == [signal.SIGTERM] and hub.stops == 1  # drained, then the server's handler
        signals.stopped(hub)
        assert signal.getsignal(signal.SIGTERM) == server_handler and signals._gate is None
    finally:
        signal.signal(signal.SIGTERM, previous)


async def test_a_handler_set_through_the_event_loop_is_left_alone(monkeypatch):
    warnings = []
    # Not caplog: test_layers.py runs lint-imports, whose logging setup disables this logger.
    monkeypatch.setattr(signals.log, "warning", lambda message, *args: warnings.append(message % args))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: None)
    try:
        gate = signals._Gate(loop)
        gate.chain(signal.SIGTERM)
        assert signal.SIGTERM not in gate.replaced
        assert "cannot go in front" in warnings[0]
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
