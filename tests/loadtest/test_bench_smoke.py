"""The load-test scripts cannot rot: `scripts/bench.sh --smoke` (tiny model, one user, five
requests per run, seconds) must finish every run without a failure and write its results
and charts; the locustfile refuses hosts off this machine and unbounded runs; the report's
arithmetic and its BENCHMARKS.md section replacement.

Run by scripts/test.sh after `cargo test` with the debug binary it built:
    LOADTEST_BINARY=target/debug/trendstory .venv/bin/python -m pytest -q tests/loadtest
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "loadtest"))

import bench  # noqa: E402
import report  # noqa: E402

LOCUST = REPO / ".venv" / "bin" / "locust"


def binary() -> str:
    explicit = os.environ.get("LOADTEST_BINARY")
    if explicit:
        return explicit
    for candidate in ("target/debug/trendstory", "target/release/trendstory"):
        if (REPO / candidate).exists():
            return candidate
    pytest.fail("no trendstory binary: run `cargo build` (or set LOADTEST_BINARY)")


def test_smoke_run_writes_results_without_failures(tmp_path):
    before = (REPO / "BENCHMARKS.md").read_text()
    out = tmp_path / "out"
    proc = subprocess.run(
        ["scripts/bench.sh", "--smoke", "--binary", binary(), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    names = {r["name"] for r in results["runs"]}
    assert {"ts-w1-u1", "ts-w2-u1", "ts-w3-u1", "ts-spike"} <= names, names
    for run in results["runs"]:
        assert run["requests"] > 0, run["name"]
        assert run["failures"] == 0, (run["name"], run["failure_reasons"])
        assert run["locust_rc"] == 0, run["name"]
        assert run["latency_ms"]["p95"] > 0
    w3 = next(r for r in results["runs"] if r["name"] == "ts-w3-u1")
    assert w3["ttft_ms"]["n"] == w3["requests"]
    assert w3["ttft_ms"]["avg"] <= w3["latency_ms"]["avg"]
    w1 = next(r for r in results["runs"] if r["name"] == "ts-w1-u1")
    assert w1["tokens_per_request"] > 0 and w1["stages_ms"]["trend_lookup_p99"] >= 0
    for chart in ("latency.png", "throughput.png", "spike.png"):
        assert (out / chart).stat().st_size > 1000, chart
    # A smoke run never touches the committed report.
    assert (REPO / "BENCHMARKS.md").read_text() == before


@pytest.mark.parametrize("host", ["http://10.1.2.3:8080", "http://example.org",
                                  "http://192.168.0.1"])
def test_locust_refuses_other_hosts(host):
    proc = subprocess.run([str(LOCUST), "-f", "scripts/loadtest/locustfile.py", "--headless",
                           "-H", host, "-u", "1", "-t", "2s", "W1Unique"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "refusing host" in proc.stderr


def test_locust_refuses_an_unbounded_run():
    proc = subprocess.run([str(LOCUST), "-f", "scripts/loadtest/locustfile.py", "--headless",
                           "-H", "http://127.0.0.1:9", "-u", "1", "W1Unique"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unbounded" in proc.stderr


def test_percentiles_match_numpy_linear():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert bench.percentile(values, 50) == 3.0
    assert bench.percentile(values, 95) == pytest.approx(4.8)
    assert bench.percentile([], 95) is None


def test_spike_recovery_is_measured_from_the_ramp():
    # 10 s ramp; slow answers (4 s) until t = 40, then 1 s answers to the end (120 s).
    records = [{"t0": t - (4.0 if t < 40 else 1.0), "t1": float(t), "ok": True,
                "ms": 4000.0 if t < 40 else 1000.0} for t in range(1, 120)]
    got = bench.spike_analysis(records, 0.0, 120.0, 10.0)
    assert got["steady_p95_ms"] == 1000.0
    assert got["worst_over_steady"] == 4.0
    # The first 30 s window that starts at or after 40 s: [40, 70), ending 60 s after the ramp.
    assert got["recovered_s_after_ramp"] == 60.0


def test_endurance_growth_is_after_warmup():
    rss = [{"t": t, "rss_mb": 1000.0 if t < 20 else 1200.0 + t / 10} for t in range(0, 101, 5)]
    got = bench.endurance_analysis(rss, 100.0)
    assert got["rss_mb_after_warmup"] == 1202.0
    assert got["rss_growth_pct"] == pytest.approx((1210 - 1202) / 1202 * 100, abs=0.01)


def test_section_is_replaced_between_the_markers():
    text = f"# B\n\nbefore\n\n{report.BEGIN}\nold\n{report.END}\nafter\n"
    new = f"{report.BEGIN}\nnew\n{report.END}\n"
    assert report.replace_section(text, new) == f"# B\n\nbefore\n\n{new}after\n"
    assert report.replace_section("# B\n", new) == f"# B\n\n{new}"


def test_w2_stops_with_status_2_without_a_trend_list():
    proc = subprocess.run([str(LOCUST), "-f", "scripts/loadtest/locustfile.py", "--headless",
                           "-H", "http://127.0.0.1:9", "-u", "1", "-t", "20s", "W2Trending"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "cannot read http://127.0.0.1:9/v1/trends" in proc.stderr
