"""The private APIs of picows and Granian that Hubbub relies on, checked over
the whole range pyproject.toml allows, so a release that changes one fails
here, loudly and naming what to re-read, rather than in production.

The ranges were proven by running this file and the integration tests that
use these APIs (test_ws, test_protocol_edges, test_drain, test_drain_signals,
test_embedding) against the oldest and the newest release allowed. Widening
a bound means reading the new release's source named in the failure below,
then running those tests again against it.
"""
import ast
import asyncio
import inspect
import textwrap

import granian
import granian._signals as granian_signals
import granian.server.mp as granian_mp
import picows
import picows.api as picows_api
from granian.http import HTTP1Settings
from granian.server.common import AbstractServer
from multidict import CIMultiDict
from picows import WSListener, WSUpgradeRequest, WSUpgradeResponse
from picows.picows import WSProtocol  # noqa: F401 (the private class a test below relies on must still exist)

import hubbub.signals
from hubbub import Config, Hub
from hubbub.transports.native import NativeServer, forget_handshake

PICOWS = f"picows {picows.__version__}"
GRANIAN = f"granian {granian.__version__}"
RE_READ_PICOWS = ("re-read picows/picows.pyx (WSProtocol.__init__, get_buffer, buffer_updated), "
                  "picows/common.py (WSUpgradeRequest, WSUpgradeResponse) and "
                  "picows/api.py (ws_create_server), fix NativeServer.ws_protocol in "
                  "src/hubbub/transports/native.py, then run the tests named in pyproject.toml "
                  "before moving the picows bound")
RE_READ_GRANIAN = ("re-read granian/_signals.py, granian/server/mp.py and granian/server/common.py, "
                   "fix src/hubbub/signals.py (wrap_granian, pass_a_second_signal_on), then run the "
                   "tests named in pyproject.toml before moving the granian bound")

# What each positional argument of WSProtocol is, in the order picows' own
# ws_create_server passes them: NativeServer.ws_protocol passes the same, by position.
WS_PROTOCOL_ARGUMENTS = [
    "None",  # host+port
    "None",  # ws_path
    "False",  # is_client_side
    "ws_listener_factory",
    "logger",
    "disconnect_on_exception",
    "websocket_handshake_timeout",
    "enable_auto_ping", "auto_ping_idle_timeout", "auto_ping_reply_timeout",
    "auto_ping_strategy",
    "enable_auto_pong",
    "max_frame_size",
    "None",  # extra_headers
    "read_buffer_init_size",
]


