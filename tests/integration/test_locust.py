"""The locust load test runs headless, bounded, against a real hub (10 s in CI)."""
import csv
import subprocess
import sys
from pathlib import Path

from .server import HubProcess

ROOT = Path(__file__).resolve().parents[2]


def test_locust_headless_run(tmp_path):
    hub = HubProcess(env={"HUBBUB_HEARTBEAT": "5"}).start(tmp_path)
    try:
        prefix = tmp_path / "locust"
        result = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"),
             "--host", hub.base, "--headless", "-u", "20", "-r", "20", "-t", "10s",
             "--csv", str(prefix), "--html", str(tmp_path / "report.html"), "--only-summary",
             "--stop-timeout", "2"],
            capture_output=True, text=True, timeout=90,
            env={**__import__("os").environ, "LOAD_WS_URL": f"ws://127.0.0.1:{hub.fast_port}/ws"})
        assert result.returncode == 0, result.stderr[-3000:]
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(open(f"{prefix}_stats.csv"))}
        publishes = rows[("POST", "publish")]
        assert int(publishes["Request Count"]) > 10 and int(publishes["Failure Count"]) == 0
        for kind in ("WS", "SSE"):
            deliveries = rows[(kind, "delivery")]
            assert int(deliveries["Request Count"]) > 50, (kind, deliveries)
        assert int(rows[("WS", "connect")]["Failure Count"]) == 0
        assert (tmp_path / "report.html").stat().st_size > 1000
        # Users stop cleanly: no traceback per WS user at the end (the close frame is not JSON).
        assert "Traceback" not in result.stderr and "JSONDecodeError" not in result.stderr, result.stderr[-3000:]
    finally:
        hub.stop()
