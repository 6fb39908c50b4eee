"""SIGTERM and SIGINT drain the running hubs before the server that runs them stops.

Every ASGI server stops in the order that suits short requests: on a signal
it stops accepting, waits for the open connections (or cuts them), and only
then runs the lifespan shutdown. A hub's connections never end on their own,
so a drain left to the lifespan comes too late: uvicorn waits for them
forever ("Waiting for connections to close"), Granian cuts WebSockets without
a close frame, Hypercorn cancels them after its graceful timeout.

So the hub goes in front of the server's own handler. The first signal
drains every running hub of the process in two steps: for DRAIN_GRACE the
server still serves while /healthz answers 503 and new subscribers are
refused (a load balancer sees the node leave), then WebSocket clients get
1001 and SSE streams end, waiting at most DRAIN_TIMEOUT. Only then is the
signal handed on to the server's handler, which stops as it always does. A
second signal is handed on at once.

What each server installs before the lifespan starts, and how the hub gets
in front of it:

- uvicorn: ``signal.signal`` handlers (``Server.capture_signals``). ``drain_first``
  (called at lifespan startup) puts its own in their place and calls theirs
  to hand on; they are put back when the last hub stops.
- Granian: its worker sets ``loop.add_signal_handler`` handlers in
  ``granian._signals.set_loop_signals``; uvloop keeps them in C, out of reach
  once set. So that function is wrapped (``wrap_granian``) while the worker
  imports the app, before it looks the function up. Handing on sets
  Granian's own stop event.
- Hypercorn: its workers install nothing, so SIGTERM has its default action:
  chained like uvicorn's, and handed on by restoring the default and raising
  the signal again. Its main process sends its workers no signal: it sets a
  multiprocessing event that they poll, stop accepting, give open
  connections ``--graceful-timeout`` (3 s) and cancel them. So the hub polls
  that event too and drains at once, without a grace (the port is closing).

The relay: a server's main process answers SIGTERM or SIGINT by sending
SIGTERM to each worker (Granian, ``uvicorn --workers``). When the whole
process group is signalled (systemd's KillMode=control-group, Ctrl-C in a
terminal) a worker gets the group's signal and, milliseconds later, its
main process's copy. Taken for a second signal, that copy stopped the worker
at once: no 503 was ever seen (issue 19). A handler cannot tell who sent a
signal, so a worker (a process that multiprocessing started) takes one
SIGTERM within RELAY_WINDOW of the first signal for that copy. (Only
``sigwaitinfo`` tells the sender, and it needs the signals blocked in every
thread, a mask that every process the app starts would inherit.)

Granian's main process passes on only the first signal; for ``hubbub serve``
``pass_a_second_signal_on`` makes it pass on the second too.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("hubbub")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The main process's copy follows the group's signal within milliseconds; an
# operator's second signal (to stop at once) rarely comes this soon.
RELAY_WINDOW = 1.0


class Hub(Protocol):
    """What a signal's drain uses of a hub (``hubbub.app.Hub``, which imports this module)."""
    config: "Config"
    draining: bool

    async def stop(self, timeout: float | None = None) -> None: ...


_running: "weakref.WeakSet[Hub]" = weakref.WeakSet()  # the hubs a signal drains
_gate: "_Gate | None" = None  # this process's, once installed


def running(hub: "Hub") -> None:
    """``hub`` has started: a signal drains it from now on."""
    _running.add(hub)


def stopped(hub: "Hub") -> None:
    """``hub`` has stopped; after the last one the server's own handlers are put back."""
    _running.discard(hub)
    _release_if_idle()


def _release_if_idle() -> None:
    global _gate
    if not _running and _gate is not None and _gate.restorable():
        _gate.restore()
        _gate = None


