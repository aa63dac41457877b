"""TrendStory's load tests (issue 9), for Locust. Usually run by scripts/bench.sh; by hand:

    .venv/bin/locust -f scripts/loadtest/locustfile.py --headless -H http://127.0.0.1:8080 \
        -u 5 -t 60s W1Unique [--records out.jsonl]
    .venv/bin/locust -f scripts/loadtest/locustfile.py --headless -H http://127.0.0.1:8080 \
        --scenario spike W1Unique

Workloads (user classes; name one or more on the command line):
- W1Unique: POST /v1/stories with a new topic every time (no cache can help), `max_tokens`
  64, fixed temperature and seed: the pure generation cost.
- W2Trending: the same request with topics from the live GET /v1/trends list, drawn with a
  Zipf skew (rank r has weight 1/r^s), so the story cache answers most of them. FastHttpUser.
- W3Streaming: W1 as Server-Sent Events; records time to first token ("W3 ttft") and the
  whole stream ("W3 stream") as Locust requests of their own.
- W4Page: the web page's traffic (scripts/loadtest/page_traffic.py): 70% "Write a story" on
  one of the top trends (Zipf-skewed, no seed), 20% another story about one (`seen`: the
  ids of the stories about it this user was shown, as the page sends; llama-server gets a
  fresh seed), 10% a topic the user typed; the page's default style most likely;
  `max_tokens` only, as the page sends. The requests come in a fixed order from --page-seed (FastHttpUser).
Every user sends its next request as soon as the last one ends (no wait time): N users keep
N requests in flight.

W2's and W4's trends: the live GET /v1/trends list, or --trends-file (a saved /v1/trends
answer; scripts/loadtest/bench.py saves TrendStory's, so that llama-server gets the same
topics and contexts).

--target llama-server sends W1, W3 and W4 to a llama.cpp `llama-server` instead
(scripts/loadtest/peer-llama-server.sh): POST /completion with the prompt text TrendStory
renders for the request (TinyLlama's template, the style's system and user text, the trend's
context for W4), the same `n_predict` and sampling parameters, `stream` for W3. It generates
every request: it has no story cache. An answer whose prompt it had to truncate fails.

Scenarios (--scenario; one load shape drives them all, ending by itself):
- fixed (default): -u users for -t (required: every run is bounded in time).
- steady: 5 users for 10 minutes.
- spike: 0 to 20 users in 30 s (--spike-ramp), held until 5 minutes.
- endurance: 5 users for 10 minutes; --scenario-duration 3600 for the 1-hour run.
--scenario-users and --scenario-duration change the defaults.

Safety: the host must be a loopback address (127.0.0.0/8, ::1 or localhost), else Locust
exits with status 2 before sending anything; runs longer than 2 hours are refused too.

--records PATH writes one JSON line per finished request (times, status, latency, time to
first token, tokens, the server's own stage timings, bytes): scripts/loadtest/bench.py
computes the report from them rather than from Locust's rounded histograms.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import logging
import os
import random
import sys
import time
import urllib.request
from urllib.parse import urlparse

import gevent
import requests
from locust import FastHttpUser, LoadTestShape, User, constant, events, task

from trendstory_tools.loadtest.page_traffic import (
    SUBJECTS, ChatTemplate, PageTraffic, chat_prompt, zipf_weights)

MAX_RUN_SECONDS = 2 * 3600
SCENARIOS = {
    # name: (users, seconds)
    "steady": (5, 600),
    "spike": (20, 300),
    "endurance": (5, 600),
}

# W1's and W3's sampling beside --temperature, sent to both servers (TrendStory's built-in
# defaults: a model folder's own would otherwise apply on its side only).
SAMPLING = {"top_p": 0.95, "top_k": 50, "repetition_penalty": 1.1}
# llama-server's chat template (--chat-template), or None for TinyLlama's.
TEMPLATE: ChatTemplate | None = None
RECORDS: list[dict] = []
# W2's and W4's trends ({"topic", "context"}, ranked) and W2's weights; W4's sequence.
TRENDS: list[dict] = []
TREND_WEIGHTS: list[float] = []
PAGE: list[PageTraffic] = []
_counter = itertools.count()
log = logging.getLogger("loadtest")


def unique_topic() -> str:
    """A topic no earlier request used: a subject plus this process and a counter."""
    n = next(_counter)
    return f"{random.choice(SUBJECTS)}, report {os.getpid()}-{n}-{random.randrange(10**6)}"


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("TrendStory load test")
    group.add_argument("--target", choices=["trendstory", "llama-server"], default="trendstory",
                       help="what the host runs (llama-server: W1, W3 and W4)")
    group.add_argument("--scenario", choices=["fixed", *SCENARIOS], default="fixed")
    group.add_argument("--scenario-users", type=int, default=0, help="0: the scenario's own")
    group.add_argument("--scenario-duration", type=float, default=0, help="seconds; 0: the scenario's own")
    group.add_argument("--spike-ramp", type=float, default=30, help="seconds from 0 to all users")
    group.add_argument("--max-tokens", type=int, default=64)
    group.add_argument("--temperature", type=float, default=0.8)
    group.add_argument("--chat-template", default="",
                       help="llama-server: render its prompts with this model folder's "
                       "tokenizer_config.json chat template (default: TinyLlama's)")
    group.add_argument("--ignore-eos", action="store_true",
                       help="llama-server: write n_predict tokens past the end of turn (pair "
                       "with TrendStory's stories.ignore_eos)")
    group.add_argument("--seed", type=int, default=42)
    group.add_argument("--zipf-s", type=float, default=1.1, help="W2, W4: weight of rank r is 1/r^s")
    group.add_argument("--trend-limit", type=int, default=20, help="W2, W4: the top N trends")
    group.add_argument("--trends-file", default="",
                       help="W2, W4: a saved GET /v1/trends answer instead of the live list")
    group.add_argument("--page-seed", type=int, default=1, help="W4: the request sequence's seed")
    group.add_argument("--request-timeout", type=float, default=300)
    group.add_argument("--max-requests", type=int, default=0,
                       help="stop after this many finished requests (0: no limit)")
    group.add_argument("--records", default="", help="JSON lines, one per finished request")


def _loopback(host: str) -> bool:
    name = urlparse(host).hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@events.init.add_listener
def _check_bounds(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:
        return
    host = options.host or ""
    if not _loopback(host):
        log.error("refusing host %r: load tests go to 127.0.0.1 (loopback) only", host)
        sys.exit(2)
    if options.scenario == "fixed" and not options.run_time:
        log.error("refusing an unbounded run: give -t/--run-time (or a --scenario)")
        sys.exit(2)
    if Scenario.duration(options) > MAX_RUN_SECONDS:
        log.error("refusing a run longer than %d s", MAX_RUN_SECONDS)
        sys.exit(2)


@events.test_start.add_listener
def _load_template(environment, **_kwargs) -> None:
    global TEMPLATE
    options = environment.parsed_options
    if options is not None and options.chat_template:
        TEMPLATE = ChatTemplate(options.chat_template)


@events.test_start.add_listener
def _load_trends(environment, **_kwargs) -> None:
    """W2's and W4's topics: --trends-file, or the live trend list, read once per run."""
    options = environment.parsed_options
    names = {cls.__name__ for cls in environment.user_classes}
    if not names & {"W2Trending", "W4Page"}:
        return
    problem = ""
    if "W2Trending" in names and options.target != "trendstory":
        problem = "W2Trending runs against TrendStory only"
    elif not options.trends_file and options.target != "trendstory":
        problem = ("W4Page against llama-server needs --trends-file (TrendStory's trend list: "
                   "the topics and contexts its prompts hold)")
    else:
        source = options.trends_file or \
            f"{environment.host.rstrip('/')}/v1/trends?limit={options.trend_limit}"
        try:
            if options.trends_file:
                with open(options.trends_file, encoding="utf-8") as f:
                    answer = json.load(f)
            else:
                with urllib.request.urlopen(source, timeout=10) as response:
                    answer = json.load(response)
            TRENDS[:] = [{"topic": t["topic"], "context": t.get("context")}
                         for t in answer["trends"][:options.trend_limit]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            problem = f"cannot read {source}: {e}"
        if not TRENDS and not problem:
            problem = f"{source} holds no trends"
    if problem:
        # In the runner's greenlet: stop the run and exit with status 2 rather than raise.
        log.error(problem)
        environment.process_exit_code = 2
        gevent.spawn(environment.runner.quit)
        return
    TREND_WEIGHTS[:] = zipf_weights(len(TRENDS), options.zipf_s)
    PAGE[:] = [PageTraffic(TRENDS, options.page_seed, options.zipf_s)]


@events.quitting.add_listener
def _write_records(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None or not options.records:
        return
    with open(options.records, "w", encoding="utf-8") as out:
        for record in RECORDS:
            out.write(json.dumps(record) + "\n")


class Scenario(LoadTestShape):
    """Every run's users over time; ends the run by itself (see the module doc)."""

    use_common_options = True

    @staticmethod
    def users(options) -> int:
        if options.scenario == "fixed":
            return options.num_users or 1
        return options.scenario_users or SCENARIOS[options.scenario][0]

    @staticmethod
    def duration(options) -> float:
        if options.scenario == "fixed":
            return float(options.run_time or 0)
        return options.scenario_duration or SCENARIOS[options.scenario][1]

    def tick(self):
        options = self.runner.environment.parsed_options
        if self.get_run_time() >= self.duration(options):
            return None
        users = self.users(options)
        if options.scenario == "spike":
            return users, users / max(options.spike_ramp, 0.001)
        return users, max(users, options.spawn_rate or users)


