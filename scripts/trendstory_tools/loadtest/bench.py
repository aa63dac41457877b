"""The load-test run behind scripts/bench.sh: starts the servers on 127.0.0.1, runs Locust
(scripts/loadtest/locustfile.py) once per workload and user level and per scenario, samples
each server process from /proc, and writes the results JSON; scripts/loadtest/report.py then
writes the report (BENCHMARKS.md section, PNG charts) from that JSON alone.

    .venv/bin/python scripts/loadtest/bench.py --mode quick --binary target/release/trendstory \
        --model onnx/tinyllama-bench --out docs/loadtest

Phases, in order, each with the machine to itself (one server at a time):
1. TrendStory (the bench config: loopback, background stories off): W1, W3 and W2 per user
   level (W2 after one story per trend of its list, all at once, fills the story cache).
2. The reference's scenarios (W1 requests) on TrendStory as deployed (`page_server_env`:
   background stories and variants on): steady and spike on one server, endurance on a
   fresh one, so that its memory and file descriptor series start with the process.
3. TrendStory as the page's replica (`page_server_env`: background stories on, the trends of
   scripts/loadtest/page-trends.json with their contexts): W4 per W4 level, in rising order
   on one server (its story cache carries over, as a replica's does), after the background
   stories for the top trends are written and the trend list is saved for llama-server.
4. TrendStory again with `TRENDSTORY_INFERENCE__MAX_BATCH_SIZE=1`: W1 per level.
5. With --with-peer: llama.cpp's llama-server (scripts/loadtest/peer-llama-server.sh), W1 and
   W3 per level, W4 per W4 level (the same request sequence per level as TrendStory's).
Numbers come from the per-request records Locust writes (--records). At the end of a run no
new request starts and those in flight finish (Locust's --stop-timeout): their latencies
count (leaving them out would favour short requests), requests/s and tokens/s count only
what finished within the run's length. Exits 1 when a phase finished no
request, and in --mode smoke also when any request failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from trendstory_tools.loadtest import report
from trendstory_tools.paths import REPO_ROOT as ROOT

LOCUSTFILE = "scripts/loadtest/locustfile.py"
PEER_SCRIPT = "scripts/loadtest/peer-llama-server.sh"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
USER_CLASSES = {"W1": "W1Unique", "W2": "W2Trending", "W3": "W3Streaming", "W4": "W4Page"}
PAGE_TRENDS = ROOT / "scripts/loadtest/page-trends.json"
# Seconds the requests in flight at a run's end get to finish (the server's timeout is 300).
STOP_TIMEOUT = 300

# Per mode: user levels, seconds per level, W2's seconds and warm-up, scenario seconds.
MODES = {
    "smoke": dict(levels=[1], level_duration=20, w2_duration=20, trend_limit=20,
                  w4_levels=[1], w4_duration=20,
                  steady_duration=0, spike_duration=4, spike_ramp=2, spike_users=2,
                  endurance_duration=0, nobatch_levels=[], peer_levels=[1], variants_levels=[],
                  max_requests=5),
    "quick": dict(levels=[1, 5], level_duration=20, w2_duration=10, trend_limit=5,
                  w4_levels=[1, 5], w4_duration=20,
                  steady_duration=20, spike_duration=40, spike_ramp=10, spike_users=20,
                  endurance_duration=30, nobatch_levels=[5], peer_levels=[1, 5],
                  variants_levels=[5], max_requests=0),
    "full": dict(levels=[1, 5, 10, 20], level_duration=120, w2_duration=30, trend_limit=20,
                 w4_levels=[1, 5, 10, 15, 20, 30, 50], w4_duration=120,
                 steady_duration=600, spike_duration=300, spike_ramp=30, spike_users=20,
                 endurance_duration=600, nobatch_levels=[1, 5, 10, 20],
                 peer_levels=[1, 5, 10, 20], variants_levels=[20], max_requests=0),
}


@dataclass
class Phase:
    """One Locust run."""

    name: str
    target: str  # trendstory | trendstory-nobatch | trendstory-variants | llama-server
    workload: str  # W1 | W2 | W3
    users: int
    duration: float
    scenario: str = "fixed"
    spike_ramp: float = 0
    result: dict = field(default_factory=dict)


class Sampler(threading.Thread):
    """Samples CPU time, RSS (all of it, and its anonymous part) and open file descriptors of
    some processes from /proc every `interval` seconds."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5):
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.samples: dict[str, list[tuple[float, float, float, int, float]]] = {k: [] for k in pids}
        self.stopping = threading.Event()

    @staticmethod
    def read(pid: int) -> tuple[float, float, int, float] | None:
        """(CPU seconds, RSS MiB, open file descriptors, anonymous RSS MiB) of `pid`, or None
        once it is gone. The anonymous part is what the process allocated; the rest is mapped
        files (the model's weights read in place), which the kernel may drop and read again."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
            status = {k: v for k, _, v in (line.partition(":") for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines())}
            rss_kb, anon_kb = (int(status[k].split()[0]) for k in ("VmRSS", "RssAnon"))
            return cpu, rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")), anon_kb / 1024
        except (OSError, ValueError, KeyError):
            return None

    @staticmethod
    def machine_busy() -> float | None:
        """CPU seconds all cores spent busy since boot (/proc/stat), or None."""
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
            idle = fields[3] + fields[4]  # idle, iowait
            return (sum(fields[:8]) - idle) / CLK_TCK
        except (OSError, ValueError, IndexError):
            return None

    def sample(self) -> None:
        now = time.time()
        for name, pid in self.pids.items():
            if (got := self.read(pid)) is not None:
                self.samples[name].append((now, *got))
        if (busy := self.machine_busy()) is not None:
            self.samples.setdefault("machine", []).append((now, busy, 0.0, 0, 0.0))

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.interval)
        self.sample()

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def other_cpu_pct(self) -> float | None:
        """Share of all cores that processes other than the sampled ones used (noise)."""
        m = self.samples.get("machine") or []
        if len(m) < 2 or m[-1][0] <= m[0][0]:
            return None
        busy = (m[-1][1] - m[0][1]) / (m[-1][0] - m[0][0]) * 100 / NCPU
        ours = sum(self.summary(name).get("cpu_pct", 0.0) for name in self.pids)
        return round(max(0.0, busy - ours), 1)

    def summary(self, name: str) -> dict:
        s = self.samples.get(name) or []
        if len(s) < 2:
            return {}
        span = s[-1][0] - s[0][0]
        cpu = (s[-1][1] - s[0][1]) / span * 100 / NCPU if span > 0 else 0.0
        return {"cpu_pct": round(cpu, 1), "peak_rss_mb": round(max(x[2] for x in s), 1),
                "rss_mb_start": round(s[0][2], 1), "rss_mb_end": round(s[-1][2], 1)}

    def timeline(self, name: str, t0: float, step: float) -> list[dict]:
        """CPU % over each `step` seconds since t0, and RSS (all, anonymous) and open fds at
        its end."""
        out, s = [], self.samples.get(name) or []
        i = 0
        while i < len(s) - 1:
            j = i
            while j < len(s) - 1 and s[j][0] - s[i][0] < step:
                j += 1
            span = s[j][0] - s[i][0]
            if span <= 0:
                break
            out.append({"t": round(s[j][0] - t0, 1),
                        "cpu_pct": round((s[j][1] - s[i][1]) / span * 100 / NCPU, 1),
                        "rss_mb": round(s[j][2], 1), "rss_anon_mb": round(s[j][4], 1),
                        "fds": s[j][3]})
            i = j
        return out


class Server:
    """A TrendStory or llama-server process on a free loopback port, stopped at the end."""

    def __init__(self, kind: str, args, workdir: Path, env_overrides: dict[str, str] | None = None):
        self.kind, self.args, self.workdir = kind, args, workdir
        self.env_overrides = env_overrides or {}
        self.port = free_port()
        self.host = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"server-{kind}.log"
        self.started_s = 0.0

    def start(self) -> None:
        env = dict(os.environ)
        if self.kind == "llama-server":
            cmd = ["bash", PEER_SCRIPT, "serve", str(self.port)]
            if self.args.peer_gguf:
                env["PEER_GGUF"] = str(Path(self.args.peer_gguf).resolve())
            ready = f"{self.host}/health"
        else:
            config = self.workdir / f"{self.kind}.toml"
            # Absolute: a relative path in a config file is taken from the file's folder.
            config.write_text(bench_config(self.port, str((ROOT / self.args.model).resolve()),
                                           self.args.ignore_eos))
            cmd = [self.args.binary, "serve", "--config", str(config)]
            env.setdefault("ORT_DYLIB_PATH",
                           str(ROOT / ".cache/onnxruntime/libonnxruntime.so.1.32.0"))
            env.update(self.env_overrides)
            ready = f"{self.host}/readyz"
        started = time.time()
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = started + self.args.ready_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}: see {self.log_path}")
            try:
                with urllib.request.urlopen(ready, timeout=2) as response:
                    if response.status == 200:
                        self.started_s = time.time() - started
                        print(f"bench: {self.kind} ready on {self.host} after {self.started_s:.1f} s",
                              flush=True)
                        return
            except urllib.error.HTTPError as e:
                # TrendStory's 503 names each worker's last error: a model that cannot be
                # loaded will not become ready, so stop waiting at once.
                error = worker_error(e)
                if error:
                    self.stop()
                    raise RuntimeError(f"{self.kind} cannot load its model: {error}") from None
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.kind} was not ready within {self.args.ready_timeout} s: see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def slots(self) -> int | None:
        """llama-server's parallel slots (`total_slots` of GET /props), for the report."""
        if self.kind != "llama-server":
            return None
        try:
            with urllib.request.urlopen(f"{self.host}/props", timeout=10) as response:
                return json.load(response).get("total_slots")
        except (OSError, ValueError, AttributeError):
            return None

    def vm_hwm_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except (OSError, AttributeError):
            pass
        return None


