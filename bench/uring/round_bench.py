"""A round's writes, five ways: issue #20's io_uring experiment.

One server process holds N connected loopback TCP sockets (uvloop transports,
as picows has them); another process drains the peers and timestamps every
frame. A round is one FRAME-byte frame to every socket, sent at a steady
rate (one round per tick) and as fast as the loop allows (one round per loop
turn). Every way of writing a round runs in the same run, interleaved:

  py-transport   for t in transports: t.write(frame)   (what the hub does)
  py-send        the same with socket.send from Python (uvloop's buffer only
                 for what the kernel did not take)
  c-send         a C loop of send() on the fds: one syscall each, no Python
  threads-2      c-send split over 2 threads, the GIL released
  uring          all sends of a round as io_uring SQEs (registered files),
                 one io_uring_enter, completions reaped at once (they are
                 there: a send to a non-blocking socket completes inline) and
                 an eventfd in the loop for any that are not
  uring-sqpoll   the same with SQPOLL: a kernel thread submits, the process
                 makes no syscall; its CPU is not the process's, so compare
                 the whole-system column

Run: .venv/bin/python bench/uring/round_bench.py   (--help for the knobs)
The C part (roundsend.c) is compiled on demand into a temp dir: it needs gcc
and liburing's headers (Debian: liburing-dev); nothing else in the project
does.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import hashlib
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "roundsend.c"
END_PHASE = 0xFFFFFFFF
RES_SKIPPED = -100000
RES_PENDING = -100001
VARIANTS = ["py-transport", "py-send", "c-send", "threads-2", "uring", "uring-sqpoll"]


# ---------------------------------------------------------------- building

def build_library() -> ctypes.CDLL:
    """Compile roundsend.c into a temp dir keyed by its hash (once)."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"hubbub-uring-{digest}" / "libroundsend.so"
    if not out.exists():
        if not Path("/usr/include/liburing.h").exists():
            sys.exit("liburing's headers are missing: apt-get install -y liburing-dev")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", str(tmp),
                        str(SOURCE), "-luring", "-lpthread"], check=True)
        tmp.rename(out)
    lib = ctypes.CDLL(str(out))  # CDLL calls release the GIL
    ip, cp, up = ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.POINTER(ctypes.c_ubyte)
    round_args = [ip, ctypes.c_int, cp, ctypes.c_int, up, ip]
    lib.c_send_round.argtypes = round_args
    lib.tp_create.restype = ctypes.c_void_p
    lib.tp_create.argtypes = [ctypes.c_int]
    lib.tp_send_round.argtypes = [ctypes.c_void_p] + round_args
    lib.tp_destroy.argtypes = [ctypes.c_void_p]
    lib.ur_create.restype = ctypes.c_void_p
    lib.ur_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ip, ctypes.c_int,
                              ctypes.c_int, ip]
    lib.ur_send_round.argtypes = [ctypes.c_void_p] + round_args
    lib.ur_reap.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.ur_inflight.argtypes = [ctypes.c_void_p]
    lib.ur_setup_flags.argtypes = [ctypes.c_void_p]
    lib.ur_destroy.argtypes = [ctypes.c_void_p]
    u64p = ctypes.POINTER(ctypes.c_uint64)
    lib.rx_run.restype = ctypes.c_long
    lib.rx_run.argtypes = [ip, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                           ctypes.POINTER(ctypes.c_uint32), u64p, u64p]
    return lib


# ---------------------------------------------------------------- receiver

def receiver(port: int, conns: int, framelen: int, nphases: int) -> None:
    """Connect `conns` sockets, drain them until the end frame, print JSON."""
    lib = build_library()
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    print("connected", flush=True)
    buckets, step = lib.rx_hist_buckets(), lib.rx_hist_step_ns()
    fds = (ctypes.c_int * conns)(*[s.fileno() for s in socks])
    hist = (ctypes.c_uint32 * (buckets * nphases))()
    frames = (ctypes.c_uint64 * nphases)()
    cpu = (ctypes.c_uint64 * nphases)()
    total = lib.rx_run(fds, conns, framelen, nphases, hist, frames, cpu)
    if total < 0:
        sys.exit(f"receiver: {os.strerror(-total)}")
    phases = []
    for p in range(nphases):
        row = hist[p * buckets:(p + 1) * buckets]
        n = frames[p]
        marks = {"p50": 0.50 * n, "p99": 0.99 * n, "max": n}
        got, seen, cum = {}, 0, 0
        if n:
            for b, c in enumerate(row):
                if not c:
                    continue
                cum += c
                for name, at in marks.items():
                    if name not in got and cum >= at:
                        got[name] = (b + 1) * step / 1e6  # bucket's upper edge, ms
                seen += 1
                if len(got) == len(marks):
                    break
        phases.append({"frames": n, "cpu_s": cpu[p] / 1e9, **got})
    print(json.dumps({"total": total, "phases": phases}), flush=True)