class Story:
    """What every workload shares: the request body and the record of each answer."""

    workload = ""

    def body(self, topic: str, stream: bool = False) -> dict:
        """W1's, W2's and W3's request: a news story, fixed temperature and seed."""
        o = self.environment.parsed_options
        if o.target == "llama-server":
            return self.completion(chat_prompt(topic, template=TEMPLATE), o.seed, stream)
        body = {"topic": topic, "style": "news", "max_tokens": o.max_tokens,
                "temperature": o.temperature, **SAMPLING, "seed": o.seed}
        if stream:
            body["stream"] = True
        return body

    def completion(self, prompt: str, seed: int | None, stream: bool = False) -> dict:
        """llama-server's request: the sampling W1 and W3 send TrendStory (temperature as
        --temperature), the seed when there is one (else llama-server picks one)."""
        o = self.environment.parsed_options
        body = {"prompt": prompt, "n_predict": o.max_tokens, "temperature": o.temperature,
                "top_p": SAMPLING["top_p"], "top_k": SAMPLING["top_k"],
                "repeat_penalty": SAMPLING["repetition_penalty"], "stream": stream}
        if seed is not None:
            body["seed"] = seed
        if o.ignore_eos:
            body["ignore_eos"] = True
        return body

    def path(self) -> str:
        return "/completion" if self.environment.parsed_options.target == "llama-server" else "/v1/stories"

    def record(self, started: float, ended: float, ok: bool, status: int, error: str = "",
               answer: dict | None = None, ttft_ms: float | None = None,
               req_bytes: int = 0, resp_bytes: int = 0, **fields) -> None:
        record = {"w": self.workload, "target": self.environment.parsed_options.target,
                  "t0": started, "t1": ended, "ms": (ended - started) * 1000, "ok": ok,
                  "status": status, "error": error[:200], "ttft_ms": ttft_ms,
                  "req_bytes": req_bytes, "resp_bytes": resp_bytes, **fields}
        record.update(summarize(answer))
        RECORDS.append(record)
        limit = self.environment.parsed_options.max_requests
        if limit and len(RECORDS) >= limit and self.environment.runner is not None:
            gevent.spawn(self.environment.runner.quit)