def worker_error(error: urllib.error.HTTPError) -> str:
    """The first inference worker's last error in a /readyz 503 body, if any."""
    try:
        body = json.loads(error.read())
        workers = body.get("inference", {}).get("workers", [])
        return next((w["last_error"] for w in workers if w.get("last_error")), "")
    except (ValueError, AttributeError, OSError):
        return ""


def bench_config(port: int, model: str, ignore_eos: bool = False) -> str:
    """The bench configuration: loopback only, the defaults otherwise, except that
    background stories are off (they would take batch slots during the runs), requests get
    300 s (no timeouts at 20 users without batching) and shutdown does not wait; with
    ignore_eos, every story runs to its max_tokens (a real model's end of turn would
    otherwise make its stories shorter than the peer's)."""
    return f"""# Written by scripts/loadtest/bench.py
[server]
host = "127.0.0.1"
port = {port}
shutdown_drain_secs = 0
shutdown_timeout_secs = 5

[model]
dir = "{model}"

[inference]
request_timeout_secs = 300

[stories]
ignore_eos = {str(ignore_eos).lower()}

[stories.trending]
enabled = false

[stories.variants]
enabled = false
"""


def page_server_env(args) -> dict[str, str]:
    """The page's replica for W4: background stories on, as deployed; their length (the
    default `max_tokens`) the one W4 asks for, so "Write a story" on a top trend finds them,
    as it does when the page's length and the server's default agree; trends with the
    contexts real sources give (PAGE_TRENDS: the embedded list has none). Their check runs
    every second rather than every 10 s, so the first ones are written without a wait (a
    check only looks for missing stories; the trend list does not change during a run)."""
    return {"TRENDSTORY_STORIES__TRENDING__ENABLED": "true",
            "TRENDSTORY_STORIES__TRENDING__CHECK_INTERVAL_SECS": "1",
            "TRENDSTORY_STORIES__DEFAULT_MAX_TOKENS": str(args.max_tokens),
            "TRENDSTORY_TRENDS__SOURCES__FILE__PATH": str(PAGE_TRENDS.relative_to(ROOT))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default) of `values`, q in 0-100."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def dist(values: list[float]) -> dict:
    if not values:
        return {}
    r = lambda x: None if x is None else round(x, 3)  # noqa: E731
    return {"avg": r(sum(values) / len(values)), "p50": r(percentile(values, 50)),
            "p90": r(percentile(values, 90)), "p95": r(percentile(values, 95)),
            "p99": r(percentile(values, 99)), "max": r(max(values)), "n": len(values)}


