"""``hubbub serve | publish | config`` (SPEC section 1) and the server API's
``disconnect | unsubscribe | history | topics`` (SPEC 10)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .config import Config, ConfigError
from .startup import refusal
from .version import __version__

EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from .benchmark.run import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="hubbub", description="Real-time fan-out hub")
    parser.add_argument("--version", action="version", version=f"hubbub {__version__} ({core_name()})")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the hub under Granian (uvloop) plus the fast listener")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--fast-port", type=int, help="native listener port (default PORT+1, 0 = off)")
    serve.add_argument("--dev", action="store_true", default=None,
                       help="try-out mode: anonymous clients, no API key from loopback")

    publish = commands.add_parser("publish", help="publish through the HTTP API")
    publish.add_argument("topic")
    publish.add_argument("data", help="JSON")
    publish.add_argument("--event")
    publish.add_argument("--url", default=None, help="hub base URL (default http://HUBBUB_HOST:HUBBUB_PORT)")

    url_help = "hub base URL (default http://HUBBUB_HOST:HUBBUB_PORT)"
    disconnect = commands.add_parser("disconnect", help="close every connection of a user (fleet-wide)")
    disconnect.add_argument("user")
    disconnect.add_argument("--code", type=int, help="WS close code, 4000-4999 (default 4403)")
    disconnect.add_argument("--reason", help="close reason, at most 120 bytes")
    disconnect.add_argument("--url", default=None, help=url_help)

    unsubscribe = commands.add_parser("unsubscribe", help="drop a user's subscription (fleet-wide)")
    unsubscribe.add_argument("user")
    unsubscribe.add_argument("topic", help="the pattern exactly as subscribed")
    unsubscribe.add_argument("--url", default=None, help=url_help)

    history = commands.add_parser("history", help="kept publications of a topic")
    history.add_argument("topic")
    history.add_argument("--since", help="an event id: only what came after it")
    history.add_argument("--limit", type=int, help="1-1000 (default 100)")
    history.add_argument("--url", default=None, help=url_help)

    topics = commands.add_parser("topics", help="subscribed topics of the node, with counts")
    topics.add_argument("--prefix")
    topics.add_argument("--url", default=None, help=url_help)

    commands.add_parser("config", help="print the effective configuration (secrets masked)")

    # Listed for --help only: everything after "bench" is the benchmark's own
    # (hubbub bench --help: --quick, --scenario, --only, --out, --port-base, --burst).
    commands.add_parser("bench", add_help=False,
                        help="fan-out benchmark against the peers (pip install 'hubbub[bench]')")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_command(args)
    if args.command == "publish":
        return publish_command(args)
    if args.command in SERVER_API:
        return server_api_command(args)
    return config_command()


def core_name() -> str:
    from ._core import NATIVE

    return "compiled core" if NATIVE else "pure-Python core"


def _load(**overrides) -> Config | None:
    try:
        return Config.from_env(**overrides)
    except ConfigError as error:
        print(f"hubbub: invalid configuration: {error}", file=sys.stderr)
        return None


def config_command() -> int:
    config = _load()
    if config is None:
        return EXIT_CONFIG
    print(json.dumps(config.masked(), indent=2))
    return 0


def serve_command(args: argparse.Namespace) -> int:
    config = _load(host=args.host, port=args.port, workers=args.workers,
                   fast_port=args.fast_port, dev=args.dev)
    if config is None:
        return EXIT_CONFIG
    reason = refusal(config)
    if reason is not None:
        print(f"hubbub: {reason}", file=sys.stderr)
        return EXIT_CONFIG
    # Workers rebuild the config from the environment: hand them the flags.
    for name, value in (("HOST", config.host), ("PORT", config.port), ("WORKERS", config.workers),
                        ("FAST_PORT", config.effective_fast_port), ("DEV", int(config.dev))):
        os.environ[f"HUBBUB_{name}"] = str(value)

    # SPEC 1: N workers must be one hub. Without Redis they share one through
    # a broker process of this machine (backplane/local_server.py), started
    # before them and stopped after them; HUBBUB_LOCAL_BROKER tells them where.
    local_broker = None
    if config.workers > 1 and config.backplane == "memory" and not config.local_broker:
        from .backplane.local_server import LocalBrokerProcess

        try:
            local_broker = LocalBrokerProcess(config.history_size)
        except (OSError, RuntimeError) as error:
            print(f"hubbub: cannot start the local broker for {config.workers} workers: {error}",
                  file=sys.stderr)
            return 1
        os.environ["HUBBUB_LOCAL_BROKER"] = local_broker.path

    # The workers of one machine add their metrics up through a shared folder
    # (services/telemetry.py); a fresh one per run, so no earlier run's files count.
    metrics_dir = None
    if config.workers > 1 and not config.metrics_dir:
        metrics_dir = tempfile.mkdtemp(prefix="hubbub-metrics-")
        os.environ["HUBBUB_METRICS_DIR"] = metrics_dir

    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings

    from .signals import pass_a_second_signal_on

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Granian caps concurrent connections per worker at backpressure
    # (default backlog // workers): raise both to the hub's own limit.
    per_worker = max(1, config.max_connections // config.workers)
    server = Granian(
        "hubbub.server:create_app", factory=True,
        address=config.host, port=config.port, workers=config.workers,
        interface=Interfaces.ASGI, loop=Loops.uvloop,
        backlog=max(2048, min(config.max_connections, 65535)), backpressure=per_worker,
        ssl_cert=Path(config.tls_cert) if config.tls_cert else None,
        ssl_key=Path(config.tls_key) if config.tls_key else None,
        log_access=False,  # access lines would carry ?token= (see the README)
        # A client that never finishes its request head (slowloris) is cut after
        # HEAD_TIMEOUT on this port as on the fast port (Granian's default is 30 s).
        http1_settings=HTTP1Settings(header_read_timeout=int(config.head_timeout * 1000)),
    )
    pass_a_second_signal_on(server)  # Granian passes on only the first (signals.py)
    fast = config.effective_fast_port
    scheme = "https" if config.tls_cert else "http"
    print(f"hubbub: serving on {scheme}://{config.host}:{config.port}"
          + (f" (fast listener on port {fast})" if fast else ""), file=sys.stderr, flush=True)
    try:
        server.serve()
    finally:
        if local_broker is not None:  # the workers are gone: so can it be
            local_broker.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 1 if local_broker is not None and local_broker.died is not None else 0


def publish_command(args: argparse.Namespace) -> int:
    config = _load()
    if config is None:
        return EXIT_CONFIG
    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as error:
        print(f"hubbub: DATA is not valid JSON: {error}", file=sys.stderr)
        return EXIT_CONFIG
    body = {"topic": args.topic, "data": data}
    if args.event:
        body["event"] = args.event
    return call_api(config, args.url, "POST", "/publish", body)


def server_api_command(args: argparse.Namespace) -> int:
    """One server API call; its JSON answer printed. Arguments the hub checks
    (code range, reason length, limit) are left to it: it names the field."""
    config = _load()
    if config is None:
        return EXIT_CONFIG
    method, path, body = SERVER_API[args.command](args)
    return call_api(config, args.url, method, path, body)


def _drop_none(**fields) -> dict:
    return {name: value for name, value in fields.items() if value is not None}


SERVER_API = {
    "disconnect": lambda a: ("POST", "/disconnect",
                             _drop_none(user=a.user, code=a.code, reason=a.reason)),
    "unsubscribe": lambda a: ("POST", "/unsubscribe", {"user": a.user, "topic": a.topic}),
    "history": lambda a: ("GET", "/history/" + urllib.parse.quote(a.topic, safe="")
                          + _query(since=a.since, limit=a.limit), None),
    "topics": lambda a: ("GET", "/topics" + _query(prefix=a.prefix), None),
}


def _query(**params) -> str:
    given = _drop_none(**params)
    return "?" + urllib.parse.urlencode(given) if given else ""


def call_api(config: Config, url: str | None, method: str, path: str, body: dict | None) -> int:
    """Call the hub's HTTP API with HUBBUB_API_KEY as Bearer; print the answer.
    Exit 0, or 1 for an HTTP error or an unreachable hub."""
    base = url or f"http://{config.host}:{config.port}"
    headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    request = urllib.request.Request(base.rstrip("/") + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as error:
        print(f"hubbub: {error.code}: {error.read().decode()}", file=sys.stderr)
        return 1
    except urllib.error.URLError as error:
        print(f"hubbub: cannot reach {base}: {error.reason}", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
