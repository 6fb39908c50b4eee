"""A real ``hubbub serve`` that is alive but not ready (its notification store
cannot open): ``HubProcess`` waits for ``/healthz`` 200, which such a hub
never answers, so this one waits for ``/livez`` on both ports instead."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from .server import STARTUP_TIMEOUT, HubProcess


class UnreadyHubProcess(HubProcess):
    def _start(self, log_dir: Path) -> "UnreadyHubProcess":
        self.log_path = log_dir / f"hub-{self.port}.log"
        if self.own_data_dir:
            self.env["HUBBUB_DATA_DIR"] = str(log_dir)
            self.own_data_dir = False
        cmd = [sys.executable, "-m", "hubbub.cli", "serve", *(["--dev"] if self.dev else []), *self.args]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited at start:\n{self.output()}")
            try:
                if all(httpx.get(self.url(kind, "/livez"), timeout=1).status_code == 200
                       for kind in ("asgi", "native")):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"hub did not come alive in time:\n{self.output()}")