def stages(records: list[dict]) -> dict:
    """Mean (and p99 of the trend lookup) of the server's own stage timings, in ms."""
    parts: dict[str, list[float]] = {k: [] for k in
                                     ("trend_lookup", "queue", "prefill", "first_token_other",
                                      "decode", "server_other", "http_client")}
    for r in records:
        s = r.get("stages") or {}
        if r.get("target") == "llama-server":
            if s.get("prefill_ms") is not None:
                parts["prefill"].append(s["prefill_ms"])
                parts["decode"].append(s["decode_ms"])
            continue
        if not s or r.get("cached"):
            continue
        parts["trend_lookup"].append(s["trend_lookup_ms"])
        parts["queue"].append(s["queue_ms"])
        parts["prefill"].append(s["prefill_ms"])
        parts["first_token_other"].append(max(0.0, s["ttft_ms"] - s["queue_ms"] - s["prefill_ms"]))
        parts["decode"].append(s["generation_ms"] - s["ttft_ms"])
        parts["server_other"].append(max(0.0, s["total_ms"] - s["trend_lookup_ms"] - s["generation_ms"]))
        parts["http_client"].append(max(0.0, r["ms"] - s["total_ms"]))
    out = {k: round(sum(v) / len(v), 3) for k, v in parts.items() if v}
    if parts["trend_lookup"]:
        out["trend_lookup_p99"] = round(percentile(parts["trend_lookup"], 99), 4)
    return out


