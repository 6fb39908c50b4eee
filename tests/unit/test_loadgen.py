from hubbub.benchmark.loadgen import CLIENTS_PER_SOURCE, MARK, STAMP, source_address


def test_clients_spread_over_loopback_sources_past_the_port_range():
    assert source_address(0) is None
    assert source_address(CLIENTS_PER_SOURCE - 1) is None
    assert source_address(CLIENTS_PER_SOURCE) == ("127.0.0.2", 0)
    assert source_address(5 * CLIENTS_PER_SOURCE + 7) == ("127.0.0.6", 0)


def test_counting_and_stamps_are_envelope_agnostic():
    hubbub = b'{"op":"message","topic":"t","id":"e-1","event":"message","data":{"seq":1,"t0":123,"pad":""},"ts":9}'
    socketio = b'42["message",{"topic":"t","data":{"seq":2,"t0":456,"pad":"xx"}}]'
    assert (hubbub + b"\n" + socketio).count(MARK) == 2
    assert [int(m.group(1)) for m in STAMP.finditer(hubbub + socketio)] == [123, 456]
    assert not list(STAMP.finditer(b'"t0":12'))  # a stamp cut by a read boundary is not counted
