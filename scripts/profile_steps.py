#!/usr/bin/env python3
"""Where a step's time goes inside ONNX Runtime: a summary of the profile that
`trendstory bench-engine --users N --ort-profile PREFIX` writes (every node of every run).

    target/release/trendstory bench-engine --model onnx/tinyllama-bench --users 20 \\
        --duration 30 --ort-profile target/profile/w1
    .venv/bin/python scripts/profile_steps.py FILE [--skip-runs 5] [--json]

FILE is the one profile the run wrote (bench-engine prints its name: the prefix, a date).

Per node group, the share of the time inside `session.run` (model_run): the int4 matmuls
(MatMulNBits), attention (GroupQueryAttention, the slots graph's SlotAttention, or the
explicit graph's MatMul/Softmax/...),
the packed graph's glue (gathers, slices, concat, reshapes that pack and unpack rows), norms,
the MLP's activation, the embedding, and the runs' own overhead (model_run time no node
accounts for: scheduling nodes, waking threads, binding). The prefill lanes' nodes are also
reported on their own, split into runs where a lane held a prompt chunk and runs where it
was idle (a one-token dummy), so their fixed cost shows.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

GROUPS = {
    "MatMulNBits": "int4 matmuls",
    "MatMul": "attention",
    "FusedMatMul": "attention",
    "GroupQueryAttention": "attention",
    "SlotAttention": "attention",
    "RotaryEmbedding": "attention",
    "Softmax": "attention",
    "Where": "attention",
    "Gather": "packing glue",
    "Slice": "packing glue",
    "Concat": "packing glue",
    "Reshape": "packing glue",
    "Transpose": "packing glue",
    "SimplifiedLayerNormalization": "norms",
    "SkipSimplifiedLayerNormalization": "norms",
    "QuickGelu": "MLP activation",
    "Mul": "MLP activation",
    "Split": "MLP activation",
}


def group_of(op: str, node: str) -> str:
    if node.startswith("embed/"):
        return "embedding"
    return GROUPS.get(op, f"other ({op})")


def runs_of(events: list[dict]) -> list[dict]:
    """Each model_run with the kernel events inside it, in time order."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    kernels = sorted((e for e in events if e.get("cat") == "Node"
                      and e.get("name", "").endswith("_kernel_time")), key=lambda e: e["ts"])
    out, k = [], 0
    for run in runs:
        end = run["ts"] + run["dur"]
        nodes = []
        while k < len(kernels) and kernels[k]["ts"] < end:
            if kernels[k]["ts"] >= run["ts"]:
                nodes.append(kernels[k])
            k += 1
        out.append({"dur": run["dur"], "nodes": nodes})
    return out


def summarize(events: list[dict], skip_runs: int = 0) -> dict:
    runs = runs_of(events)[skip_runs:]
    total = sum(r["dur"] for r in runs) or 1
    groups: dict[str, float] = defaultdict(float)
    lanes = {"busy": [0.0, 0], "idle": [0.0, 0]}  # µs, lane-runs
    for run in runs:
        node_sum = 0.0
        lane_time: dict[str, float] = defaultdict(float)
        lane_busy: dict[str, bool] = {}
        for n in run["nodes"]:
            op = n.get("args", {}).get("op_name", "?")
            name = n["name"].removesuffix("_kernel_time")
            groups[group_of(op, name)] += n["dur"]
            node_sum += n["dur"]
            lane = next((part for part in name.split("/") if part.startswith("lane")), None)
            if lane:
                key = lane.split("_")[0]
                lane_time[key] += n["dur"]
                if op == "Slice":
                    # an idle lane takes one dummy token: its slice output has one row
                    shape = n.get("args", {}).get("output_type_shape") or [{}]
                    dims = next(iter(shape[0].values()), []) if shape else []
                    lane_busy[key] = not (len(dims) > 1 and dims[1] == 1)
        groups["run overhead (no node)"] += max(run["dur"] - node_sum, 0.0)
        for key, t in lane_time.items():
            state = "busy" if lane_busy.get(key, True) else "idle"
            lanes[state][0] += t
            lanes[state][1] += 1
    n_runs = max(len(runs), 1)
    return {
        "runs": len(runs),
        "mean_run_ms": total / n_runs / 1e3,
        "shares": {g: t / total for g, t in sorted(groups.items(), key=lambda kv: -kv[1])},
        "lanes": {state: {"lane_runs": c, "mean_ms_per_lane_run": (t / c / 1e3) if c else 0.0,
                          "share": t / total}
                  for state, (t, c) in lanes.items()},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", help="the JSON file ONNX Runtime wrote")
    ap.add_argument("--skip-runs", type=int, default=0,
                    help="leave out the first N runs (the warm-up)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    try:
        with open(args.profile) as f:
            events = json.load(f)
    except (OSError, ValueError) as e:
        print(f"profile_steps: cannot read {args.profile}: {e}", file=sys.stderr)
        return 2
    summary = summarize(events, args.skip_runs)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{summary['runs']} runs, {summary['mean_run_ms']:.1f} ms each on average")
    for group, share in summary["shares"].items():
        print(f"  {group:<28} {share * 100:6.1f}%")
    for state, lane in summary["lanes"].items():
        if lane["lane_runs"]:
            print(f"  prefill lanes {state:<14} {lane['share'] * 100:6.1f}% "
                  f"({lane['lane_runs']} lane-runs, {lane['mean_ms_per_lane_run']:.3f} ms each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
