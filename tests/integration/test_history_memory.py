"""History memory is bounded by its settings, not by how long the hub has been publishing."""
from pathlib import Path

import httpx

from .server import HubProcess


def worker_rss_kib(hub: HubProcess) -> int:
    """RSS of the Granian worker (the child of `hubbub serve`) that holds the hub."""
    children = Path(f"/proc/{hub.proc.pid}/task/{hub.proc.pid}/children").read_text().split()
    total = 0
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def test_rss_does_not_grow_with_a_long_publish_stream(tmp_path):
    hub = HubProcess(env={"HUBBUB_HISTORY_SIZE": "100"}).start(tmp_path)
    try:
        pad = "x" * 400
        with httpx.Client(base_url=hub.base, timeout=30) as client:
            def publish(count: int, start: int) -> None:
                for i in range(start, start + count, 500):
                    batch = [{"topic": f"mem.t{n % 50}", "data": {"n": n, "pad": pad}}
                             for n in range(i, i + 500)]
                    assert client.post("/publish", json=batch).status_code == 200

            publish(40_000, 0)  # history full: 50 topics x 100 entries
            baseline = worker_rss_kib(hub)
            publish(120_000, 40_000)  # three times as much again
            after = worker_rss_kib(hub)
        # 5,000 kept entries of ~0.5 KB are ~2.5 MB in all; an unbounded history
        # would have added ~60 MB here.
        assert after - baseline < 12 * 1024, (baseline, after)
    finally:
        hub.stop()
