"""``hubbub bench [--quick]``: the fan-out benchmark, every contender in one run.

Shape measured: ONE topic, every client subscribed to it, the publisher in
the server process (each contender's own publish call, driven by the same
loop: bursts of SATURATED_BURST per event-loop turn, or a steady rate), ~100-byte payloads. The server is
pinned to CPU 0, the load generator (another process) to CPU 1. Server CPU
is user + system time of the server's process tree while publishing and
delivering; deliveries are counted by the clients.

Writes ``<out>/<scenario>.json``, ``<out>/RESULTS.md`` (the tables) and PNG
plots (throughput against subscribers, latency CDF).

``--tokens`` runs only the hubbub contenders, each twice: subscribers signed
in with a JWT without ``exp`` and with one (expiry tracked), side by side.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVERS = "hubbub.benchmark.servers"


def _plain(name):
    return [sys.executable, "-m", SERVERS, name, "{port}"]


def _granian(app):
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--factory",
            "--port", "{port}", "--backlog", "16384", "--backpressure", "100000",
            "--log-level", "warning", f"{SERVERS}:{app}"]


def _uvicorn(app):
    return [sys.executable, "-m", "uvicorn", "--factory", "--port", "{port}", "--loop", "uvloop",
            "--log-level", "warning", "--backlog", "16384", f"{SERVERS}:{app}"]


WS_PATH = "/ws?topic=bench.t"
SSE_PATH = "/sse?topic=bench.t"
CONTENDERS = {
    "hubbub native ws": (_plain("hubbub-native"), "ws", WS_PATH),
    "hubbub native sse": (_plain("hubbub-native"), "sse", SSE_PATH),
    "hubbub asgi ws (granian)": (_granian("hubbub_asgi_app"), "ws", WS_PATH),
    "hubbub asgi sse (granian)": (_granian("hubbub_asgi_app"), "sse", SSE_PATH),
    "naive picows loop": (_plain("naive-picows"), "ws", "/"),
    "websockets broadcast()": (_plain("websockets-broadcast"), "ws", "/"),
    "naive granian asgi ws": (_granian("naive_granian_app"), "ws", "/"),
    "sse-starlette (granian)": (_granian("sse_starlette_app"), "sse", "/sse"),
    "python-socketio (uvicorn)": (_uvicorn("socketio_app"), "socketio", "/socket.io/?EIO=4&transport=websocket"),
}
IDLE_CONTENDERS = ["hubbub native ws", "hubbub asgi ws (granian)", "naive picows loop",
                   "websockets broadcast()", "naive granian asgi ws"]

# --tokens (issue 22): the hubbub contenders with a JWT secret, each twice, its
# subscribers signed in with a token without `exp` (not tracked) and with one
# (tracked by core/expiry.py: one heap entry per connection, no per-delivery
# check), side by side in one run. The exp is a day ahead: tracked, never reached.
BENCH_JWT_SECRET = "hubbub-bench-secret-not-for-production-0123456789"
NO_EXP, WITH_EXP = "token without exp", "token with exp (tracked)"


def _bench_token(exp: bool) -> str:
    import jwt

    # `subscribe`: a signed-in user may otherwise subscribe to public.> and user.<sub>.> only.
    claims = {"sub": "bench", "subscribe": ["bench.>"]} | ({"exp": int(time.time()) + 86_400} if exp else {})
    return jwt.encode(claims, BENCH_JWT_SECRET, algorithm="HS256")


def token_contenders() -> dict[str, tuple]:
    out = {}
    for name in ("hubbub native ws", "hubbub native sse", "hubbub asgi ws (granian)", "hubbub asgi sse (granian)"):
        command, protocol, path = CONTENDERS[name]
        for label, exp in ((NO_EXP, False), (WITH_EXP, True)):
            out[f"{name}, {label}"] = (command, protocol, f"{path}&token={_bench_token(exp)}")
    return out


# "Saturated": the publisher yields to the event loop once per 100
# publications, so whatever a server can batch, it may. Servers that write
# per message per client are unaffected by the burst size.
SATURATED_BURST = 100


def scenarios(quick: bool, smoke: bool = False) -> list[dict]:
    if smoke:  # every contender and scenario, tiny: proves the harness works (the tests run it)
        return [dict(s, clients=min(s["clients"], 50 if s.get("idle") else 20), count=min(s["count"], 50),
                     rate=0) for s in scenarios(True) if not s.get("needs_fds")]
    scale = 0.2 if quick else 1.0
    return [
        # The headline shape: publications arrive one per loop turn (one HTTP
        # request, one client frame, one backplane message each), as fast as
        # the server takes them.
        {"name": "single-1k", "title": "{clients:,} subscribers, one publication per loop turn, saturated (100 B)",
         "clients": 1000, "count": int(2000 * scale), "rate": 0, "burst": 1},
        {"name": "fanout-1k", "title": "{clients:,} subscribers, bursts of %d publications per loop turn (100 B)"
         % SATURATED_BURST, "clients": 1000, "count": int(500 * scale), "rate": 0, "burst": SATURATED_BURST},
        {"name": "fanout-100", "title": "{clients:,} subscribers, bursts of %d publications per loop turn (100 B)"
         % SATURATED_BURST, "clients": 100, "count": int(5000 * scale), "rate": 0, "burst": SATURATED_BURST},
        {"name": "latency-1k", "title": "{clients:,} subscribers x 100 msg/s steady, one per loop turn (latency)",
         "clients": 1000, "count": int(1000 * scale), "rate": 100, "burst": 1},
        {"name": "lowload-1k", "title": "{clients:,} subscribers x 1 msg/s, one per loop turn (latency at low load)",
         "clients": 1000, "count": max(5, int(20 * scale)), "rate": 1, "burst": 1},
        {"name": "idle-10k", "title": "{clients:,} idle connections (RSS per connection)",
         "clients": 2000 if quick else 10000, "count": 0, "rate": 0, "burst": 1, "idle": True},
        {"name": "idle-100k", "title": "{clients:,} idle connections", "clients": 100_000, "count": 0,
         "rate": 0, "burst": 1, "idle": True, "needs_fds": 210_000},
    ]


# --port-base pins the ports (one per case, counting up) for firewalls and
# reproducible runs; without it each case takes a free port.
_pinned_ports: "itertools.count | None" = None


def _free_port() -> int:
    if _pinned_ports is not None:
        return next(_pinned_ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                todo.extend(int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split())
    return pids


def _cpu_split(pid: int) -> tuple[float, float]:
    """CPU seconds of ``pid`` and its descendants: (user, system). On loopback
    the system part holds both ends of every socket send (see bench/RESULTS.md)."""
    user = system = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def _cpu(pid: int) -> float:
    return sum(_cpu_split(pid))


def _rss_kib(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited at start")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def run_case(contender: str, scenario: dict, workdir: Path, contenders: dict | None = None) -> dict:
    contenders = contenders or CONTENDERS
    command, protocol, path = contenders[contender]
    port = _free_port()
    go_file = workdir / f"go-{port}"
    env = {**os.environ, "BENCH_COUNT": str(scenario["count"]), "BENCH_BURST": str(scenario["burst"]),
           "BENCH_RATE": str(scenario["rate"]), "BENCH_SIZE": "100", "BENCH_GO_FILE": str(go_file),
           "HUBBUB_DEV": "1", "PYTHONUNBUFFERED": "1"}
    if "token=" in path:  # the server checks the subscribers' tokens (--tokens)
        env["HUBBUB_JWT_SECRET"] = BENCH_JWT_SECRET
    server = subprocess.Popen(["taskset", "-c", "0", *(a.format(port=port) for a in command)], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(workdir / f"server-{port}.log", "wb"),
                              start_new_session=True)
    try:
        _wait_port(port, server)
        time.sleep(0.3)
        rss_before = _rss_kib(server.pid)
        scheme = "http" if protocol == "sse" else "ws"
        loadgen = subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, "-m", "hubbub.benchmark.loadgen", "--protocol", protocol,
             "--url", f"{scheme}://127.0.0.1:{port}{path}", "--clients", str(scenario["clients"]),
             "--count", str(scenario["count"]), "--hold", "3" if scenario.get("idle") else "0"],
            env=env, stdout=subprocess.PIPE, stderr=open(workdir / f"loadgen-{port}.log", "wb"), text=True)
        line = loadgen.stdout.readline().strip()
        if line != "ready":
            loadgen.wait(30)
            raise RuntimeError(f"load generator failed: {(workdir / f'loadgen-{port}.log').read_text()[-500:]}")
        result: dict = {"contender": contender, "scenario": scenario["name"]}
        if scenario.get("idle"):
            time.sleep(1.5)
            rss_after = _rss_kib(server.pid)
            result["rss_per_connection_kib"] = (rss_after - rss_before) / scenario["clients"]
        user_before, system_before = _cpu_split(server.pid)
        go_file.touch()
        output = json.loads(loadgen.stdout.readline())
        user, system = _cpu_split(server.pid)
        user, system = user - user_before, system - system_before
        cpu = user + system
        loadgen.wait(30)
        result.update(output)
        result["server_cpu_s"] = cpu
        result["server_user_s"] = user
        result["lost"] = output["expected"] - output["received"]
        if output["received"]:
            result["cpu_us_per_delivery"] = cpu / output["received"] * 1e6
            result["user_us_per_delivery"] = user / output["received"] * 1e6
            result["deliveries_per_s"] = output["received"] / max(output["seconds"], 1e-9)
        return result
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 15)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(5)


def _fmt(value, unit="", digits=2):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def table(scenario: dict, rows: list[dict]) -> str:
    lines = [f"### {scenario['title'].format(clients=scenario['clients'])}", ""]
    if scenario.get("idle"):
        lines += ["| contender | connections | RSS per connection |", "| --- | --- | --- |"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['contender']} | — | {r['error']} |")
            else:
                lines.append(f"| {r['contender']} | {r['clients']:,} | {_fmt(r['rss_per_connection_kib'], ' KiB')} |")
        return "\n".join(lines)
    lines += ["| contender | deliveries/s | server CPU per delivery (user) | p50 | p99 | max | lost |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['contender']} | — | — | — | — | — | {r['error']} |")
            continue
        lines.append(f"| {r['contender']} | {_fmt(r.get('deliveries_per_s'), digits=0)} |"
                     f" {_fmt(r.get('cpu_us_per_delivery'), ' µs')} ({_fmt(r.get('user_us_per_delivery'), ' µs')})"
                     f" | {_fmt(r['p50_ms'], ' ms')} |"
                     f" {_fmt(r['p99_ms'], ' ms')} | {_fmt(r['max_ms'], ' ms')} | {r['lost']:,} of {r['expected']:,} |")
    return "\n".join(lines)


def plots(results: dict[str, list[dict]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # A chart only for what ran: an empty one would read as a result.
    # Grouped bars: one group per subscriber count, one bar per contender (two
    # x-values joined by lines on log-log axes read as a trend that is not there).
    groups = [name for name in ("fanout-100", "fanout-1k") if results.get(name)]
    contenders = [c for c in CONTENDERS if any(r["contender"] == c and "error" not in r
                                               for g in groups for r in results[g])]
    if contenders:
        fig, ax = plt.subplots(figsize=(10, 5))
        width = 0.8 / len(contenders)
        for i, contender in enumerate(contenders):
            heights = [next((r.get("deliveries_per_s") or 0 for r in results[g]
                             if r["contender"] == contender and "error" not in r), 0) for g in groups]
            ax.bar([g + i * width for g in range(len(groups))], heights, width, label=contender)
        ax.set_xticks([g + width * (len(contenders) - 1) / 2 for g in range(len(groups))])
        ax.set_xticklabels([f"{results[g][0].get('clients', '?'):,} subscribers" if isinstance(
            results[g][0].get("clients"), int) else g for g in groups])
        ax.set_yscale("log")  # the peers sit one to two orders of magnitude apart
        ax.set_ylabel("deliveries / s")
        ax.set_title("Fan-out throughput (saturated publishing, 100 B)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not over them
        path = out / "throughput.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        written.append(path)

    sampled = [(r["contender"], sorted(r["latency_samples"]))
               for r in results.get("latency-1k", []) if r.get("latency_samples")]
    if sampled:
        fig, ax = plt.subplots(figsize=(8, 5))
        for contender, samples in sampled:
            ax.plot([s / 1e6 for s in samples], [i / len(samples) for i in range(len(samples))],
                    label=contender)
        ax.set_xscale("log")
        ax.set_xlabel("publish-to-receive latency (ms)")
        ax.set_ylabel("fraction of messages")
        ax.set_title("Latency CDF, 1,000 subscribers x 100 msg/s")
        ax.legend(fontsize=7)
        path = out / "latency_cdf.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        written.append(path)
    plt.close("all")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hubbub bench")
    parser.add_argument("--quick", action="store_true", help="smaller runs (about two minutes)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/results", help="where results go")
    parser.add_argument("--only", action="append", help="contender names to run (substring match)")
    parser.add_argument("--scenario", action="append", help="scenario names to run")
    parser.add_argument("--port-base", type=int,
                        help="pin the servers' ports: PORT, PORT+1, ... one per case (default: free ports)")
    parser.add_argument("--burst", type=int,
                        help=f"publications per event-loop turn in saturated runs ({SATURATED_BURST})")
    parser.add_argument("--tokens", action="store_true",
                        help="run the hubbub contenders with a JWT secret, subscribers signed in with"
                             " tokens without exp and with exp (expiry tracked), side by side")
    args = parser.parse_args(argv)
    contenders = token_contenders() if args.tokens else CONTENDERS
    idle_contenders = [n for n in contenders if n.split(",")[0] in IDLE_CONTENDERS]
    # A name that matches nothing would run nothing and look like a result.
    known = {scenario["name"] for scenario in scenarios(args.quick, args.smoke)}
    for name in args.scenario or ():
        if name not in known:
            parser.error(f"no scenario {name!r}; scenarios: {', '.join(sorted(known))}")
    for name in args.only or ():
        if not any(name in contender for contender in contenders):
            parser.error(f"--only {name!r} matches no contender;"
                         f" contenders: {', '.join(contenders)}")
    global _pinned_ports
    _pinned_ports = itertools.count(args.port_base) if args.port_base else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = Path(tempfile.mkdtemp(prefix="hubbub-bench-"))
    results: dict[str, list[dict]] = {}
    sections = []
    for scenario in scenarios(args.quick, args.smoke):
        if args.scenario and scenario["name"] not in args.scenario:
            continue
        if args.burst and not scenario["rate"] and scenario["burst"] > 1:
            scenario["burst"] = args.burst
        names = idle_contenders if scenario.get("idle") else list(contenders)
        if args.only:
            names = [n for n in names if any(o in n for o in args.only)]
        rows = []
        for name in names:
            if scenario.get("needs_fds", 0) > hard:
                rows.append({"contender": name, "scenario": scenario["name"],
                             "error": f"skipped: needs ulimit -n >= {scenario['needs_fds']:,} (here {hard:,})"})
                continue
            print(f"[{scenario['name']}] {name} ...", file=sys.stderr, flush=True)
            try:
                rows.append(run_case(name, scenario, workdir, contenders))
            except Exception as error:  # one broken contender must not hide the others
                rows.append({"contender": name, "scenario": scenario["name"], "error": str(error)[:200]})
        results[scenario["name"]] = rows
        (out / f"{scenario['name']}.json").write_text(json.dumps(rows, indent=1))
        sections.append(table(scenario, rows))
    header = (f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()};"
              f" command: `hubbub bench{' --quick' if args.quick else ''}{' --tokens' if args.tokens else ''}`")
    report = header + "\n\n" + "\n\n".join(sections) + "\n"
    (out / "RESULTS.md").write_text(report)
    if not args.tokens:  # the plots compare the peers, which a --tokens run has not run
        with contextlib.suppress(Exception):
            for path in plots(results, out):
                print(f"wrote {path}", file=sys.stderr)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