def summarize(answer: dict | None) -> dict:
    """Tokens and stage timings of a TrendStory story or a llama-server completion;
    TrendStory's story id too (requests that shared a generation got the same one)."""
    if not answer:
        return {}
    if "timings" in answer and "predicted_n" in answer.get("timings", {}):
        t = answer["timings"]
        return {"tokens": answer.get("tokens_predicted", t.get("predicted_n")),
                "prompt_tokens": answer.get("tokens_evaluated", t.get("prompt_n")),
                "cached": False,
                "stages": {"prefill_ms": t.get("prompt_ms"), "decode_ms": t.get("predicted_ms")}}
    return {"tokens": answer.get("tokens"), "prompt_tokens": answer.get("prompt_tokens"),
            "cached": answer.get("cached"), "story_id": answer.get("id"),
            "variant": answer.get("variant"), "stages": answer.get("timings")}


def answer_problem(answer: dict) -> str:
    """Why a 200 answer is still a failure: llama-server cut the prompt to fit a slot (it
    would then generate from a different prompt than TrendStory's)."""
    if answer.get("truncated"):
        return "llama-server truncated the prompt: its slot's context is too small"
    return ""


class StoryJson(Story, FastHttpUser):
    """One JSON answer per request (W1, W2); no task of its own."""

    abstract = True
    wait_time = constant(0)
    connection_timeout = 10.0

    def __init__(self, environment) -> None:
        self.network_timeout = environment.parsed_options.request_timeout
        super().__init__(environment)

    def post(self, body: dict, **fields) -> dict | None:
        """Sends `body`; `fields` go into the request's record. Returns the answer when it is
        a good one."""
        payload = json.dumps(body).encode()
        started = time.time()
        with self.client.post(self.path(), data=payload, name=f"{self.workload} {self.path()}",
                              headers={"content-type": "application/json"},
                              catch_response=True) as response:
            ended = time.time()
            status = response.status_code or 0
            text = response.text or ""
            answer, error = None, ""
            if status == 200:
                try:
                    answer = json.loads(text)
                    error = answer_problem(answer)
                except ValueError:
                    error = "answer is not JSON"
            else:
                error = f"HTTP {status}: {text[:120] or getattr(response, 'error', '')}"
            if error:
                response.failure(error)
            self.record(started, ended, not error, status, error, answer,
                        req_bytes=len(payload), resp_bytes=len(text.encode()), **fields)
            return None if error else answer


