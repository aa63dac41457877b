"""Where a growing RSS lives: TrendStory as the endurance scenario runs it (bench.py's
deployed replica), W1 at some users, and the server's /proc/PID/smaps every INTERVAL
seconds, summed by what is mapped (the model's weights file, the heap, anonymous memory).
A leak grows anonymous memory or the heap; pages of a mapped file are clean and bounded by
the file's size.

    .venv/bin/python scripts/loadtest/rss_by_mapping.py --seconds 600 --out rss.json

Prints one line per sample (seconds, total MiB, the largest mappings' MiB) and writes the
series as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import types
from pathlib import Path

from trendstory_tools.loadtest import bench


def rss_by_mapping(pid: int) -> dict[str, int]:
    """KiB resident per mapped file (its name), [heap], [stack] and [anon] (the rest)."""
    out: dict[str, int] = {}
    name = "[anon]"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                path = parts[5] if len(parts) > 5 else "[anon]"
                name = Path(path).name if path.startswith("/") else path.split(":")[0]
            elif parts and parts[0] == "Rss:":
                out[name] = out.get(name, 0) + int(parts[1])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", default="target/release/trendstory")
    p.add_argument("--model", default="onnx/tinyllama-slots")
    p.add_argument("--users", type=int, default=5)
    p.add_argument("--seconds", type=int, default=600)
    p.add_argument("--interval", type=float, default=30)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    workdir = bench.ROOT / "target" / "loadtest" / "rss-by-mapping"  # config, log, records
    workdir.mkdir(parents=True, exist_ok=True)
    opts = types.SimpleNamespace(model=args.model, binary=args.binary, ignore_eos=False,
                                 ready_timeout=300, max_tokens=64, peer_gguf="", max_requests=0)
    server = bench.Server("rss-by-mapping", opts, workdir, bench.page_server_env(opts))
    server.start()
    records = workdir / "rss-by-mapping.records.jsonl"
    phase = bench.Phase("rss-by-mapping", "trendstory", "W1", args.users, args.seconds)
    locust = subprocess.Popen(bench.locust_command(phase, server, opts, records), cwd=bench.ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    series = []
    started = time.time()
    try:
        while locust.poll() is None:
            sample = rss_by_mapping(server.proc.pid)
            series.append({"t": round(time.time() - started), "kib": sample})
            top = sorted(sample.items(), key=lambda kv: -kv[1])[:5]
            print(f"{series[-1]['t']:5d} s {sum(sample.values()) / 1024:7.1f} MiB  " +
                  "  ".join(f"{name} {kib / 1024:.1f}" for name, kib in top), flush=True)
            time.sleep(args.interval)
    finally:
        locust.wait()
        server.stop()
    args.out.write_text(json.dumps({"model": args.model, "users": args.users,
                                    "series": series}, indent=1) + "\n")
    return 0