def generations(answers: list[dict]) -> list[dict]:
    """One answer per generation: cache hits generated nothing, and TrendStory's answers
    that shared a generation (coalesced identical requests) carry the same story id."""
    seen: set[str] = set()
    out = []
    for r in answers:
        if r.get("cached"):
            continue
        story = r.get("story_id")
        if story is not None:
            if story in seen:
                continue
            seen.add(story)
        out.append(r)
    return out


def sharing(answers: list[dict]) -> dict:
    """Shares of `answers` served from the story cache and by joining a generation that
    another answer of the same list also got (every one but the first of a story id)."""
    if not answers:
        return {"cached_share": 0, "shared_share": 0, "generations": 0}
    cached = sum(1 for r in answers if r.get("cached"))
    own = len(generations(answers))
    return {"cached_share": round(cached / len(answers), 3),
            "shared_share": round((len(answers) - cached - own) / len(answers), 3),
            "generations": own}


def summarize(records: list[dict], duration: float, window_end: float | None = None) -> dict:
    """Latency over every finished request; rates over those finished by `window_end`."""
    ok = [r for r in records if r["ok"]]
    in_window = [r for r in ok if window_end is None or r["t1"] <= window_end]
    failed = [r for r in records if not r["ok"]]
    reasons: dict[str, int] = {}
    for r in failed:
        key = (r.get("error") or f"HTTP {r.get('status')}")[:60]
        reasons[key] = reasons.get(key, 0) + 1
    # Generated tokens, each generation once.
    tokens = sum(r.get("tokens") or 0 for r in generations(in_window))
    net = sum(r.get("req_bytes", 0) + r.get("resp_bytes", 0) for r in records
              if window_end is None or r["t1"] <= window_end)
    ttft = [r["ttft_ms"] for r in ok if r.get("ttft_ms") is not None]
    prompt = [r["prompt_tokens"] for r in ok if r.get("prompt_tokens")]
    return {
        "requests": len(records), "failures": len(failed), "failure_reasons": reasons,
        "latency_ms": dist([r["ms"] for r in ok]),
        "ttft_ms": dist(ttft) if ttft else {},
        "rps": round(len(in_window) / duration, 3) if duration else 0,
        # Little's law for a closed loop without wait time: users / mean latency. Steadier
        # than finished / duration when a run is only a few latencies long (waves of
        # requests that started together finish together); filled in by run_phase.
        "rps_users_over_latency": None,
        "tokens_per_s": round(tokens / duration, 2) if duration else 0,
        "tokens_per_request": round(tokens / len(ok), 1) if ok else 0,
        "prompt_tokens_avg": round(sum(prompt) / len(prompt), 1) if prompt else None,
        **sharing(ok),
        # W4: per kind of request, how many and the sharing among them.
        "kinds": {kind: {"requests": len(rs), **sharing(rs),
                         # "Another story" answered from the variants written ahead.
                         "variants_ready_share": round(
                             sum(1 for r in rs if r.get("variant") == "ready") / len(rs), 3)}
                  for kind, rs in sorted(group_by(ok, "kind").items()) if kind is not None},
        "net_kbps": round(net / 1024 / duration, 1) if duration else 0,
        "stages_ms": stages(generations(ok)),
    }


def group_by(records: list[dict], key: str) -> dict:
    out: dict = {}
    for r in records:
        out.setdefault(r.get(key), []).append(r)
    return out


def timeline(records: list[dict], t0: float, end: float, step: float) -> list[dict]:
    """Per `step` seconds since t0: requests finished, their avg, p50 and p95, mean concurrency."""
    out = []
    t = 0.0
    while t0 + t < end:
        lo, hi = t0 + t, t0 + t + step
        done = [r for r in records if lo <= r["t1"] < hi]
        lat = [r["ms"] for r in done if r["ok"]]
        busy = sum(max(0.0, min(r["t1"], hi) - max(r["t0"], lo)) for r in records)
        out.append({"t": round(t + step, 1), "requests": len(done),
                    "failures": sum(1 for r in done if not r["ok"]),
                    "rps": round(len(done) / step, 3),
                    "avg_ms": round(sum(lat) / len(lat), 1) if lat else None,
                    "p50_ms": round(percentile(lat, 50), 1) if lat else None,
                    "p95_ms": round(percentile(lat, 95), 1) if lat else None,
                    "concurrency": round(busy / step, 2)})
        t += step
    return out


# The spike's recovery: p95 within this factor of the steady state's, held this many of the
# series' 10 s windows in a row.
RECOVERED_WITHIN = 1.2
RECOVERED_HELD = 3


