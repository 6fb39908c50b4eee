"""Chooses the hot-path implementation: compiled (ext/) or its pure-Python twin.

``HUBBUB_NO_EXTENSIONS=1`` forces the pure twin; otherwise the compiled
modules are used when they import, and when they do not (an install on a
machine without a C compiler leaves them out: see setup.py) the twin is used
with one warning. ``NATIVE`` says which one is loaded (CI asserts it, so a
silent fallback cannot pass unnoticed).
"""
from __future__ import annotations

import os
import warnings

NATIVE = False
if os.environ.get("HUBBUB_NO_EXTENSIONS") != "1":
    try:
        from ._fanout import Subscription, TagFilter, fanout
        from ._ring import Outbox
        from ._trie import Trie
        from ._writer import FRAME_RAW, FRAME_WS_TEXT, RoundWriter, register_socket_transport, write_ws_text

        NATIVE = True
    except ImportError as error:
        warnings.warn(f"hubbub: the compiled core is not installed ({error}); running the pure-Python"
                      " core (same behaviour, slower). Reinstall with a C compiler present"
                      " (pip install --force-reinstall --no-cache-dir hubbub) for the fast path,"
                      " or set HUBBUB_NO_EXTENSIONS=1 to choose the pure core quietly.",
                      RuntimeWarning, stacklevel=2)

if not NATIVE:
    from ._fanout_py import Subscription, TagFilter, fanout  # noqa: F811
    from ._ring_py import Outbox  # noqa: F811
    from ._trie_py import Trie  # noqa: F811
    from ._writer_py import (FRAME_RAW, FRAME_WS_TEXT, RoundWriter,  # noqa: F811
                             register_socket_transport, write_ws_text)

from ._ring_py import DISCONNECT, DROP_OLDEST, OVERFLOW, QUEUED, WAKE  # noqa: E402

__all__ = [
    "NATIVE", "Trie", "Outbox", "Subscription", "TagFilter", "fanout",
    "RoundWriter", "register_socket_transport", "write_ws_text", "FRAME_RAW", "FRAME_WS_TEXT",
    "QUEUED", "WAKE", "OVERFLOW", "DROP_OLDEST", "DISCONNECT",
]
