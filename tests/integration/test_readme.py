"""The README's snippets, run as a reader would run them (issue 18).

Each runnable block carries a ``<!-- readme-test: NAME -->`` line before it;
the test takes the block's text from README.md as it is, changes only what a
test must (ports, the virtual environment's path, a wait where a reader
would wait for the server) and runs it against a real hub.
"""
from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import jwt

from .server import free_port_pair

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the suite's venv plays the README's .venv


def snippet(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- readme-test: {re.escape(name)} -->\n```\w*\n(.*?)\n```", text, re.S)
    assert match, f"README.md has no block marked readme-test: {name}"
    return match.group(1)


def for_test(code: str, port: int) -> str:
    return (code.replace(".venv/bin/", f"{BIN}/").replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            .replace("localhost:8000", f"localhost:{port}").replace("127.0.0.1:8001", f"127.0.0.1:{port + 1}"))


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    return {**env, "HUBBUB_DRAIN_GRACE": "0", **settings}


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}"
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base} never became healthy")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, as a terminal's Ctrl-C or systemd would, and
    wait for every process of it (a server started with & included) to go."""
    group = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    raise AssertionError("processes of the snippet outlived SIGTERM by 20 s")


def serve_dev(tmp_path: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(BIN / "hubbub"), "serve", "--dev"], cwd=tmp_path, start_new_session=True,
                            env=clean_env(HUBBUB_PORT=str(port), HUBBUB_DATA_DIR=str(tmp_path)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(f"http://127.0.0.1:{port}", proc)
    return proc


def test_quick_try_delivers_the_publication_to_curl(tmp_path):
    port = free_port_pair()
    hub = serve_dev(tmp_path, port)
    try:
        code = for_test(snippet("quick-try"), port).replace("curl -N ", "curl -N --max-time 5 ")
        # A reader sees the stream open before typing the next line; run as
        # one script, the publish could win the race with curl's connect
        # (seen in CI) and go out before anyone subscribed.
        listen, rest = code.split(" &\n", 1)
        stream = tmp_path / "stream.txt"
        code = (f"{listen} > {stream} &\n"
                f"for i in $(seq 100); do grep -q 'event: connected' {stream} && break; sleep 0.1; done\n"
                f"{rest}\nwait\ncat {stream}")
        result = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30,
                                env=clean_env(HUBBUB_PORT=str(port)))
    finally:
        stop(hub)
    assert '"topic":"orders.42"' in result.stdout and '"status":"shipped"' in result.stdout, result


def test_the_python_client_snippet_receives_what_it_publishes(tmp_path):
    port = free_port_pair()
    hub = serve_dev(tmp_path, port)
    try:
        result = subprocess.run([sys.executable, "-c", for_test(snippet("python-client"), port)],
                                capture_output=True, text=True, timeout=30, env=clean_env())
    finally:
        stop(hub)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "orders.42 {'status': 'shipped'}", result


def test_the_embedding_snippet_serves_under_uvicorn(tmp_path):
    (tmp_path / "shop.py").write_text(snippet("embedding"))
    port = free_port_pair()
    app = subprocess.Popen([sys.executable, "-m", "uvicorn", "shop:app", "--port", str(port)], cwd=tmp_path,
                           env=clean_env(HUBBUB_DEV="1", HUBBUB_DATA_DIR=str(tmp_path)), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base + "/rt", app)
        with httpx.Client(timeout=10) as client, client.stream("GET", base + "/rt/sse?topic=orders.*") as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("event: connected"))
            assert client.post(base + "/orders/42/ship").json() == {"shipped": 42}
            data = next(line for line in lines if line.startswith("data: {\"topic\""))
            assert '"topic":"orders.42"' in data and '"event":"update"' in data
    finally:
        stop(app)


def test_the_demo_token_snippet_signs_a_token_and_creates_a_notification(tmp_path):
    port = free_port_pair()
    code = for_test(snippet("demo-token"), port)
    # A reader waits for the server before the next line; the test does the same.
    code = code.replace("hubbub serve --dev &\n",
                        f"hubbub serve --dev &\nuntil curl -sf localhost:{port}/healthz >/dev/null;"
                        f" do sleep 0.2; done\n")
    proc = subprocess.Popen(["bash", "-c", code], cwd=tmp_path, start_new_session=True,
                            env=clean_env(HUBBUB_PORT=str(port), HUBBUB_DATA_DIR=str(tmp_path)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # The server logs to the same terminal; the snippet's own output is a JWT, then the record
    # (curl prints it without a newline, and the server keeps the terminal open).
    chunks: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [chunks.put(chunk) for chunk in iter(lambda: os.read(
        proc.stdout.fileno(), 65536), b"")], daemon=True).start()
    seen = ""
    token = record = None
    try:
        deadline = time.monotonic() + 60
        while record is None and time.monotonic() < deadline:
            try:
                seen += chunks.get(timeout=0.5).decode(errors="replace")
            except queue.Empty:
                continue
            found = re.search(r"^([\w-]+\.[\w-]+\.[\w-]+)$", seen, re.M)
            token = found.group(1) if found else None
            found = re.search(r'\{"id":.*?"created_at":\d+\}', seen)
            record = found.group(0) if found else None
    finally:
        stop(proc)
    assert token is not None and record is not None, (token, record)
    claims = jwt.decode(token, "change-me-change-me-change-me-32bytes", algorithms=["HS256"])
    assert claims["sub"] == "ada" and claims["publish"] == ["public.>"]
    assert '"user":"ada"' in record and '"title":"Order #1042 shipped"' in record