class W1Unique(StoryJson):
    """Every request a new topic: nothing cached, nothing shared."""

    workload = "W1"

    @task
    def story(self) -> None:
        self.post(self.body(unique_topic()))


class W2Trending(StoryJson):
    """Topics from the live trend list, Zipf-skewed: mostly story-cache hits."""

    workload = "W2"

    @task
    def story(self) -> None:
        if TRENDS:  # empty only while a refused run stops
            self.post(self.body(random.choices(TRENDS, TREND_WEIGHTS)[0]["topic"]))


class W4Page(StoryJson):
    """The page's traffic, in PageTraffic's fixed order (see page_traffic.py)."""

    workload = "W4"

    def __init__(self, environment) -> None:
        super().__init__(environment)
        # Per topic, the ids of the stories this user was shown, as the page keeps them.
        self.seen: dict[str, list[str]] = {}

    @task
    def story(self) -> None:
        if not PAGE:  # empty only while a refused run stops
            return
        request = PAGE[0].next()
        o = self.environment.parsed_options
        if o.target == "llama-server":
            body = self.completion(chat_prompt(request.topic, request.style, request.context,
                                               TEMPLATE),
                                   request.seed)
        else:
            # What the page sends: topic, style and length; "another story" lists the ids of
            # the stories about the topic this user was shown (llama-server gets the seed).
            body = {"topic": request.topic, "style": request.style, "max_tokens": o.max_tokens}
            if request.kind == "another":
                body["seen"] = self.seen.get(request.topic, [])[-32:]
        answer = self.post(body, kind=request.kind, topic=request.topic, style=request.style)
        if answer and answer.get("id"):
            self.seen.setdefault(request.topic, []).append(answer["id"])


class W3Streaming(Story, User):
    """W1 over Server-Sent Events: time to first token and the whole stream."""

    workload = "W3"
    wait_time = constant(0)

    def on_start(self) -> None:
        self.session = requests.Session()

    def on_stop(self) -> None:
        self.session.close()

    @task
    def story(self) -> None:
        options = self.environment.parsed_options
        payload = json.dumps(self.body(unique_topic(), stream=True)).encode()
        url = self.environment.host.rstrip("/") + self.path()
        started = time.time()
        ttft = None
        answer, error, status, received = None, "", 0, 0
        try:
            with self.session.post(url, data=payload, stream=True, timeout=options.request_timeout,
                                   headers={"content-type": "application/json",
                                            "accept": "text/event-stream"}) as response:
                status = response.status_code
                if status != 200:
                    error = f"HTTP {status}: {response.text[:120]}"
                else:
                    for event, data, size in sse_events(response):
                        received += size
                        if options.target == "llama-server":
                            chunk = json.loads(data)
                            if ttft is None and chunk.get("content"):
                                ttft = time.time()
                            if chunk.get("stop"):
                                answer = chunk
                                error = answer_problem(chunk)
                                break
                        elif event == "token" and ttft is None:
                            ttft = time.time()
                        elif event == "done":
                            answer = json.loads(data)
                            break
                        elif event == "error":
                            error = f"error event: {data[:120]}"
                            break
                    if answer is None and not error:
                        error = "stream ended without its final event"
        except (requests.RequestException, ValueError) as e:
            error = f"{type(e).__name__}: {e}"
        ended = time.time()
        ttft_ms = None if ttft is None else (ttft - started) * 1000
        fire = self.environment.events.request.fire
        fire(request_type="SSE", name="W3 stream", response_time=(ended - started) * 1000,
             response_length=received, exception=RuntimeError(error) if error else None,
             context={})
        if ttft_ms is not None:
            fire(request_type="SSE", name="W3 ttft", response_time=ttft_ms, response_length=0,
                 exception=None, context={})
        self.record(started, ended, not error, status, error, answer, ttft_ms,
                    req_bytes=len(payload), resp_bytes=received)


def sse_events(response):
    """(event, data, bytes) per Server-Sent Event as it arrives (chunk by chunk)."""
    event, data, size, buffer = "message", [], 0, b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            size += len(raw) + 1
            line = raw.decode("utf-8", errors="replace").rstrip("\r")
            if not line:
                if data:
                    yield event, "\n".join(data), size
                event, data, size = "message", [], 0
            elif line.startswith(":"):
                continue
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
    if data:
        yield event, "\n".join(data), size