def drain_first() -> None:
    """Put the hubs' drain in front of the server's SIGTERM/SIGINT handlers.

    Called at lifespan startup, in the server's event loop: every server
    installs its handlers before it starts the lifespan. Does nothing when
    already done (Granian's worker did it through ``set_loop_signals``).
    """
    global _gate
    if _gate is not None:
        return
    if threading.current_thread() is not threading.main_thread():
        log.debug("signals are the main thread's: the hub drains at lifespan shutdown only")
        return
    gate = _Gate(asyncio.get_running_loop())
    for sig in SIGNALS:
        gate.chain(sig)
    gate.watch_hypercorn()
    if gate.replaced or gate.watcher is not None:
        _gate = gate


class _Gate:
    """Takes SIGTERM/SIGINT first: drains the running hubs, then hands the signal on."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.hand_on: dict[int, Callable[[int], None]] = {}  # the server's own handling, per signal
        self.replaced: dict[int, Any] = {}  # the signal.signal handlers put back by restore()
        self.taken: list[int] = []  # signals received and not yet handed on
        self.first_at: float | None = None
        self.relay_seen = False
        self.handed_on = False
        self.hurry = asyncio.Event()  # a second signal cuts the grace short
        self.in_worker = multiprocessing.parent_process() is not None
        self.watcher: asyncio.Task | None = None
        self.drain: asyncio.Task | None = None

    # -- installing -------------------------------------------------------------
    def chain(self, sig: int) -> None:
        """Replace a ``signal.signal`` handler with ours; call it to hand on."""
        previous = signal.getsignal(sig)
        if previous is signal.SIG_IGN or previous is None:
            return  # ignored by the server, or not Python's: not ours to take
        if _set_by_event_loop(previous, self.loop):
            log.warning("the server handles %s with loop.add_signal_handler, which the hub cannot go"
                        " in front of: it drains at lifespan shutdown only", signal.Signals(sig).name)
            return
        self.replaced[sig] = previous
        self.hand_on[sig] = lambda signum: _call(previous, signum)
        signal.signal(sig, self._on_python_signal)

    def watch_hypercorn(self) -> None:
        """In a Hypercorn worker, drain when its main process sets the workers' shutdown event."""
        worker = multiprocessing.current_process()
        target = getattr(worker, "_target", None)
        event = (getattr(worker, "_kwargs", None) or {}).get("shutdown_event")
        if not getattr(target, "__module__", "").startswith("hypercorn.") or event is None:
            return

        async def watch() -> None:
            while not event.is_set():
                await asyncio.sleep(0.1)  # as often as Hypercorn's worker looks
            self.server_stopping()
        self.watcher = self.loop.create_task(watch())

    def restorable(self) -> bool:
        """Installed by drain_first (not Granian's), in this thread, and no drain under way."""
        return (bool(self.replaced) or self.watcher is not None) and not self.taken \
            and threading.current_thread() is threading.main_thread()

    def restore(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        for sig, previous in self.replaced.items():
            if signal.getsignal(sig) == self._on_python_signal:  # unless the server already did
                signal.signal(sig, previous)
        self.replaced.clear()

    def _on_python_signal(self, signum: int, frame: Any) -> None:
        # Runs between two bytecodes of the main thread: only schedule.
        try:
            self.loop.call_soon_threadsafe(self.on_signal, signum)
        except RuntimeError:  # the loop is gone: nothing left to drain
            self.hand_on[signum](signum)

    # -- a signal -----------------------------------------------------------------
    def on_signal(self, signum: int) -> None:
        now = time.monotonic()
        if self.handed_on:  # the server's already: pass it straight on
            self.hand_on[signum](signum)
            return
        if self.first_at is None:
            self.first_at = now
            self.taken.append(signum)
            if not _running:
                self._hand_on()
                return
            log.info("%s: draining before the server stops", signal.Signals(signum).name)
            self._start_drain(grace=max(hub.config.drain_grace for hub in _running))
            return
        if self.in_worker and signum == signal.SIGTERM and not self.relay_seen \
                and now - self.first_at < RELAY_WINDOW:
            self.relay_seen = True  # the main process's copy of the group's signal
            return
        log.info("%s again: stopping now", signal.Signals(signum).name)
        self.taken.append(signum)
        self.hurry.set()
        self._hand_on()

    def server_stopping(self) -> None:
        """The server stops by itself and no longer accepts: drain now, without a grace
        (its port is closing); a signal taken needs no handing on."""
        self.handed_on = True
        self.taken.clear()
        if self.first_at is not None:  # already draining
            self.hurry.set()
            return
        self.first_at = time.monotonic()
        self._start_drain(grace=0.0)

    def _start_drain(self, grace: float) -> None:
        self.drain = self.loop.create_task(self._drain(list(_running), grace))
        self.drain.add_done_callback(self._drained)

    async def _drain(self, hubs: list["Hub"], grace: float) -> None:
        for hub in hubs:
            hub.draining = True  # /healthz 503, new subscribers 503; the server still serves
        if grace:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hurry.wait(), grace)
        await asyncio.gather(*(hub.stop() for hub in hubs))

    def _drained(self, drain: asyncio.Task) -> None:
        if not drain.cancelled() and drain.exception() is not None:
            log.error("the drain failed; stopping anyway", exc_info=drain.exception())
        if not self.handed_on:
            self._hand_on()
        _release_if_idle()

    def _hand_on(self) -> None:
        self.handed_on = True
        taken, self.taken = self.taken, []
        for signum in taken:
            self.hand_on[signum](signum)


