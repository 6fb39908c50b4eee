"""Experiment only (issue 20): with WBUF_EXPERIMENT=1 and this folder on
PYTHONPATH, every fast-port WebSocket also gets a 64-byte picows write
buffer once its handshake is done (see _wbuf.pyx and bench/RESULTS.md)."""
import os

if os.environ.get("WBUF_EXPERIMENT") == "1":
    from _wbuf import shrink_write_buffer

    import hubbub.transports.native as native

    _forget = native.forget_handshake

    def forget_handshake_and_shrink(ws) -> None:
        _forget(ws)
        shrink_write_buffer(ws, 64)

    native.forget_handshake = forget_handshake_and_shrink
