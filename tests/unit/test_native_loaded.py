import os

import pytest

import hubbub


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only CI insists on the compiled core")
def test_ci_runs_the_compiled_core():
    assert os.environ.get("HUBBUB_NO_EXTENSIONS") != "1"
    assert hubbub.NATIVE is True


def test_native_flag_matches_the_loaded_trie():
    from hubbub import _core

    assert _core.NATIVE == (_core.Trie.__module__ == "hubbub._trie")
    assert _core.NATIVE == (_core.RoundWriter.__module__ == "hubbub._writer")


def test_the_pure_twin_mirrors_the_compiled_constants():
    """Lanes, push results and policies are declared once, as a ``cpdef enum``
    in ext/hubbub/_ring.pxd; the pure twin and Priority must agree with it."""
    from hubbub import _ring_py
    from hubbub.priority import Priority
    from tests.conftest import NATIVE

    if NATIVE is None:
        pytest.skip("the compiled core is not built")
    from hubbub import _ring

    for name in ("QUEUED", "WAKE", "OVERFLOW", "DROP_OLDEST", "DISCONNECT", "CRITICAL", "LANES"):
        assert getattr(_ring, name) == getattr(_ring_py, name), name
    assert _ring.CRITICAL == Priority.CRITICAL and _ring.LANES == len(Priority)


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only CI insists on the compiled core")
def test_ci_runs_the_small_picows_write_buffer():
    """Built against the installed picows (a build requirement) and applied:
    a build that left it out would only cost memory, so only this notices."""
    import picows

    from hubbub import _picows_buffer
    from hubbub.transports import native

    assert _picows_buffer.BUILT_FOR == picows.__version__
    assert native.shrink_write_buffer is _picows_buffer.shrink_write_buffer
