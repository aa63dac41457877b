#!/usr/bin/env python3
"""Replica-failure test: TrendStory replicas behind nginx (scripts/cluster.sh), a bounded
load from this machine to 127.0.0.1 only, one replica stopped and started again.

    scripts/failover_test.py --replicas 3 --signal KILL --duration 60 --kill-at 20 --restart-at 35

Clients send GET /v1/stories?topic=...&seed=... (a new seed each time, so every request is
a generation), a share of them as Server-Sent Events. At --kill-at the replica --victim (by
default the one that has served the most so far: topics hash unevenly over a few replicas)
gets --signal (KILL: a crash; TERM: graceful shutdown); at --restart-at it is started again. The
report counts requests sent, succeeded and failed (and why), which replica served each
(nginx's X-Upstream header), requests nginx retried past the stopped replica, and when the
restarted replica served again after it was ready.

With --check, exits 1 unless: every failure was in flight when the replica was killed and
(when known) on that replica, and ended within --grace seconds of the kill; no failure at
all with TERM; the restarted replica served requests after it was ready.

Uses the standard library only; the cluster is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "scripts" / "cluster.sh"

TOPICS = [
    "electric cars", "solar storms", "rust 2.0", "world cup", "mars rover", "quantum chips",
    "coral reefs", "chess engines", "ocean cleanup", "vertical farms", "deep sea mining",
    "heat pumps",
]


@dataclass
class Outcome:
    """One request as the client saw it; times in seconds since the load started."""
    start: float
    end: float
    stream: bool
    topic: str
    ok: bool
    status: int | None = None
    reason: str = ""
    # The replicas nginx tried, in order (X-Upstream), when a response header arrived.
    upstreams: list[str] = field(default_factory=list)


class Load:
    """Client threads sending story requests until `stop`; each records its outcomes."""

    def __init__(self, port: int, args: argparse.Namespace, t0: float):
        self.port, self.args, self.t0 = port, args, t0
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        # In-flight requests: id -> [start, stream, upstream once known].
        self.in_flight: dict[int, list] = {}
        self.next_id = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stopping.is_set():
            topic = rng.choice(TOPICS)
            stream = rng.random() < self.args.stream_share
            outcome = self.request(topic, stream, rng.randrange(1 << 31))
            with self.lock:
                self.outcomes.append(outcome)
            time.sleep(rng.uniform(0, self.args.think_ms / 1000))

    def request(self, topic: str, stream: bool, seed: int) -> Outcome:
        path = (f"/v1/stories?topic={quote(topic)}&max_tokens={self.args.max_tokens}"
                f"&seed={seed}")
        headers = {"Accept": "text/event-stream"} if stream else {}
        with self.lock:
            rid = self.next_id
            self.next_id += 1
            self.in_flight[rid] = [self.now(), stream, None]
        out = Outcome(start=self.in_flight[rid][0], end=0.0, stream=stream, topic=topic, ok=False)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.args.timeout)
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            out.status = resp.status
            out.upstreams = [a.strip() for a in (resp.getheader("X-Upstream") or "").split(",")
                             if a.strip()]
            with self.lock:
                self.in_flight[rid][2] = out.upstreams[-1] if out.upstreams else None
            if resp.status != 200:
                out.reason = f"HTTP {resp.status} {error_code(resp.read())}"
            elif stream:
                out.ok, out.reason = read_events(resp)
            else:
                body = json.loads(resp.read())
                out.ok = "story" in body
                out.reason = "" if out.ok else "JSON without a story"
        except http.client.IncompleteRead:
            out.reason = "response cut"
        except (OSError, http.client.HTTPException) as e:
            out.reason = f"connection: {type(e).__name__}"
        finally:
            conn.close()
            out.end = self.now()
            with self.lock:
                del self.in_flight[rid]
        return out

    def snapshot(self) -> list[list]:
        with self.lock:
            return [list(v) for v in self.in_flight.values()]


def error_code(body: bytes) -> str:
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "from nginx" if b"nginx" in body else "(no JSON error)"


def read_events(resp: http.client.HTTPResponse) -> tuple[bool, str]:
    """Reads an SSE answer: ok once `event: done` arrives; a cut stream is a failure."""
    event = None
    for raw in resp:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:") and event == "done":
            return True, ""
        elif line.startswith("data:") and event == "error":
            return False, f"SSE error {error_code(line[5:].encode())}"
    return False, "stream cut (no done event)"


def busiest(load: Load, args: argparse.Namespace) -> int:
    """The replica that has answered the most requests so far (1..N)."""
    counts = {i: 0 for i in range(1, args.replicas + 1)}
    with load.lock:
        for o in load.outcomes:
            if o.ok and o.upstreams:
                i = int(o.upstreams[-1].rsplit(":", 1)[1]) - args.base_port
                if i in counts:
                    counts[i] += 1
    return max(counts, key=lambda i: (counts[i], -i))


def cluster(*args: str, env: dict) -> str:
    done = subprocess.run([str(CLUSTER), *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cluster.sh {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def replica_pid(state: Path, i: int) -> int | None:
    try:
        return int((state / f"replica-{i}.pid").read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive (the replica is not our child, so it is reaped elsewhere).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def analyse(args, outcomes: list[Outcome], events: dict, victim_addr: str) -> dict:
    kill = events["stopped"]
    failed = [o for o in outcomes if not o.ok]
    reasons: dict[str, int] = {}
    for o in failed:
        reasons[o.reason] = reasons.get(o.reason, 0) + 1
    unexpected = []
    for o in failed:
        on_victim = not o.upstreams or o.upstreams[-1] == victim_addr
        in_flight = o.start <= kill + 0.05 and kill - 0.05 <= o.end <= kill + args.grace
        if args.signal == "TERM" or not (on_victim and in_flight):
            unexpected.append(asdict(o))
    served = lambda o: o.upstreams[-1] if o.upstreams else None  # noqa: E731
    ready = events.get("restarted_ready")
    after_ready = [o for o in outcomes
                   if o.ok and ready is not None and o.start >= ready and served(o) == victim_addr]
    retried = [o for o in outcomes if o.start >= kill - 0.05 and len(o.upstreams) > 1
               and victim_addr in o.upstreams[:-1]]
    per_replica: dict[str, int] = {}
    for o in outcomes:
        if o.ok and served(o):
            per_replica[served(o)] = per_replica.get(served(o), 0) + 1
    last_failure = max((o.end for o in failed), default=None)
    report = {
        "replicas": args.replicas,
        "signal": args.signal,
        "victim": victim_addr,
        "duration_s": round(events["load_end"], 1),
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "stream_share": args.stream_share,
        "sent": len(outcomes),
        "succeeded": len(outcomes) - len(failed),
        "failed": len(failed),
        "failures_by_reason": reasons,
        "unexpected_failures": unexpected,
        "stopped_at_s": round(kill, 2),
        "in_flight_at_stop": events["in_flight_at_stop"],
        "streams_on_victim_at_stop": events["streams_on_victim_at_stop"],
        "victim_exited_after_s": events.get("victim_exited_after_s"),
        "last_failure_after_stop_s": None if last_failure is None else round(last_failure - kill, 2),
        "retried_past_victim": len(retried),
        "last_retry_past_victim_after_stop_s":
            round(max(o.start for o in retried) - kill, 2) if retried else None,
        "restart_took_s": events.get("restart_took_s"),
        "victim_served_after_ready": len(after_ready),
        "first_served_after_ready_s":
            round(min(o.end for o in after_ready) - ready, 2) if after_ready else None,
        "served_per_replica": dict(sorted(per_replica.items())),
    }
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} failure(s) not explained by the stopped replica")
    if ready is not None and not after_ready:
        problems.append("the restarted replica served nothing after it was ready")
    if not outcomes or len(failed) == len(outcomes):
        problems.append("no request succeeded")
    report["problems"] = problems
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--victim", type=int, default=0,
                    help="replica to stop (1..N); 0: the one that has served the most")
    ap.add_argument("--signal", choices=["KILL", "TERM"], default="KILL")
    ap.add_argument("--duration", type=float, default=60, help="seconds of load")
    ap.add_argument("--kill-at", type=float, default=20)
    ap.add_argument("--restart-at", type=float, default=35)
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--stream-share", type=float, default=0.5)
    ap.add_argument("--think-ms", type=float, default=50, help="pause between a client's requests")
    ap.add_argument("--timeout", type=float, default=120, help="per-request socket timeout")
    ap.add_argument("--grace", type=float, default=5,
                    help="seconds after the kill by which failed requests must have ended")
    ap.add_argument("--port", type=int, default=18180, help="nginx port")
    ap.add_argument("--base-port", type=int, default=18190, help="replica i listens on base + i")
    ap.add_argument("--binary", help="trendstory binary (cluster.sh's default otherwise)")
    ap.add_argument("--image", help="run the replicas as containers of this image (podman)")
    ap.add_argument("--config", help="config file shared by the replicas")
    ap.add_argument("--json", type=Path, help="write the report here too")
    ap.add_argument("--check", action="store_true", help="exit 1 when a rule above is broken")
    args = ap.parse_args()
    if not 0 <= args.victim <= args.replicas or not args.kill_at < args.restart_at < args.duration:
        ap.error("need 0 <= victim <= replicas and kill-at < restart-at < duration")

    env = dict(os.environ)
    state = Path(env.setdefault("CLUSTER_STATE_DIR", str(ROOT / "target" / "cluster")))
    up = ["up", str(args.replicas), "--port", str(args.port), "--base-port", str(args.base_port)]
    if args.binary:
        up += ["--binary", args.binary]
    if args.image:
        up += ["--image", args.image]
    if args.config:
        up += ["--config", args.config]
    print(cluster(*up, env=env), end="", flush=True)
    try:
        t0 = time.monotonic()
        load = Load(args.port, args, t0)
        threads = [threading.Thread(target=load.run, args=(i,), daemon=True)
                   for i in range(args.concurrency)]
        for t in threads:
            t.start()
        events: dict = {}
        time.sleep(max(0.0, args.kill_at - load.now()))
        if args.victim == 0:
            args.victim = busiest(load, args)
        victim_addr = f"127.0.0.1:{args.base_port + args.victim}"
        pid = replica_pid(state, args.victim)
        flight = load.snapshot()
        events["in_flight_at_stop"] = len(flight)
        events["streams_on_victim_at_stop"] = sum(1 for f in flight if f[1] and f[2] == victim_addr)
        cluster("stop", str(args.victim), args.signal, env=env)
        events["stopped"] = load.now()
        print(f"failover: t={events['stopped']:.1f}s SIG{args.signal} to replica {args.victim} "
              f"({victim_addr}); {len(flight)} requests in flight", flush=True)
        while alive(pid) and load.now() < args.restart_at + 60:
            time.sleep(0.05)
        events["victim_exited_after_s"] = round(load.now() - events["stopped"], 2)
        time.sleep(max(0.0, args.restart_at - load.now()))
        started = load.now()
        cluster("start", str(args.victim), env=env)
        events["restarted_ready"] = load.now()
        events["restart_took_s"] = round(events["restarted_ready"] - started, 2)
        print(f"failover: t={started:.1f}s replica {args.victim} started again, ready after "
              f"{events['restart_took_s']}s", flush=True)
        time.sleep(max(0.0, args.duration - load.now()))
        load.stopping.set()
        for t in threads:
            t.join(args.timeout + 5)
        events["load_end"] = load.now()
    finally:
        print(cluster("down", env=env), end="", flush=True)

    report = analyse(args, load.outcomes, events, victim_addr)
    if args.signal == "TERM":
        log = (state / f"replica-{args.victim}.log").read_text(errors="replace")
        report["victim_logged_stopped"] = '"stopped"' in log or " stopped" in log
        if not report["victim_logged_stopped"]:
            report["problems"].append("the terminated replica did not log its graceful stop")
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if report["problems"]:
        print("failover: PROBLEMS: " + "; ".join(report["problems"]), file=sys.stderr)
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