def ws_protocol_calls(function) -> list[list[str]]:
    """The arguments of each ``WSProtocol(...)`` call in ``function``'s source, as written."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return [[ast.unparse(arg) for arg in node.args] for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "WSProtocol"
            and not node.keywords]


# -- picows: native.py builds picows' server protocol itself -------------------------
def test_picows_server_protocol_takes_the_arguments_native_py_passes_in_that_order():
    calls = ws_protocol_calls(picows_api.ws_create_server)
    assert len(calls) == 1, f"{PICOWS}: ws_create_server no longer builds WSProtocol positionally; " \
                            + RE_READ_PICOWS
    picows_own = calls[0]
    # The logger slot gets whatever picows resolves its logger_name to.
    picows_own = ["logger" if "logger" in arg else arg for arg in picows_own]
    assert picows_own == WS_PROTOCOL_ARGUMENTS, \
        f"{PICOWS} builds WSProtocol({', '.join(picows_own)}); native.py passes " \
        f"({', '.join(WS_PROTOCOL_ARGUMENTS)}): " + RE_READ_PICOWS
    ours = ws_protocol_calls(NativeServer.ws_protocol)
    assert len(ours) == 1 and len(ours[0]) == len(WS_PROTOCOL_ARGUMENTS), \
        "NativeServer.ws_protocol no longer passes one argument for each of WS_PROTOCOL_ARGUMENTS"


def test_picows_server_protocol_is_built_and_fed_as_the_sniffer_does():
    async def build():
        try:
            protocol = NativeServer(Hub(Config(dev=True))).ws_protocol(lambda upgrade: WSListener())
        except TypeError as error:
            raise AssertionError(f"{PICOWS}: WSProtocol refused native.py's arguments ({error}); "
                                 + RE_READ_PICOWS) from error
        assert isinstance(protocol, asyncio.BufferedProtocol), f"{PICOWS}: " + RE_READ_PICOWS
        # The sniffer hands the socket over with these, then feeds picows the
        # bytes it already read through the buffered-protocol calls.
        for name in ("connection_made", "get_buffer", "buffer_updated", "connection_lost"):
            assert callable(getattr(protocol, name, None)), \
                f"{PICOWS}: WSProtocol has no {name}(); " + RE_READ_PICOWS
    asyncio.run(build())


def test_picows_handshake_objects_can_be_emptied_as_native_py_does():
    """native.forget_handshake empties what picows keeps of the handshake for
    the connection's life; it runs in every on_ws_connected, so a release that
    made these objects read-only would fail every WebSocket."""
    request = WSUpgradeRequest()
    request.method, request.path, request.version = b"GET", b"/ws?token=x", b"HTTP/1.1"
    request.headers = CIMultiDict({"Host": "x"})
    response = WSUpgradeResponse.create_101_response()

    class Handshaken:  # what picows' WSTransport shows of the handshake
        pass

    ws = Handshaken()
    ws.request, ws.response = request, response
    try:
        forget_handshake(ws)
    except (AttributeError, TypeError) as error:
        raise AssertionError(f"{PICOWS}: its handshake objects no longer take native.py's"
                             f" assignments ({error}); " + RE_READ_PICOWS) from error
    assert request.path == b"" and len(request.headers) == 0 and len(response.headers) == 0


# -- Granian's worker: signals.wrap_granian -------------------------------------------
def test_granian_worker_signals_are_what_signals_py_wraps():
    hubbub.signals.wrap_granian()  # what hubbub serve's app factory does
    assert granian_signals.set_loop_signals.__name__ == "_set_loop_signals_draining_first"
    original = granian_signals.set_loop_signals.granian
    assert list(inspect.signature(original).parameters) == ["loop"], \
        f"{GRANIAN}: set_loop_signals no longer takes (loop); " + RE_READ_GRANIAN

    async def check():
        loop = asyncio.get_running_loop()
        try:
            event = original(loop)  # Granian's stop event, which the wrapper returns as it is
            # Handing a signal on sets it (signals.py calls nothing else of it).
            assert callable(getattr(event, "set", None)), \
                f"{GRANIAN}: set_loop_signals returns no event with set(); " + RE_READ_GRANIAN
        finally:
            for sig in hubbub.signals.SIGNALS:
                loop.remove_signal_handler(sig)
    asyncio.run(check())


def test_granian_asgi_worker_loads_the_app_before_it_looks_up_set_loop_signals():
    # The wrapper replaces a module attribute: Granian's ASGI workers must look
    # it up at call time (an import inside the worker function)...
    for worker in ("_spawn_asgi_worker", "_spawn_asgi_lifespan_worker"):
        source = inspect.getsource(getattr(granian_mp.MPServer, worker))
        assert "from granian._signals import set_loop_signals" in source \
            and "set_loop_signals(loop)" in source, \
            f"{GRANIAN}: MPServer.{worker} no longer imports set_loop_signals when it runs; " \
            + RE_READ_GRANIAN
    # ...after the app was loaded (hubbub serve's factory calls wrap_granian).
    wrapper = inspect.getsource(granian_mp.WorkerProcess.wrap_target)
    loaded, started = wrapper.find("callback_loader()"), wrapper.find("return target(")
    assert 0 <= loaded < started, \
        f"{GRANIAN}: WorkerProcess.wrap_target no longer loads the app before the worker runs; " \
        + RE_READ_GRANIAN


# -- Granian's main process: signals.pass_a_second_signal_on ---------------------------
def test_granian_main_process_is_what_pass_a_second_signal_on_wraps():
    # Its startup installs the handler it finds on the instance, at that moment...
    assert "set_main_signals(self.signal_handler_interrupt" in inspect.getsource(AbstractServer.startup), \
        f"{GRANIAN}: AbstractServer.startup no longer installs self.signal_handler_interrupt; " \
        + RE_READ_GRANIAN
    handler = inspect.signature(AbstractServer.signal_handler_interrupt).parameters
    assert any(p.kind is p.VAR_POSITIONAL for p in handler.values()), \
        f"{GRANIAN}: signal_handler_interrupt no longer takes *args; " + RE_READ_GRANIAN
    # ...and stopping the workers walks self.wrks, each a multiprocessing.Process in .inner.
    assert "for wrk in self.wrks" in inspect.getsource(AbstractServer._stop_workers), \
        f"{GRANIAN}: AbstractServer._stop_workers no longer walks self.wrks; " + RE_READ_GRANIAN
    assert "self.inner = multiprocessing" in inspect.getsource(granian_mp.WorkerProcess._spawn), \
        f"{GRANIAN}: WorkerProcess._spawn no longer keeps the process in .inner; " + RE_READ_GRANIAN


def test_granian_http1_settings_has_the_head_timeout_cli_py_sets():
    assert "header_read_timeout" in HTTP1Settings.__dataclass_fields__, \
        f"{GRANIAN}: HTTP1Settings has no header_read_timeout; re-read granian/http.py and fix cli.py"
