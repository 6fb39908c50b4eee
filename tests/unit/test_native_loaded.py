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
