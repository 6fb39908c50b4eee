"""The README's first command, ``scripts/dev``, as a new user runs it: it says
what it does while it installs, serves the demo, does not reinstall what is
up to date, and leaves an editable install it did not make alone.

Slow (two installs that compile the core); bounded everywhere.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from .server import free_port_pair

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 300.0  # a first run installs everything and compiles the core


def checkout_copy(target: Path) -> Path:
    """The repository's source files (what git does not ignore) in ``target``, as a fresh clone
    would have them: the installs below build there, never in this checkout."""
    target.mkdir()
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True, timeout=60).stdout
    subprocess.run(["tar", "cf", "-", "--null", "-T", "-"], cwd=ROOT, input=files, check=True, timeout=120,
                   stdout=open(target / "src.tar", "wb"))
    subprocess.run(["tar", "xf", "src.tar"], cwd=target, check=True, timeout=120)
    (target / "src.tar").unlink()
    return target


def run_dev(repo: Path, venv: Path, log: Path) -> tuple[str, subprocess.Popen]:
    """Start scripts/dev; return its base URL once /healthz answers 200, and the process."""
    port = free_port_pair()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    env.update({"HUBBUB_VENV": str(venv), "HUBBUB_PORT": str(port), "HUBBUB_DATA_DIR": str(log.parent),
                "HUBBUB_DRAIN_GRACE": "0"})
    proc = subprocess.Popen([str(repo / "scripts" / "dev")], cwd=repo, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"scripts/dev exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return base, proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise AssertionError(f"scripts/dev did not serve within {START_TIMEOUT:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_scripts_dev_installs_saying_so_serves_and_leaves_an_editable_install_alone(tmp_path):
    repo = checkout_copy(tmp_path / "repo")
    venv = repo / ".venv"
    first = tmp_path / "first.log"
    base, proc = run_dev(repo, venv, first)
    try:
        assert httpx.get(base + "/", timeout=5).status_code == 200  # the demo page
    finally:
        stop(proc)
    said = first.read_text()
    assert "scripts/dev: installing hubbub" in said and "Successfully installed" in said
    assert "scripts/dev: starting" in said

    second = tmp_path / "second.log"
    base, proc = run_dev(repo, venv, second)  # nothing changed: no second install
    stop(proc)
    assert "installing" not in second.read_text()

    # A developer's editable install in that venv is kept, whatever changed since.
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-e", str(repo)], check=True, timeout=600, capture_output=True)
    (venv / "bin" / "hubbub").touch()
    os.utime(venv / "bin" / "hubbub", (0, 0))  # older than every source: a plain install would be redone
    third = tmp_path / "third.log"
    base, proc = run_dev(repo, venv, third)
    stop(proc)
    assert "using the editable install" in third.read_text() and "installing" not in third.read_text()
    shown = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "show", "hubbub"], capture_output=True,
                           text=True, timeout=60).stdout
    assert "Editable project location:" in shown