def spike_analysis(records: list[dict], t0: float, duration: float, ramp: float,
                   step: float = 10.0) -> dict:
    """Steady state = the requests finished in the run's second half. From the per-`step`
    series of finished requests after the ramp's end: the worst window's p95, and the
    recovery = seconds from the ramp's end to the end of the first window whose p95 is
    within RECOVERED_WITHIN of the steady state's and stays so for RECOVERED_HELD windows."""
    ok = [r for r in records if r["ok"]]
    steady = [r["ms"] for r in ok if r["t1"] >= t0 + duration / 2]
    if not steady:
        return {}
    steady_p95 = percentile(steady, 95)
    series = [w for w in timeline(ok, t0 + ramp, t0 + duration, step) if w["p95_ms"] is not None]
    worst = max((w["p95_ms"] for w in series), default=0.0)
    within = [w["p95_ms"] <= RECOVERED_WITHIN * steady_p95 for w in series]
    recovered_at = next((series[i]["t"] for i in range(len(series) - RECOVERED_HELD + 1)
                         if all(within[i:i + RECOVERED_HELD])), None)
    return {"steady_p95_ms": round(steady_p95, 1), "window_s": step,
            "worst_window_p95_ms": round(worst, 1),
            "worst_over_steady": round(worst / steady_p95, 2) if steady_p95 else None,
            "recovered_s_after_ramp": recovered_at}


