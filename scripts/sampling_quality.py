#!/usr/bin/env python3
"""Sampling defaults judged on real text: stories about real trend topics in every style,
written by the story API of a real model under several sampling settings, and three
measures of each setting's stories.

    cargo build --release
    .venv/bin/python scripts/sampling_quality.py --model onnx/smollm2-135m-instruct

For each setting (SETTINGS, or --settings NAME=temperature:top_p:top_k:repetition_penalty;...)
every topic is written in every style with the same seed per (topic, style) across settings,
so the settings are compared on the same draws of randomness as far as they share them. The
topics: scripts/loadtest/page-trends.json and, where ../shared is beside the repo, the titles of
its recorded Google Trends and Wikipedia most-read payloads (--topics FILE for a JSON list of
{"topic", "context"}), served as the trend list so each prompt holds its trend's context.
Per setting and style:

  - names topic: the story names its topic: at least half of the topic's words of 3 letters or
    more (stop words aside; all of them for a topic of one or two such words) appear in it;
  - repeated 3-grams: of the story's word 3-grams, the share that repeat an earlier one;
  - finished: the story ends with a finished sentence (. ! ? or an ellipsis, maybe closed by a
    quote or bracket); "finished after cut" is the same once a story that reached max_tokens
    is cut back to its last finished sentence, with the share of its words that cut drops;
  - stopped: the model ended the story itself (finish_reason stop), and the mean tokens.

It starts the server itself (--binary, default target/release/trendstory) on a free 127.0.0.1
port with pre-generation and the network trend sources off, and prints a markdown table (--json for
the raw figures).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_TRENDS = ROOT.parent / "shared" / "testdata" / "trends"
STYLES = ["news", "fairy_tale", "sci_fi", "mystery", "poem"]
# name -> (temperature, top_p, top_k, repetition_penalty)
SETTINGS = {
    "built-in (0.8, 0.95, 50, 1.1)": (0.8, 0.95, 50, 1.1),
    "no repetition penalty (0.8, 0.95, 50, 1.0)": (0.8, 0.95, 50, 1.0),
    "cooler (0.6, 0.9, 50, 1.1)": (0.6, 0.9, 50, 1.1),
    "model card (0.2, 0.9, 50, 1.0)": (0.2, 0.9, 50, 1.0),
}
STOP_WORDS = {"the", "and", "for", "with", "from", "into", "that", "this", "what", "are", "was",
              "how", "why", "who", "new", "its", "his", "her", "their", "our", "you", "vs", "not",
              "has", "have", "will", "over", "after", "about", "than", "list"}
SENTENCE_END = re.compile(r"(\.|!|\?|…|\.\.\.)[\"'”’)\]]*$")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def names_topic(story: str, topic: str) -> bool:
    key = [w for w in words(topic) if len(w) >= 3 and w not in STOP_WORDS]
    if not key:
        return True
    present = set(words(story))
    hits = sum(w in present for w in key)
    return hits >= (len(key) if len(key) <= 2 else (len(key) + 1) // 2)


def repeated_trigrams(story: str) -> float:
    w = words(story)
    grams = [tuple(w[i:i + 3]) for i in range(len(w) - 2)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def finished(story: str) -> bool:
    return bool(SENTENCE_END.search(story.strip()))


def cut_to_sentence(story: str) -> str:
    """The story up to its last finished sentence (all of it when it has none)."""
    ends = [m.end() for m in re.finditer(r"(\.|!|\?|…)[\"'”’)\]]*(?=\s|$)", story)]
    return story[:ends[-1]] if ends else story


def default_topics() -> list[dict]:
    topics = [{"topic": t["topic"], "context": t.get("context")}
              for t in json.loads((ROOT / "scripts/loadtest/page-trends.json").read_text())]
    rss = SHARED_TRENDS / "google_trends__rss_geo-GB_2026-02-02.xml"
    if rss.is_file():
        topics += [{"topic": t, "context": None}
                   for t in re.findall(r"<item>\s*<title>(.*?)</title>", rss.read_text(), re.S)]
    wiki = SHARED_TRENDS / "wikimedia__featured_feed_full_2017-02.json"
    if wiki.is_file():
        for a in json.loads(wiki.read_text())["mostread"]["articles"]:
            title = a.get("normalizedtitle", "")
            if not title.startswith("List") and all(title != t["topic"] for t in topics):
                topics.append({"topic": title, "context": a.get("description")})
    return topics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary: Path, model: Path, topics: list[dict],
                 workdir: Path) -> tuple[subprocess.Popen, str]:
    """The server, with the topics as its trend list (the file source): every story's prompt
    holds its trend's context, as the page's stories do."""
    port = free_port()
    trends = workdir / "trends.json"
    trends.write_text(json.dumps([{"topic": t["topic"], "score": len(topics) - i,
                                   **({"context": t["context"]} if t.get("context") else {})}
                                  for i, t in enumerate(topics)]))
    config = workdir / "sampling.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n[model]\ndir = "{model.resolve()}"\n'
        "[stories.trending]\nenabled = false\n"
        f"[trends]\nmax_trends = {len(topics)}\n"
        f'[trends.sources.file]\nenabled = true\npath = "{trends}"\n'
        + "".join(f"[trends.sources.{s}]\nenabled = false\n"
                  for s in ("hackernews", "reddit", "google_trends", "wikipedia")))
    env = dict(os.environ, ORT_DYLIB_PATH=os.environ.get(
        "ORT_DYLIB_PATH", str(ROOT / ".cache/onnxruntime/libonnxruntime.so.1.32.0")))
    proc = subprocess.Popen([str(binary), "--config", str(config), "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "wb"))
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if json.load(urllib.request.urlopen(f"{base}/readyz", timeout=1)).get("ready"):
                return proc, base
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: see {workdir / 'server.log'}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not become ready")


def story(base: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}/v1/stories", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    for attempt in range(20):
        try:
            return json.load(urllib.request.urlopen(req, timeout=300))
        except urllib.error.HTTPError as e:
            if e.code != 429:
                raise
            time.sleep(1)
    raise SystemExit("the server kept answering 429")


def measure(stories: list[dict], max_tokens: int) -> dict:
    n = len(stories)
    cut = [cut_to_sentence(s["story"]) if s["finish_reason"] == "length" else s["story"]
           for s in stories]
    dropped = [1 - len(words(c)) / max(1, len(words(s["story"]))) for s, c in zip(stories, cut)
               if s["finish_reason"] == "length"]
    return {
        "stories": n,
        "names_topic": sum(names_topic(s["story"], s["topic"]) for s in stories) / n,
        "repeated_3grams": sum(repeated_trigrams(s["story"]) for s in stories) / n,
        "finished": sum(finished(s["story"]) for s in stories) / n,
        "finished_after_cut": sum(finished(c) for c in cut) / n,
        "words_dropped_by_cut": sum(dropped) / len(dropped) if dropped else 0.0,
        "stopped": sum(s["finish_reason"] == "stop" for s in stories) / n,
        "mean_tokens": sum(s["tokens"] for s in stories) / n,
        "max_tokens": max_tokens,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--binary", type=Path, default=ROOT / "target/release/trendstory")
    ap.add_argument("--topics", type=Path, help="JSON list of {topic, context}")
    ap.add_argument("--max-topics", type=int, default=60)
    ap.add_argument("--max-tokens", type=int, default=128, help="per story (the API's default)")
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--settings", help="NAME=T:P:K:R;... instead of SETTINGS")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    settings = SETTINGS
    if args.settings:
        settings = {}
        for item in args.settings.split(";"):
            name, _, values = item.partition("=")
            t, p, k, r = values.split(":")
            settings[name] = (float(t), float(p), int(k), float(r))
    topics = (json.loads(args.topics.read_text()) if args.topics else default_topics())
    topics = topics[:args.max_topics]
    if len(topics) < 50:
        print(f"sampling_quality: only {len(topics)} topics (../shared absent?)", file=sys.stderr)
    t0 = time.time()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_server(args.binary, args.model, topics, Path(tmp))
        try:
            for name, (t, p, k, r) in settings.items():
                bodies = [{"topic": tp["topic"], "style": style, "max_tokens": args.max_tokens,
                           "temperature": t, "top_p": p, "top_k": k, "repetition_penalty": r,
                           "seed": 1000 * i + j}
                          for i, tp in enumerate(topics) for j, style in enumerate(STYLES)]
                with ThreadPoolExecutor(args.concurrency) as pool:
                    answers = list(pool.map(lambda b: story(base, b), bodies))
                for a, b in zip(answers, bodies):
                    a["topic"] = b["topic"]  # the asked topic (the answer's is cleaned)
                results[name] = {"all": measure(answers, args.max_tokens)} | {
                    style: measure([a for a, b in zip(answers, bodies) if b["style"] == style],
                                   args.max_tokens) for style in STYLES}
                results[name]["examples"] = [a["story"] for a in answers[:2]]
                print(f"sampling_quality: {name}: {len(answers)} stories "
                      f"({time.time() - t0:.0f} s)", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait()
    report = {"model": str(args.model), "topics": len(topics), "styles": STYLES,
              "max_tokens": args.max_tokens, "seconds": round(time.time() - t0), "settings": results}
    print(markdown(report))
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


def markdown(report: dict) -> str:
    pct = lambda x: f"{x * 100:.0f}%"  # noqa: E731
    lines = [f"{report['topics']} topics x {len(report['styles'])} styles, max_tokens "
             f"{report['max_tokens']}, {report['seconds']} s", "",
             "| setting (temperature, top_p, top_k, repetition penalty) | names topic | repeated "
             "3-grams | finished | finished after cut (words cut) | stopped | mean tokens |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report["settings"].items():
        a = r["all"]
        lines.append(f"| {name} | {pct(a['names_topic'])} | {a['repeated_3grams'] * 100:.1f}% | "
                     f"{pct(a['finished'])} | {pct(a['finished_after_cut'])} "
                     f"({a['words_dropped_by_cut'] * 100:.0f}%) | {pct(a['stopped'])} | "
                     f"{a['mean_tokens']:.0f} |")
    lines += ["", "Per style (names topic / repeated 3-grams / finished):", "",
              "| setting | " + " | ".join(report["styles"]) + " |",
              "| --- |" + " --- |" * len(report["styles"])]
    for name, r in report["settings"].items():
        cells = [f"{pct(r[s]['names_topic'])} / {r[s]['repeated_3grams'] * 100:.1f}% / "
                 f"{pct(r[s]['finished'])}" for s in report["styles"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
