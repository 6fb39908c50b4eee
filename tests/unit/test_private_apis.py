"""The private APIs of picows and Granian that Hubbub relies on, checked so an
upgrade past the pinned versions fails here, loudly, rather than in production."""
import asyncio
import inspect

import granian._signals as granian_signals
import granian.server.mp as granian_mp
from granian.http import HTTP1Settings
from picows import WSListener
from picows.picows import WSProtocol

from hubbub import Config, Hub
from hubbub.transports.native import NativeServer


def test_picows_server_protocol_takes_the_14_arguments_native_py_passes():
    async def build():
        protocol = NativeServer(Hub(Config(dev=True))).ws_protocol(lambda upgrade: WSListener())
        assert isinstance(protocol, WSProtocol)
        # The sniffer feeds picows the bytes it already read through these.
        assert callable(protocol.get_buffer) and callable(protocol.buffer_updated)
    asyncio.run(build())


def test_granian_worker_signals_are_what_signals_py_wraps():
    import hubbub.signals

    hubbub.signals.wrap_granian()  # what hubbub serve's app factory does
    # The wrapper replaces this module attribute; Granian's ASGI worker must look
    # it up at call time (an import inside the worker function), or it is bypassed.
    assert granian_signals.set_loop_signals.__name__ == "_set_loop_signals_draining_first"
    assert "from granian._signals import set_loop_signals" in inspect.getsource(granian_mp)
    original = granian_signals.set_loop_signals.granian
    assert list(inspect.signature(original).parameters) == ["loop"]

    async def check():
        event = original(asyncio.get_running_loop())  # Granian's stop event
        assert callable(event.set) and callable(event.add_cb)
        for sig in granian_signals._get_signals():
            asyncio.get_running_loop().remove_signal_handler(sig)
    asyncio.run(check())


def test_granian_main_process_is_what_pass_a_second_signal_on_wraps():
    from granian.server.common import AbstractServer

    # Its startup installs the handler it finds on the instance, at that moment...
    startup = inspect.getsource(AbstractServer.startup)
    assert "set_main_signals(self.signal_handler_interrupt" in startup
    # ...and stopping the workers walks self.wrks, each a multiprocessing.Process in .inner.
    assert "for wrk in self.wrks" in inspect.getsource(AbstractServer._stop_workers)
    assert "self.inner = multiprocessing" in inspect.getsource(granian_mp.WorkerProcess._spawn)


def test_granian_http1_settings_has_the_head_timeout_cli_py_sets():
    assert "header_read_timeout" in {f for f in HTTP1Settings.__dataclass_fields__}