def steady_analysis(per_minute: list[dict], duration: float) -> dict:
    """p95 of the run's last minute against its first: the steady load's drift (the requests
    that finish after the run's end, in the stop's grace time, are left out)."""
    full = [m for m in per_minute if m["p95_ms"] is not None and m["t"] <= duration]
    if len(full) < 2:
        return {}
    first, last = full[0], full[-1]
    return {"first_minute_p95_ms": first["p95_ms"], "last_minute": int(last["t"] // 60),
            "last_minute_p95_ms": last["p95_ms"],
            "last_over_first": round(last["p95_ms"] / first["p95_ms"], 3)}


def endurance_analysis(server: list[dict], duration: float) -> dict:
    """RSS (all of it, and its anonymous part) and open fds from the end of the warm-up (the
    first 5 minutes, or a fifth of a shorter run) to the end: the growth a leak would show."""
    if len(server) < 3:
        return {}
    warmup = min(300.0, 0.2 * duration)
    after = [x for x in server if x["t"] >= warmup] or server
    base, end = after[0], server[-1]

    def growth_pct(key: str) -> float | None:
        return round((end[key] - base[key]) / base[key] * 100, 2) if base.get(key) else None

    return {"warmup_s": warmup, "rss_mb_after_warmup": base["rss_mb"], "rss_mb_end": end["rss_mb"],
            "rss_growth_pct": growth_pct("rss_mb"),
            "rss_mb_peak": max(x["rss_mb"] for x in server),
            "rss_anon_mb_after_warmup": base.get("rss_anon_mb"),
            "rss_anon_mb_end": end.get("rss_anon_mb"),
            "rss_anon_growth_pct": growth_pct("rss_anon_mb"),
            "fds_after_warmup": base["fds"], "fds_end": end["fds"],
            "fds_growth": end["fds"] - base["fds"],
            "fds_range_after_warmup": [min(x["fds"] for x in after), max(x["fds"] for x in after)]}


def locust_command(phase: Phase, server: Server, args, records: Path) -> list[str]:
    cmd = [str(ROOT / ".venv/bin/locust"), "-f", LOCUSTFILE, "--headless", "--only-summary",
           "-H", server.host, "--records", str(records),
           "--target", "llama-server" if phase.target == "llama-server" else "trendstory",
           "--max-tokens", str(args.max_tokens), "--stop-timeout", str(STOP_TIMEOUT)]
    if phase.scenario == "fixed":
        cmd += ["-u", str(phase.users), "-r", str(phase.users), "-t", f"{int(phase.duration)}s"]
    else:
        cmd += ["--scenario", phase.scenario, "--scenario-users", str(phase.users),
                "--scenario-duration", str(int(phase.duration))]
        if phase.scenario == "spike":
            cmd += ["--spike-ramp", str(int(phase.spike_ramp))]
    if args.max_requests:
        cmd += ["--max-requests", str(args.max_requests)]
    if phase.target == "llama-server":
        if args.peer_gguf:  # the model's own template, as TrendStory renders it
            cmd += ["--chat-template", str(ROOT / args.model / "tokenizer_config.json")]
        if args.ignore_eos:
            cmd.append("--ignore-eos")
    if phase.workload == "W2":
        cmd += ["--trend-limit", str(args.trend_limit)]
    if phase.workload == "W4":
        # One sequence per level, the same for both servers; another per level, so that no
        # typed topic or seed of one level meets a story an earlier level cached.
        cmd += ["--trend-limit", str(args.trend_limit), "--trends-file", str(page_trends_file(args)),
                "--page-seed", str(phase.users)]
    cmd.append(USER_CLASSES[phase.workload])
    return cmd


def run_phase(phase: Phase, server: Server, args, workdir: Path) -> None:
    records_path = workdir / "records" / f"{phase.name}.jsonl"
    records_path.parent.mkdir(parents=True, exist_ok=True)
    records_path.unlink(missing_ok=True)  # an earlier run's records must never count
    cmd = locust_command(phase, server, args, records_path)
    print(f"bench: {phase.name}: {phase.workload} x {phase.users} users, {phase.duration:.0f} s"
          f"{'' if phase.scenario == 'fixed' else ' (' + phase.scenario + ')'}", flush=True)
    log = open(workdir / "records" / f"{phase.name}.locust.log", "w")
    t0 = time.time()
    locust = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    sampler = Sampler({"server": server.proc.pid, "locust": locust.pid})
    sampler.start()
    try:
        locust.wait(timeout=phase.duration + STOP_TIMEOUT + 60)
    except subprocess.TimeoutExpired:
        locust.kill()
        locust.wait()
    sampler.stop()
    end = time.time()
    records = [json.loads(line) for line in records_path.read_text().splitlines()] \
        if records_path.exists() else []
    # The shape ends the run; its own clock starts when Locust does (about a second in).
    start = min((r["t0"] for r in records), default=t0)
    duration = phase.duration
    if args.max_requests and records:
        duration = max(1e-3, max(r["t1"] for r in records) - start)
    res = summarize(records, duration, None if args.max_requests else start + duration)
    # Not for W2: its answers take about a millisecond, so Locust's own time between
    # requests, which the latency leaves out, would dominate.
    if res["latency_ms"] and phase.scenario == "fixed" and not args.max_requests \
            and phase.workload != "W2":
        res["rps_users_over_latency"] = round(phase.users / (res["latency_ms"]["avg"] / 1000), 3)
    res.update({"name": phase.name, "target": phase.target, "workload": phase.workload,
                "users": phase.users, "duration_s": round(duration, 1), "scenario": phase.scenario,
                "locust_rc": locust.returncode,
                "command": shlex.join(["locust", *cmd[1:]]).replace(str(ROOT) + "/", ""),
                "server": sampler.summary("server"), "locust": sampler.summary("locust"),
                "other_cpu_pct": sampler.other_cpu_pct()})
    if phase.scenario != "fixed":
        step = 5.0 if phase.duration <= 120 else 10.0
        res["timeline"] = timeline(records, start, end, step)
        res["server_timeline"] = sampler.timeline("server", start, step)
        # The report's tables and the reference's figures go by the minute.
        res["per_minute"] = timeline(records, start, end, 60.0)
        res["server_per_minute"] = sampler.timeline("server", start, 60.0)
        if phase.scenario == "steady":
            res["steady"] = steady_analysis(res["per_minute"], phase.duration)
        if phase.scenario == "spike":
            res["spike"] = spike_analysis(records, start, phase.duration, phase.spike_ramp, step)
        if phase.scenario == "endurance":
            res["endurance"] = endurance_analysis(res["server_timeline"], phase.duration)
    phase.result = res
    lat = res["latency_ms"]
    print(f"bench:   {res['requests']} requests, {res['failures']} failed, {res['rps']} req/s, "
          f"avg {lat.get('avg')} ms, p95 {lat.get('p95')} ms, "
          f"server CPU {res['server'].get('cpu_pct')}%, RSS {res['server'].get('peak_rss_mb')} MiB, "
          f"other processes' CPU {res['other_cpu_pct']}%",
          flush=True)


def fetch_trends(server: Server, args) -> dict:
    """The server's `/v1/trends` answer for the top `trend_limit` trends."""
    url = f"{server.host}/v1/trends?limit={args.trend_limit}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def fill_story_cache(server: Server, args) -> dict:
    """W2's warm-up: one story for each of the top `trend_limit` trends, all requested at
    once with W2's exact request (so that W2 finds them in the story cache)."""
    started = time.time()
    topics = [t["topic"] for t in fetch_trends(server, args)["trends"]]
    failures: list[str] = []

    def one(topic: str) -> None:
        # The body of locustfile.py's W2 request (Story.body) with its default options.
        body = json.dumps({"topic": topic, "style": "news", "max_tokens": args.max_tokens,
                           "temperature": 0.8, "seed": 42}).encode()
        request = urllib.request.Request(f"{server.host}/v1/stories", data=body,
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=STOP_TIMEOUT) as response:
                response.read()
        except (urllib.error.URLError, OSError) as e:
            failures.append(f"{topic}: {e}")

    threads = [threading.Thread(target=one, args=(t,)) for t in topics]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - started
    print(f"bench: story cache filled for W2: {len(topics)} trends in {took:.1f} s"
          f"{', ' + str(len(failures)) + ' failed' if failures else ''}", flush=True)
    return {"trends": len(topics), "seconds": round(took, 1), "failures": failures}


def page_trends_file(args) -> Path:
    """Where W4's trend list (TrendStory's /v1/trends answer) is saved for both servers."""
    return Path(args.workdir) / "w4-trends.json"


def prepare_page(server: Server, args) -> dict:
    """Before W4 on the page's replica: waits until the background stories for the top
    trends are written (a replica that has been up a while), then saves the trend list W4
    draws from, for llama-server's run."""
    started = time.time()
    ready, stories = 0, []
    try:
        while time.time() - started < args.ready_timeout:
            with urllib.request.urlopen(f"{server.host}/v1/stories/trending",
                                        timeout=10) as response:
                stories = json.load(response)["stories"]
            ready = sum(1 for s in stories if s["status"] == "ready")
            if stories and ready == len(stories):
                break
            time.sleep(1)
        waited = time.time() - started
        answer = fetch_trends(server, args)
    except (OSError, ValueError, KeyError) as e:
        raise RuntimeError(f"W4 set-up on {server.kind} failed: {e}") from None
    path = page_trends_file(args)
    path.write_text(json.dumps(answer, indent=1) + "\n")
    with_context = sum(1 for t in answer["trends"] if t.get("context"))
    print(f"bench: W4: {ready} of {len(stories)} background stories written after {waited:.1f} s; "
          f"{len(answer['trends'])} trends ({with_context} with a context) saved to "
          f"{os.path.relpath(path, ROOT)}", flush=True)
    return {"background_stories": len(stories), "background_ready": ready,
            "waited_s": round(waited, 1), "trends": len(answer["trends"]),
            "trends_with_context": with_context}


def plan(args) -> list[tuple[str, dict, list[Phase]]]:
    """(server kind, env overrides, phases) in order; servers without a phase left out."""
    ts: list[Phase] = []
    for workload, duration in (("W1", args.level_duration), ("W3", args.level_duration),
                               ("W2", args.w2_duration)):
        if duration:  # 0 skips the part
            ts += [Phase(f"ts-{workload.lower()}-u{users}", "trendstory", workload, users,
                         duration) for users in args.levels]
    out = [("trendstory", {}, ts)]
    # The scenarios on a replica as deployed (background stories and variants on).
    deployed: list[Phase] = []
    if args.steady_duration:
        deployed.append(Phase("ts-steady", "trendstory-deployed", "W1", 5, args.steady_duration,
                              "steady"))
    if args.spike_duration:
        deployed.append(Phase("ts-spike", "trendstory-deployed", "W1", args.spike_users,
                              args.spike_duration, "spike", spike_ramp=args.spike_ramp))
    out.append(("trendstory-deployed", page_server_env(args), deployed))
    if args.endurance_duration:
        out.append(("trendstory-endurance", page_server_env(args),
                    [Phase("ts-endurance", "trendstory-endurance", "W1", 5,
                           args.endurance_duration, "endurance")]))
    if args.w4_duration:
        out.append(("trendstory-page", page_server_env(args),
                    [Phase(f"ts-w4-u{u}", "trendstory", "W4", u, args.w4_duration)
                     for u in args.w4_levels]))
    if args.variants_levels:
        # W1 beside background stories and variants being written, as deployed: the same
        # levels as the plain replica's W1 (background off) in the same run.
        out.append(("trendstory-variants", page_server_env(args),
                    [Phase(f"variants-w1-u{u}", "trendstory-variants", "W1", u,
                           args.level_duration) for u in args.variants_levels]))
    if args.nobatch_levels:
        out.append(("trendstory-nobatch", {"TRENDSTORY_INFERENCE__MAX_BATCH_SIZE": "1"},
                    [Phase(f"nobatch-w1-u{u}", "trendstory-nobatch", "W1", u, args.level_duration)
                     for u in args.nobatch_levels]))
    if args.with_peer:
        peer = [Phase(f"peer-w1-u{u}", "llama-server", "W1", u, args.level_duration)
                for u in args.peer_levels]
        peer += [Phase(f"peer-w3-u{u}", "llama-server", "W3", u, args.level_duration)
                 for u in args.peer_levels]
        if args.w4_duration:
            peer += [Phase(f"peer-w4-u{u}", "llama-server", "W4", u, args.w4_duration)
                     for u in args.w4_levels]
        out.append(("llama-server", {}, peer))
    return [entry for entry in out if entry[2]]


def machine() -> dict:
    info = {"cores": NCPU, "kernel": platform.release()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu"] = value.strip()
            if key.strip() == "Flags":
                flags = value.split()
                keep = ("avx", "fma", "f16c", "amx", "vnni", "sse4_2")
                info["flags"] = sorted(f for f in flags if f.startswith(keep))
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+changes" if dirty else "")
    except OSError:
        return "unknown"


def levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=list(MODES), default="quick")
    p.add_argument("--binary", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="results.json and the PNG charts go here")
    p.add_argument("--workdir", default="", help="records and logs (default target/loadtest/MODE)")
    p.add_argument("--benchmarks", default="", help="rewrite this file's load-test section")
    p.add_argument("--section", default="", help="also write the section alone to this file")
    p.add_argument("--command", default="", help="the bench.sh command line, for the report")
    p.add_argument("--with-peer", action="store_true")
    p.add_argument("--peer-gguf", default="",
                   help="llama-server serves this GGUF (the file --model was imported from) "
                   "with prompts in the model's own chat template")
    p.add_argument("--ignore-eos", action="store_true",
                   help="both servers write max_tokens per request past the end of turn")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ready-timeout", type=float, default=300)
    for key, value in MODES["full"].items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, list):
            p.add_argument(flag, type=levels, default=None, help="comma-separated user counts")
        else:
            p.add_argument(flag, type=type(value), default=None)
    args = p.parse_args(argv)
    for key, value in MODES[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.workdir:
        args.workdir = str(ROOT / "target" / "loadtest" / args.mode)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = {
        "meta": {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "mode": args.mode, "machine": machine(), "commit": git_commit(),
                 "command": args.command or shlex.join(sys.argv),
                 "binary": os.path.relpath(args.binary, ROOT), "model": args.model,
                 "max_tokens": args.max_tokens,
                 "settings": {k: getattr(args, k) for k in MODES["full"]},
                 "with_peer": args.with_peer,
                 # Configuration overrides the caller's environment passes to every server.
                 "env": {k: v for k, v in os.environ.items() if k.startswith("TRENDSTORY_")},
                 "locust": subprocess.run([str(ROOT / ".venv/bin/locust"), "--version"],
                                          capture_output=True, text=True
                                          ).stdout.split(" from ")[0].strip()},
        "servers": [],
        "runs": [],
    }
    broken: list[str] = []
    page_trends_file(args).unlink(missing_ok=True)  # never an earlier run's list
    servers = plan(args)
    # About 3 s of Locust start and stop per run, 15 s per server start (the bench model).
    planned = sum(p.duration + 3 for _, _, phases in servers for p in phases) + 15 * len(servers)
    print(f"bench: {args.mode} run, {sum(len(p) for _, _, p in servers)} Locust runs on "
          f"{len(servers)} servers: about {planned / 60:.0f} minutes", flush=True)
    for kind, overrides, phases in servers:
        server = Server(kind, args, workdir, overrides)
        try:
            server.start()
            if kind == "trendstory-page":  # runs W4 only (plan)
                results["w4_setup"] = prepare_page(server, args)
            filled = False
            for phase in phases:
                if phase.workload == "W2" and not filled:
                    results["w2_cache_fill"] = fill_story_cache(server, args)
                    filled = True
                if phase.workload == "W4" and not page_trends_file(args).exists():
                    broken.append(f"{phase.name}: no W4 trend list (TrendStory's W4 run saves it)")
                    continue
                run_phase(phase, server, args, workdir)
                if phase.result["requests"] == 0:
                    broken.append(f"{phase.name}: no request finished")
                elif args.mode == "smoke" and phase.result["failures"]:
                    broken.append(f"{phase.name}: {phase.result['failures']} failed "
                                  f"{phase.result['failure_reasons']}")
                results["runs"].append(phase.result)
            results["servers"].append({"kind": kind, "env": overrides,
                                       "ready_after_s": round(server.started_s, 1),
                                       "vm_hwm_mb": server.vm_hwm_mb(), "slots": server.slots()})
        except RuntimeError as e:
            broken.append(str(e))
            print(f"bench: {e}", file=sys.stderr)
        finally:
            server.stop()
    results["meta"]["elapsed_s"] = round(time.time() - started, 1)
    results["targets"] = report.targets(results)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"bench: wrote {os.path.relpath(path, ROOT)}")
    report.render(results, out, benchmarks=Path(args.benchmarks) if args.benchmarks else None,
                  section=Path(args.section) if args.section else None)
    if broken:
        print("bench: FAILED:\n  " + "\n  ".join(broken), file=sys.stderr)
        return 1
    print(f"bench: done in {time.time() - started:.0f} s")
    return 0
