"""`hubbub bench` runs every contender end to end (a tiny smoke run: it checks
the harness, never a timing; the figures live in bench/RESULTS.md)."""
import json

from hubbub.benchmark import run


def test_every_contender_delivers_everything(tmp_path):
    assert run.main(["--smoke", "--out", str(tmp_path)]) == 0
    for scenario in ("fanout-1k", "fanout-100", "latency-1k"):
        rows = json.loads((tmp_path / f"{scenario}.json").read_text())
        assert {r["contender"] for r in rows} == set(run.CONTENDERS)
        for row in rows:
            assert "error" not in row, row
            assert row["lost"] == 0 and row["received"] == row["expected"] > 0, row
            assert row["server_cpu_s"] >= 0 and row["p99_ms"] is not None
    idle = json.loads((tmp_path / "idle-10k.json").read_text())
    assert {r["contender"] for r in idle} == set(run.IDLE_CONTENDERS)
    assert all("error" not in r and r["rss_per_connection_kib"] is not None for r in idle)
    report = (tmp_path / "RESULTS.md").read_text()
    assert "hubbub native ws" in report and "deliveries/s" in report
    assert (tmp_path / "throughput.png").stat().st_size > 1000
    assert (tmp_path / "latency_cdf.png").stat().st_size > 1000
