"""The load-test scripts cannot rot: `scripts/bench.sh --smoke` (tiny model, one user, five
requests per run, seconds) must finish every run without a failure and write its results
and charts; the locustfile refuses hosts off this machine and unbounded runs; the report's
arithmetic (W4's sharing and the users one replica serves too) and its BENCHMARKS.md section
replacement.

Run by scripts/test.sh after `cargo test` with the debug binary it built:
    LOADTEST_BINARY=target/debug/trendstory .venv/bin/python -m pytest -q tests/loadtest
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from trendstory_tools.loadtest import bench, page_traffic, report

REPO = Path(__file__).resolve().parents[2]

LOCUST = REPO / ".venv" / "bin" / "locust"


def locust(*args: str) -> subprocess.CompletedProcess:
    """The locustfile, headless, with `args` (host, users, duration, user class...)."""
    return subprocess.run([str(LOCUST), "-f", "scripts/loadtest/locustfile.py", "--headless",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=60)


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
    assert {"ts-w1-u1", "ts-w2-u1", "ts-w3-u1", "ts-spike", "ts-w4-u1"} <= names, names
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
    for chart in ("latency.png", "throughput.png", "workloads.png", "spike.png"):
        assert (out / chart).stat().st_size > 1000, chart
    check_w4(results)
    # A smoke run never touches the committed report.
    assert (REPO / "BENCHMARKS.md").read_text() == before


def check_w4(results: dict) -> None:
    """W4 ran on the page's replica: its background stories were written, and each
    "Write a story" in the default style on one of their trends came from the cache (the
    requests are W4's fixed sequence, one user: the first N of it)."""
    setup = results["w4_setup"]
    assert setup["background_ready"] == setup["background_stories"] == 5, setup
    assert setup["trends"] == setup["trends_with_context"] == 20, setup
    w4 = next(r for r in results["runs"] if r["name"] == "ts-w4-u1")
    assert sum(k["requests"] for k in w4["kinds"].values()) == w4["requests"]
    saved = json.loads((REPO / "target/loadtest/smoke/w4-trends.json").read_text())["trends"]
    background = {t["topic"] for t in saved[:5]}
    traffic = page_traffic.PageTraffic(saved, 1, 1.1)  # --page-seed: the level's users
    sent = [traffic.next() for _ in range(w4["requests"])]
    expected = sum(1 for r in sent if r.kind == "write" and r.style == "news"
                   and r.topic in background)
    assert expected >= 1, "the smoke's sequence should hold a background story's request"
    assert round(w4["cached_share"] * w4["requests"]) >= expected, w4


@pytest.mark.parametrize("host", ["http://10.1.2.3:8080", "http://example.org",
                                  "http://192.168.0.1"])
def test_locust_refuses_other_hosts(host):
    proc = locust("-H", host, "-u", "1", "-t", "2s", "W1Unique")
    assert proc.returncode == 2
    assert "refusing host" in proc.stderr


def test_locust_refuses_an_unbounded_run():
    proc = locust("-H", "http://127.0.0.1:9", "-u", "1", "W1Unique")
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
    # The 10 s series from the ramp's end: [40, 50) is the first fast window, and the two
    # after it are fast too; it ends 40 s after the ramp.
    assert got["recovered_s_after_ramp"] == 40.0


def test_spike_recovery_must_hold():
    # Fast at [20, 30) only, slow again until 60: one good window is not a recovery.
    def ms(t: int) -> float:
        return 1000.0 if 20 <= t < 30 or t >= 60 else 4000.0
    records = [{"t0": t - ms(t) / 1000, "t1": float(t), "ok": True, "ms": ms(t)}
               for t in range(1, 120)]
    got = bench.spike_analysis(records, 0.0, 120.0, 10.0)
    assert got["recovered_s_after_ramp"] == 60.0


def test_steady_compares_the_last_full_minute_with_the_first():
    per_minute = [{"t": 60.0, "p95_ms": 2000.0}, {"t": 120.0, "p95_ms": 2100.0},
                  {"t": 180.0, "p95_ms": 2150.0},
                  # The stop's grace time after a 180 s run: left out.
                  {"t": 240.0, "p95_ms": 9000.0}]
    got = bench.steady_analysis(per_minute, 180.0)
    assert got["last_minute"] == 3
    assert got["last_over_first"] == pytest.approx(1.075)


def test_endurance_growth_is_after_warmup():
    server = [{"t": t, "rss_mb": 1000.0 if t < 20 else 1200.0 + t / 10,
               "rss_anon_mb": 600.0 if t < 20 else 640.0 + t / 20,
               "fds": 40 if t < 20 else 50 + (t == 100)} for t in range(0, 101, 5)]
    got = bench.endurance_analysis(server, 100.0)
    assert got["rss_mb_after_warmup"] == 1202.0
    assert got["rss_growth_pct"] == pytest.approx((1210 - 1202) / 1202 * 100, abs=0.01)
    assert (got["rss_anon_mb_after_warmup"], got["rss_anon_mb_end"]) == (641.0, 645.0)
    assert got["rss_anon_growth_pct"] == pytest.approx(4 / 641 * 100, abs=0.01)
    assert (got["fds_after_warmup"], got["fds_end"], got["fds_growth"]) == (50, 51, 1)
    assert got["fds_range_after_warmup"] == [50, 51]
    # An hour's warm-up is its first 5 minutes.
    assert bench.endurance_analysis(server, 3600.0)["warmup_s"] == 300.0


def test_sampler_reads_open_file_descriptors_and_anonymous_memory():
    cpu, rss, fds, anon = bench.Sampler.read(os.getpid())
    # Both listings count the descriptor of the listing itself.
    assert rss > 0 and fds == len(os.listdir("/proc/self/fd"))
    assert 0 < anon < rss


def test_section_is_replaced_between_the_markers():
    text = f"# B\n\nbefore\n\n{report.BEGIN}\nold\n{report.END}\nafter\n"
    new = f"{report.BEGIN}\nnew\n{report.END}\n"
    assert report.replace_section(text, new) == f"# B\n\nbefore\n\n{new}after\n"
    assert report.replace_section("# B\n", new) == f"# B\n\n{new}"


def test_w4_against_llama_server_needs_a_trend_list():
    proc = locust("-H", "http://127.0.0.1:9", "-u", "1", "-t", "20s", "--target", "llama-server",
                  "W4Page")
    assert proc.returncode == 2
    assert "needs --trends-file" in proc.stderr


def test_sharing_counts_each_generation_once():
    answers = [
        {"cached": True, "story_id": "a", "tokens": 64},
        {"cached": False, "story_id": "b", "tokens": 64},
        {"cached": False, "story_id": "b", "tokens": 64},  # joined b's generation
        {"cached": False, "story_id": "b", "tokens": 64},
        {"cached": False, "story_id": "c", "tokens": 10},
        {"cached": False, "tokens": 64},  # llama-server: no id, each its own
        {"cached": False, "tokens": 64},
        {"cached": True, "story_id": "d", "tokens": 64, "variant": "ready"},  # written ahead
        {"cached": False, "story_id": "e", "tokens": 64, "variant": "new"},
    ]
    assert [r.get("story_id") for r in bench.generations(answers[:7])] == ["b", "c", None, None]
    assert bench.sharing(answers[:7]) == {"cached_share": round(1 / 7, 3),
                                          "shared_share": round(2 / 7, 3), "generations": 4}
    assert bench.sharing([]) == {"cached_share": 0, "shared_share": 0, "generations": 0}
    records = [{**r, "ok": True, "t0": 0.0, "t1": 1.0, "ms": 1000.0, "kind": kind}
               for r, kind in zip(answers, ["write"] * 4 + ["typed"] * 3 + ["another"] * 2)]
    summary = bench.summarize(records, 10.0)
    assert summary["tokens_per_s"] == (64 + 10 + 64 + 64 + 64) / 10
    assert summary["kinds"]["write"] == {"requests": 4, "cached_share": 0.25,
                                         "shared_share": 0.5, "generations": 1,
                                         "variants_ready_share": 0.0}
    assert summary["kinds"]["typed"]["generations"] == 3
    assert summary["kinds"]["another"]["variants_ready_share"] == 0.5


def level(users: int, p95: float | None, rps: float = 1.0, requests: int = 10,
          failures: int = 0) -> dict:
    return {"users": users, "requests": requests, "rps": rps, "latency_ms": {"p95": p95},
            "failures": failures}


def test_users_served_reads_levels_upwards_to_the_first_over_10_s():
    got = report.users_served([level(1, 2000, 0.3), level(5, 6000, 1.2), level(20, 14000, 1.5),
                               level(50, 9000)])
    # 50 users passing after 20 failed is noise: the count ends at 20.
    assert got["users"] == 5 and got["rps"] == 1.2 and not got["capped"]
    assert got["over"] == {"users": 20, "p95_ms": 14000, "failures": 0}
    assert got["estimate"] == pytest.approx(5 + (10000 - 6000) * 15 / 8000, abs=0.05)
    capped = report.users_served([level(1, 2000), level(50, 9999, 4.0)])
    assert capped == {"users": 50, "rps": 4.0, "capped": True, "over": None, "estimate": None}
    none = report.users_served([level(1, 10000), level(5, 12000)])
    assert none["users"] == 0 and none["rps"] is None and none["estimate"] is None
    assert report.users_served([])["users"] is None
    # A level that finished nothing says nothing.
    assert report.users_served([level(1, 1000), level(5, None, requests=0)])["capped"]
    # A failed request ends the count too, under 10 s or not (and nothing to interpolate).
    failed = report.users_served([level(1, 1000), level(5, 4000, failures=2), level(20, 5000)])
    assert failed["users"] == 1 and failed["estimate"] is None
    assert "at 5 users p95 was 4.0 s and 2 requests failed" in report.served_text(failed)


def served(users, capped=False):
    return {"users": users, "capped": capped}


@pytest.mark.parametrize("ours, theirs, expected", [
    (served(20), served(5), (4.0, True)),
    (served(10), served(5), (2.0, False)),
    (served(50, True), served(5), (10.0, True)),  # at least 10x
    (served(50, True), served(20), (2.5, None)),  # at least 2.5x: undecided
    (served(5), served(50, True), (0.1, False)),  # at most 0.1x
    (served(50, True), served(50, True), (1.0, None)),
    (served(5), served(0), (None, True)),
    (served(0), served(0), (None, None)),
    (served(None), served(5), (None, None)),
])
def test_served_ratio_decides_only_what_the_levels_show(ours, theirs, expected):
    assert report.served_ratio(ours, theirs) == expected


def w4_results() -> dict:
    def run(target, users, rps, p95, cached=0.0, shared=0.0):
        return {"name": f"{target}-w4-u{users}", "target": target, "workload": "W4",
                "scenario": "fixed", "users": users, "rps": rps, "requests": 100, "failures": 0,
                "command": "locust ...",
                "latency_ms": {"avg": p95 / 2, "p90": p95, "p95": p95, "p99": p95},
                "tokens_per_s": 1.0, "server": {}, "net_kbps": 0.0, "stages_ms": {},
                "cached_share": cached, "shared_share": shared, "generations": 10,
                "kinds": {"write": {"requests": 70, "cached_share": cached / 0.7,
                                    "shared_share": 0.0, "generations": 5}}}
    runs = [run("trendstory", 1, 0.5, 3000, 0.5), run("trendstory", 5, 2.0, 5000, 0.6, 0.1),
            run("trendstory", 20, 6.0, 8000, 0.7, 0.1), run("trendstory", 50, 9.0, 16000, 0.7),
            run("llama-server", 1, 0.3, 4000), run("llama-server", 5, 0.7, 11000),
            run("llama-server", 20, 0.8, 40000), run("llama-server", 50, 0.8, 90000)]
    meta = {"date": "today", "mode": "full", "machine": {}, "commit": "abc", "binary": "b",
            "model": "m", "locust": "locust", "command": "scripts/bench.sh", "max_tokens": 64,
            "settings": {"level_duration": 120, "trend_limit": 20}}
    return {"meta": meta, "runs": runs, "servers": [{"kind": "llama-server", "slots": 32}],
            "w4_setup": {"background_stories": 5, "background_ready": 5, "waited_s": 12.0,
                         "trends": 20, "trends_with_context": 20}}


def test_w4_targets_and_section(tmp_path):
    results = w4_results()
    results["targets"] = report.targets(results)
    got = {t["target"]: t for t in results["targets"]}
    rps = got["W4 at 20 users: requests/s over llama-server's"]
    assert rps["measured"] == 7.5 and rps["met"]
    p95 = got["W4 at 20 users: p95 over llama-server's"]
    assert p95["measured"] == 0.2 and p95["met"]
    users = got["W4: users one replica serves (p95 < 10 s) over llama-server's"]
    assert users["measured"] == "20 vs 1 (20.0x)" and users["met"]
    section = report.render(results, tmp_path)
    assert "| 20 | 6.00 | 8,000 | 4,000 | 80% | 0.80 | 40,000 | 20,000 | 2.4 | 11,240 |" in section
    assert ("**Users one replica serves** (W4, the most users with p95 under 10 s): TrendStory "
            "20, 6.00 requests/s (at 50 users p95 was 16.0 s; crossing 10 s near 28 users, "
            "interpolated); llama-server 1, 0.30 requests/s (at 5 users p95 was 11.0 s; "
            "crossing 10 s near 4 users, interpolated).") in section
    assert "llama-server (Q4_0, 32 slots) gets the same prompt text" in section
    assert "Write a story 280 (" in section
    assert (tmp_path / "workloads.png").stat().st_size > 1000


def test_w2_stops_with_status_2_without_a_trend_list():
    proc = locust("-H", "http://127.0.0.1:9", "-u", "1", "-t", "20s", "W2Trending")
    assert proc.returncode == 2
    assert "cannot read http://127.0.0.1:9/v1/trends" in proc.stderr