# ---------------------------------------------------------------- the server side

class Proto(asyncio.Protocol):
    """Keeps blocked[i] = "the transport holds unsent bytes": with a high-water
    mark of 0, uvloop pauses on any buffered byte and resumes at empty."""

    def __init__(self, index: int, blocked) -> None:
        self.index = index
        self.blocked = blocked

    def connection_made(self, transport) -> None:
        transport.set_write_buffer_limits(high=0, low=0)

    def pause_writing(self) -> None:
        self.blocked[self.index] = 1

    def resume_writing(self) -> None:
        self.blocked[self.index] = 0

    def data_received(self, data) -> None:
        pass


def read_proc_stat() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def ksoftirqd_seconds() -> float:
    """CPU of the ksoftirqd threads: softirq work the kernel deferred there
    is charged to no process of ours, so it must be added back."""
    global KSOFTIRQD
    if KSOFTIRQD is None:
        KSOFTIRQD = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/comm").read_text().startswith("ksoftirqd/"):
                    KSOFTIRQD.append(f"/proc/{pid}/stat")
            except OSError:
                continue
    total = 0
    for path in KSOFTIRQD:
        with open(path) as f:
            rest = f.read().rsplit(")", 1)[1].split()
        total += int(rest[11]) + int(rest[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


KSOFTIRQD: list[str] | None = None


def process_cpu() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # every thread, SQPOLL's included if it is ours
    return ru.ru_utime, ru.ru_stime


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Server:
    def __init__(self, args, lib, socks) -> None:
        self.args = args
        self.lib = lib
        self.n = len(socks)
        self.socks = socks
        self.blocked = (ctypes.c_ubyte * self.n)()
        self.res = (ctypes.c_int * self.n)()
        self.transports = []
        self.fds = None
        self.pysocks = []
        self.pool = None
        self.rings: dict[str, int] = {}
        self.efds: dict[str, int] = {}
        self.fallback_writes = 0  # bytes handed to uvloop because the kernel did not take them
        self.fallback_sockets = 0
        self.busy_drops = 0
        self.late_completions = 0
        self.round_frame = b""
        self.round_t0 = 0
        self.round_done: list[float] = []
        self.ring_inflight_since = 0

    async def setup(self) -> None:
        loop = asyncio.get_running_loop()
        for i, s in enumerate(self.socks):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tr, _ = await loop.connect_accepted_socket(lambda i=i: Proto(i, self.blocked), s)
            self.transports.append(tr)
        fds = [tr.get_extra_info("socket").fileno() for tr in self.transports]
        self.fds = (ctypes.c_int * self.n)(*fds)
        # py-send: socket objects on dups of the same fds (same open file).
        self.pysocks = [socket.socket(fileno=os.dup(fd)) for fd in fds]
        for s in self.pysocks:
            s.setblocking(False)
        self.pool = self.lib.tp_create(2)
        for name, flags in (("uring", 2), ("uring-sqpoll", 1)):
            if name not in self.args.variants:
                continue
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            err = ctypes.c_int(0)
            ring = self.lib.ur_create(2048, flags, self.args.sqpoll_idle_ms, self.fds, self.n,
                                      efd, ctypes.byref(err))
            if not ring:
                print(f"# {name}: io_uring refused: {os.strerror(-err.value)}; skipped")
                self.args.variants.remove(name)
                os.close(efd)
                continue
            print(f"# {name}: ring setup flags 0x{self.lib.ur_setup_flags(ring):x}")
            self.rings[name], self.efds[name] = ring, efd
            loop.add_reader(efd, self.on_ring_event, name)

    # -- the ways to write one round; each returns when the round is handed over

    def round_py_transport(self, frame: bytes) -> None:
        for tr in self.transports:
            tr.write(frame)

    def round_py_send(self, frame: bytes) -> None:
        blocked, transports, n = self.blocked, self.transports, len(frame)
        for i, s in enumerate(self.pysocks):
            if blocked[i]:
                transports[i].write(frame)
                continue
            try:
                sent = s.send(frame)
            except BlockingIOError:
                sent = 0
            if sent != n:
                self.fallback_sockets += 1
                self.fallback_writes += n - sent
                transports[i].write(frame[sent:])

    def round_c_send(self, frame: bytes) -> None:
        k = self.lib.c_send_round(self.fds, self.n, frame, len(frame), self.blocked, self.res)
        if k:
            self.finish_shorts(frame)

    def round_threads(self, frame: bytes) -> None:
        k = self.lib.tp_send_round(self.pool, self.fds, self.n, frame, len(frame),
                                   self.blocked, self.res)
        if k:
            self.finish_shorts(frame)

    def round_uring(self, frame: bytes, name: str = "uring") -> None:
        ring = self.rings[name]
        if self.lib.ur_inflight(ring):
            # Only SQPOLL gets here: wait for the previous round before reusing res.
            self.lib.ur_reap(ring, self.lib.ur_inflight(ring))
            self.finish_shorts(self.round_frame)
            self.note_done()
        k = self.lib.ur_send_round(ring, self.fds, self.n, frame, len(frame),
                                   self.blocked, self.res)
        self.late_completions += self.lib.ur_inflight(ring)  # not done when submit returned
        if k:
            self.finish_shorts(frame)

    def round_uring_sqpoll(self, frame: bytes) -> None:
        self.round_uring(frame, "uring-sqpoll")

    def on_ring_event(self, name: str) -> None:
        try:
            os.read(self.efds[name], 8)
        except BlockingIOError:
            return
        ring = self.rings[name]
        if self.lib.ur_inflight(ring) and self.lib.ur_reap(ring, 0):
            self.finish_shorts(self.round_frame)
        self.note_done()

    def note_done(self) -> None:
        """The last completion of an SQPOLL round: the round is done now."""
        if self.round_t0 and not any(self.lib.ur_inflight(r) for r in self.rings.values()):
            self.round_done.append((time.monotonic_ns() - self.round_t0) / 1e6)
            self.round_t0 = 0

    def finish_shorts(self, frame: bytes) -> None:
        """Hand uvloop what the kernel did not take; order per socket is kept
        because a socket whose transport holds bytes is skipped (blocked)."""
        res, n = self.res, len(frame)
        for i in range(self.n):
            r = res[i]
            if r == n or r == RES_PENDING:
                continue
            if r == RES_SKIPPED:
                if self.blocked[i]:
                    self.transports[i].write(frame)  # queue behind the transport's bytes
                else:
                    self.busy_drops += 1  # an io_uring send still in flight on it
            else:
                sent = max(r, 0)  # -EAGAIN: nothing taken
                self.fallback_sockets += 1
                self.fallback_writes += n - sent
                self.transports[i].write(frame[sent:])
            res[i] = n

    # -- phases

    async def run_phase(self, phase: int, variant: str, mode: str) -> dict:
        loop = asyncio.get_running_loop()
        write = getattr(self, "round_" + variant.replace("-", "_").replace("threads_2", "threads"))
        pad = b"x" * (self.args.frame - 16)
        duration = self.args.steady_seconds if mode == "steady" else self.args.fast_seconds
        interval = 1.0 / self.args.rate
        durations: list[float] = []
        round_cpu: list[float] = []  # the calling thread's CPU per round, ms
        self.round_done = []
        sqpoll = variant == "uring-sqpoll"
        done = loop.create_future()
        rounds = 0
        self.fallback_writes = self.fallback_sockets = self.busy_drops = self.late_completions = 0

        def one_round() -> None:
            nonlocal rounds
            t0 = time.monotonic_ns()
            c0 = time.thread_time_ns()  # exact (scheduler ns), softirq on our stack included
            frame = struct.pack("<QII", t0, phase, rounds) + pad
            self.round_frame = frame
            write(frame)
            round_cpu.append((time.thread_time_ns() - c0) / 1e6)
            if sqpoll:
                self.round_t0 = t0
                self.note_done()
            else:
                durations.append((time.monotonic_ns() - t0) / 1e6)
            rounds += 1
            if time.monotonic() - start >= duration:
                done.set_result(None)
            elif mode == "steady":
                loop.call_at(start + rounds * interval, one_round)
            else:
                loop.call_soon(one_round)

        stat0, cpu0, wall0 = read_proc_stat(), process_cpu(), time.monotonic()
        soft0 = ksoftirqd_seconds()
        start = loop.time()
        loop.call_soon(one_round)
        await done
        # Let in-flight completions and uvloop's buffers drain before reading CPU.
        while any(self.blocked) or any(self.lib.ur_inflight(r) for r in self.rings.values()):
            await asyncio.sleep(0.001)
        stat1, cpu1, wall1 = read_proc_stat(), process_cpu(), time.monotonic()
        soft1 = ksoftirqd_seconds()
        if sqpoll:
            durations = self.round_done
        sends = rounds * self.n
        ticks = os.sysconf("SC_CLK_TCK")
        d = [b - a for a, b in zip(stat0, stat1)]
        busy = (d[0] + d[1] + d[2] + d[5] + d[6]) / ticks  # user nice system irq softirq
        return {
            "phase": phase, "variant": variant, "mode": mode, "rounds": rounds, "sends": sends,
            "wall_s": wall1 - wall0,
            "user_s": cpu1[0] - cpu0[0], "sys_s": cpu1[1] - cpu0[1],
            "system_busy_s": busy, "softirq_s": d[6] / ticks, "steal_s": d[7] / ticks,
            "ksoftirqd_s": soft1 - soft0,
            "round_p50_ms": percentile(durations, 0.5), "round_p99_ms": percentile(durations, 0.99),
            "round_min_ms": min(durations, default=float("nan")),
            "round_cpu_p50_ms": percentile(round_cpu, 0.5),
            "round_cpu_mean_ms": statistics.fmean(round_cpu) if round_cpu else float("nan"),
            "fallback_sockets": self.fallback_sockets, "fallback_bytes": self.fallback_writes,
            "busy_drops": self.busy_drops, "late_completions": self.late_completions,
        }

    async def idle_phase(self, phase: int, seconds: float) -> dict:
        stat0, wall0 = read_proc_stat(), time.monotonic()
        await asyncio.sleep(seconds)
        stat1, wall1 = read_proc_stat(), time.monotonic()
        d = [b - a for a, b in zip(stat0, stat1)]
        ticks = os.sysconf("SC_CLK_TCK")
        return {"phase": phase, "variant": "idle", "mode": "idle", "wall_s": wall1 - wall0,
                "system_busy_s": (d[0] + d[1] + d[2] + d[5] + d[6]) / ticks}

    def end(self) -> None:
        frame = struct.pack("<QII", 0, END_PHASE, 0) + b"x" * (self.args.frame - 16)
        for tr in self.transports:
            tr.write(frame)


def plan(args) -> list[tuple[str, str]]:
    """(variant, mode) per phase: repeats interleave the variants, so drift in
    the machine's load hits each of them alike."""
    phases = []
    for rep in range(args.repeats):
        for mode in args.modes:
            order = args.variants if rep % 2 == 0 else list(reversed(args.variants))
            phases.extend((v, mode) for v in order)
        phases.append(("idle", "idle"))
    return phases


async def serve(args, lib) -> list[dict]:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    phases = plan(args)
    rx = subprocess.Popen([sys.executable, __file__, "--receiver", str(port), "--conns",
                           str(args.conns), "--frame", str(args.frame),
                           "--nphases", str(len(phases))], stdout=subprocess.PIPE, text=True)
    loop = asyncio.get_running_loop()
    socks = []
    listener.setblocking(False)
    for _ in range(args.conns):
        s, _ = await loop.sock_accept(listener)
        socks.append(s)
    assert rx.stdout.readline().strip() == "connected"
    server = Server(args, lib, socks)
    await server.setup()
    phases = plan(args)  # setup may have dropped a variant io_uring refused
    rows = []
    for phase, (variant, mode) in enumerate(phases):
        await asyncio.sleep(args.gap)
        if variant == "idle":
            rows.append(await server.idle_phase(phase, args.steady_seconds))
        else:
            rows.append(await server.run_phase(phase, variant, mode))
        print(f"# phase {phase} {variant} {mode}: {rows[-1].get('rounds', '')} rounds",
              file=sys.stderr, flush=True)
    server.end()
    out, _ = await loop.run_in_executor(None, rx.communicate)
    received = json.loads(out.strip().splitlines()[-1])
    for row in rows:
        rec = received["phases"][row["phase"]]
        row.update({"rx_frames": rec["frames"], "rx_cpu_s": rec["cpu_s"],
                    "rx_p50_ms": rec.get("p50"), "rx_p99_ms": rec.get("p99"),
                    "rx_max_ms": rec.get("max")})
    for tr in server.transports:
        tr.close()
    return rows


def report(rows: list[dict], args) -> None:
    idle = [r for r in rows if r["variant"] == "idle"]
    background = statistics.median(r["system_busy_s"] / r["wall_s"] for r in idle) if idle else 0
    print(f"\nbackground (other jobs on the machine, no sends): "
          f"{background * 100:.0f}% of one CPU (median of {len(idle)} idle phases)")
    for mode in args.modes:
        title = (f"{args.rate} rounds/s" if mode == "steady" else "as fast as possible")
        print(f"\n#### {args.conns} sockets x {args.frame} B frame, {title} "
              f"(median of {args.repeats} phases each)\n")
        print("| way | rounds/s | sender CPU per send | sys share | receiver CPU per frame | "
              "ksoftirqd per send | sender + receiver + ksoftirqd | whole-system CPU per send | minus background | "
              "round: caller's CPU mean / p50 | round wall min / p50 / p99 | receiver p50 / p99 | "
              "lost | handed to uvloop | completions after submit |")
        print("| --- " * 15 + "|")
        for v in args.variants:
            rs = [r for r in rows if r["variant"] == v and r["mode"] == mode]
            if not rs:
                continue
            def med(f):
                return statistics.median(f(r) for r in rs)
            us = 1e6
            proc = med(lambda r: (r["user_s"] + r["sys_s"]) / r["sends"] * us)
            sysshare = med(lambda r: r["sys_s"] / max(1e-9, r["user_s"] + r["sys_s"]))
            whole = med(lambda r: r["system_busy_s"] / r["sends"] * us)
            net = med(lambda r: (r["system_busy_s"] - background * r["wall_s"]) / r["sends"] * us)
            rxcpu = med(lambda r: r["rx_cpu_s"] / max(1, r["rx_frames"]) * us)
            lost = sum(r["sends"] - r["rx_frames"] for r in rs)
            fb = sum(r["fallback_sockets"] for r in rs)
            both = med(lambda r: (r["user_s"] + r["sys_s"] + r["rx_cpu_s"] + r["ksoftirqd_s"])
                       / r["sends"] * us)
            print(f"| {v} | {med(lambda r: r['rounds'] / r['wall_s']):,.0f} | {proc:.2f} µs | "
                  f"{sysshare * 100:.0f}% | {rxcpu:.2f} µs | "
                  f"{med(lambda r: r['ksoftirqd_s'] / r['sends'] * us):.2f} µs | {both:.2f} µs | "
                  f"{whole:.2f} µs | {net:.2f} µs | {med(lambda r: r['round_cpu_mean_ms']):.2f} / {med(lambda r: r['round_cpu_p50_ms']):.2f} ms | "
                  f"{med(lambda r: r['round_min_ms']):.2f} / "
                  f"{med(lambda r: r['round_p50_ms']):.2f} / {med(lambda r: r['round_p99_ms']):.2f} ms | "
                  f"{med(lambda r: r['rx_p50_ms'] or 0):.2f} / {med(lambda r: r['rx_p99_ms'] or 0):.2f} ms | "
                  f"{lost} of {sum(r['sends'] for r in rs):,} | {fb} | "
                  f"{sum(r['late_completions'] for r in rs):,} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--frame", type=int, default=150, help="bytes per frame (>= 16)")
    ap.add_argument("--rate", type=float, default=100.0, help="rounds per second, steady mode")
    ap.add_argument("--steady-seconds", type=float, default=5.0)
    ap.add_argument("--fast-seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["steady", "fast"], choices=["steady", "fast"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--sqpoll-idle-ms", type=int, default=2,
                    help="how long the SQPOLL thread spins for work before it sleeps")
    ap.add_argument("--gap", type=float, default=0.3, help="idle seconds between phases")
    ap.add_argument("--json", help="also write every phase's numbers here")
    ap.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--nphases", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.receiver:
        receiver(args.receiver, args.conns, args.frame, args.nphases)
        return
    lib = build_library()
    import uvloop

    print(f"# kernel {os.uname().release}, {os.cpu_count()} CPUs, "
          f"io_uring_disabled={Path('/proc/sys/kernel/io_uring_disabled').read_text().strip() if Path('/proc/sys/kernel/io_uring_disabled').exists() else 'n/a'}")
    rows = uvloop.run(serve(args, lib))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    report(rows, args)


if __name__ == "__main__":
    main()
