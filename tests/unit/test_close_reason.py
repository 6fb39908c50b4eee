"""A close frame's reason is cut to fit, on a character boundary."""
from hypothesis import given, strategies as st

from hubbub.core.connection import MAX_CLOSE_REASON_BYTES, close_reason


@given(st.text(max_size=200))
def test_cut_reasons_fit_and_are_a_prefix_of_whole_characters(reason):
    cut = close_reason(reason)
    assert len(cut.encode()) <= MAX_CLOSE_REASON_BYTES
    assert reason.startswith(cut)
    if len(reason.encode()) <= MAX_CLOSE_REASON_BYTES:
        assert cut == reason
    else:  # as much as fits: the next character would not
        assert len(cut.encode()) + len(reason[len(cut)].encode()) > MAX_CLOSE_REASON_BYTES
