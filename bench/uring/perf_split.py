"""Where a sender's CPU goes, from `perf script` call chains.

    perf record -F 999 -g -p SERVER_PID -o perf.data -- sleep 8
    perf script -i perf.data -F comm,tid,ip,sym | python bench/uring/perf_split.py

Each sample is put in the first bucket whose test its call chain passes, so
the buckets add up to 100% of the process's samples. The point is the share
of the loopback receive path (the peer's TCP processing, run in softirq on
the sender's own stack) and of the syscall machinery that io_uring could
save.
"""
from __future__ import annotations

import sys
from collections import Counter

RX = ("net_rx_action", "process_backlog", "__netif_receive_skb", "ip_rcv")
WAKE = ("try_to_wake_up", "ep_poll_callback", "__wake_up_sync_key", "sock_def_readable")
BUCKETS = [
    ("loopback receive: wake the reader", lambda s: any(f in s for f in RX) and any(f in s for f in WAKE)),
    ("loopback receive: IP/TCP input", lambda s: any(f in s for f in RX)),
    ("TCP send: skb, copy, transmit", lambda s: "tcp_sendmsg" in s or "tcp_write_xmit" in s),
    ("io_uring: submit/complete", lambda s: any(f.startswith(("io_", "__io_")) for f in s)),
    ("syscall entry/exit, fd lookup, other kernel", lambda s: s.get("_kernel", False)),
    ("user space (Python, uvloop, C loop)", lambda s: True),
]


def samples(lines):
    stack: dict = {}
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
            stack = {}
            continue
        if not line.startswith((" ", "\t")):
            stack = {"_comm": line.split()[0]}
            continue
        parts = line.split(None, 1)
        sym = parts[1].split("+")[0].strip() if len(parts) > 1 else "?"
        ip = int(parts[0], 16) if parts[0] and all(c in "0123456789abcdef" for c in parts[0]) else 0
        if ip >= 0xffff800000000000:
            stack["_kernel"] = True
        stack[sym] = True
    if stack:
        yield stack


def main() -> None:
    counts: Counter = Counter()
    total = 0
    for s in samples(sys.stdin):
        total += 1
        for name, test in BUCKETS:
            if test(s):
                counts[name] += 1
                break
    print(f"{total} samples")
    for name, _ in BUCKETS:
        print(f"  {counts[name] / max(1, total) * 100:5.1f}%  {name}")


if __name__ == "__main__":
    main()