def _call(handler: Any, signum: int) -> None:
    if handler is signal.SIG_DFL:  # what the signal would have done: usually end the process
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
    else:
        handler(signum, None)


def _set_by_event_loop(handler: Any, loop: asyncio.AbstractEventLoop) -> bool:
    """A stand-in through which an event loop's add_signal_handler gets its wake-ups
    (uvloop: a method of the loop; asyncio: _sighandler_noop)."""
    return getattr(handler, "__self__", None) is loop \
        or getattr(handler, "__name__", "") == "_sighandler_noop"


# -- Granian ------------------------------------------------------------------------
def wrap_granian() -> None:
    """Go in front of the handlers a Granian worker is about to install.

    Must run before the worker calls ``set_loop_signals``, which it does after
    it loaded the app: at import of this module when Granian was imported
    first (``granian app:app``), and in ``hubbub serve``'s app factory (there
    hubbub comes first: ``python -m hubbub.cli`` imports this module before
    Granian). Idempotent.
    """
    granian_signals = sys.modules.get("granian._signals")
    if granian_signals is None or hasattr(granian_signals.set_loop_signals, "granian"):
        return
    granian_set_loop_signals = granian_signals.set_loop_signals

    def _set_loop_signals_draining_first(loop):
        global _gate
        stop_granian = granian_set_loop_signals(loop)  # Granian's own event and handlers
        stopping = False

        def stop(signum: int) -> None:
            nonlocal stopping
            if not stopping:  # a second WorkerSignal.set() blocks the worker for good
                stopping = True
                stop_granian.set()

        _gate = _Gate(loop)
        for sig in SIGNALS:
            _gate.hand_on[sig] = stop
            loop.add_signal_handler(sig, _gate.on_signal, sig)  # in place of Granian's
        return stop_granian

    _set_loop_signals_draining_first.granian = granian_set_loop_signals
    granian_signals.set_loop_signals = _set_loop_signals_draining_first


def pass_a_second_signal_on(server) -> None:
    """In Granian's main process (``hubbub serve``): a second SIGTERM/SIGINT stops the workers.

    The main process answers the first signal by sending each worker SIGTERM,
    which starts its drain, then waits for them as long as they take; a
    second signal it only notes. So it is sent on to the workers, as SIGINT:
    a worker never takes that for the main process's copy of the first.
    """
    granian_handler = server.signal_handler_interrupt  # what Granian's startup installs
    signalled = False

    def on_signal(*args: Any) -> None:
        nonlocal signalled
        if signalled:
            for worker in list(server.wrks):
                with contextlib.suppress(OSError, TypeError):  # gone, or never started
                    os.kill(worker.inner.pid, signal.SIGINT)
        signalled = True
        granian_handler(*args)

    server.signal_handler_interrupt = on_signal


# In any other process Granian is not running and nothing needs wrapping.
wrap_granian()
