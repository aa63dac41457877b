// TrendStory page: the trends, a story streamed into the page as it is written, the
// stories already written, and the server's state. Talks only to this server's API.
// Text from trends and stories is always inserted with textContent (never as HTML).

const KEY_STORAGE = "trendstory.apiKey";
const SOURCE_NAMES = {
  hackernews: "Hacker News",
  reddit: "Reddit",
  google_trends: "Google Trends",
  wikipedia: "Wikipedia",
  file: "Local list",
};
const FINISH_REASONS = {
  stop: "the model ended it",
  length: "the length limit was reached",
};
const READY_POLL_MS = 30000;
const NOT_READY_POLL_MS = 2000;
const TRENDS_POLL_MS = 60000;
const CACHED_POLL_MS = 15000;
/** Streamed text is put on the page at most this often (one DOM change per batch). */
const FLUSH_MS = 40;

const $ = (id) => document.getElementById(id);

const state = {
  apiKey: sessionStorage.getItem(KEY_STORAGE) || "",
  /** The last readiness check's answer; null before the first. */
  ready: null,
  /** The story being written: {controller, topic, stopped}. */
  writing: null,
  activeTopic: null,
  /** Countdown timer of an "overloaded" or "rate limited" answer. */
  retryTimer: null,
  /** The server's `/page.json`: model, random weights, length limit per style. */
  settings: null,
  /** Per topic, the ids of the stories shown (the last SEEN_MAX): "Another story" asks for one not among them. */
  seen: new Map(),
};

/** The most story ids a request may list as seen (the server's bound). */
const SEEN_MAX = 32;

// ---------------------------------------------------------------- small helpers

/** An element with text content and attributes; children are nodes or strings (as text). */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child);
  }
  return node;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 5) return "just now";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function ms(value) {
  if (typeof value !== "number") return "–";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`;
}

/** Only http(s) links: a trend's URL is data from elsewhere. */
function safeUrl(raw) {
  try {
    const url = new URL(raw);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function headers(extra = {}) {
  const all = { Accept: "application/json", ...extra };
  if (state.apiKey) all.Authorization = `Bearer ${state.apiKey}`;
  return all;
}

// ---------------------------------------------------------------- errors

/** A failed API call, from the JSON error body `{"error": {code, message, request_id}}`. */
class Problem {
  constructor({ status = 0, code = "network", message = "", requestId = null, retryAfter = null }) {
    Object.assign(this, { status, code, message, requestId, retryAfter });
  }

  static async fromResponse(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    return Problem.fromBody(body, response.status, Number.isFinite(retry) ? retry : null);
  }

  static fromBody(body, status = 0, retryAfter = null) {
    const error = (body && body.error) || {};
    return new Problem({
      status,
      code: error.code || `http_${status}`,
      message: error.message || "",
      requestId: error.request_id || null,
      retryAfter,
    });
  }
}

/** What a person should read about a problem: {text, kind, retryAfter}. */
function describe(problem) {
  const retry = problem.retryAfter;
  switch (problem.code) {
    case "overloaded":
      return {
        kind: "warn",
        text: "Every writer is busy right now (the server is overloaded).",
        retryAfter: retry || 1,
      };
    case "rate_limited":
      return { kind: "warn", text: "Too many requests from you in a short time.", retryAfter: retry || 1 };
    case "not_ready":
      return {
        kind: "error",
        text: `The model is not ready, so no story can be written yet: ${problem.message}`,
        retryAfter: retry,
      };
    case "shutting_down":
      return {
        kind: "error",
        text: "This server is shutting down. Reload the page in a moment to reach another one.",
      };
    case "no_trends":
      return { kind: "error", text: "There are no trends yet: the trend sources have not answered." };
    case "unauthorized":
      return { kind: "error", text: "This server needs an API key: enter it under “API key” at the bottom." };
    case "timeout":
      return { kind: "error", text: "The story took too long, and the server stopped writing it." };
    case "worker_restarted":
    case "generation_failed":
    case "incomplete_generation":
    case "internal":
      return { kind: "error", text: `The writer failed (${problem.message || problem.code}). Try again.` };
    case "network":
      return { kind: "error", text: "Cannot reach the server. Check the connection and try again." };
    default:
      if (problem.status === 400 || problem.status === 413 || problem.status === 415) {
        return { kind: "error", text: `The server refused the request: ${problem.message}` };
      }
      return { kind: "error", text: problem.message || `The server answered ${problem.status}.` };
  }
}

// ---------------------------------------------------------------- readiness

function notReadyReason(body) {
  if (!body) {
    return { kind: "error", text: "The server does not answer. Retrying…" };
  }
  if (body.shutting_down) {
    return { kind: "error", text: "This server is shutting down. Reload the page in a moment to reach another one." };
  }
  const inference = body.inference || {};
  if (!inference.workers_up) {
    const failure = (inference.workers || []).map((w) => w.last_error).find(Boolean);
    if (failure) {
      return {
        kind: "error",
        text: `The model could not be loaded, so no story can be written. The server keeps retrying; whoever runs it must fix the model files. Reason: ${failure}`,
      };
    }
    return { kind: "warn", text: "The model is loading. Stories can be written in a moment." };
  }
  if (!body.warmed_up) {
    return { kind: "warn", text: "The model is warming up. Stories can be written in a moment." };
  }
  if (!body.trends) {
    return { kind: "warn", text: "No trends yet: the trend sources have not answered. Retrying…" };
  }
  return { kind: "warn", text: "The server is not ready yet." };
}

function showNotice(reason) {
  const notice = $("notice");
  if (!reason) {
    notice.hidden = true;
    notice.replaceChildren();
    return;
  }
  notice.dataset.kind = reason.kind;
  const text = el("p", { text: reason.text });
  if (notice.hidden || notice.textContent !== text.textContent) notice.replaceChildren(text);
  notice.hidden = false;
}

async function checkReady() {
  let body = null;
  let ok = false;
  try {
    const response = await fetch("/readyz", { headers: headers(), cache: "no-store" });
    ok = response.ok;
    body = await response.json();
  } catch {
    body = null;
    ok = false;
  }
  const pill = $("server-status");
  const wasReady = state.ready;
  state.ready = ok && Boolean(body && body.ready);
  pill.dataset.state = state.ready ? "ready" : "not-ready";
  pill.textContent = state.ready ? "Ready" : "Not ready";
  showNotice(state.ready ? null : notReadyReason(body));
  if (body && body.model) $("model").textContent = `Model: ${body.model}`;
  setWriteButtons();
  if (state.ready && wasReady === false) {
    // Became ready since the last check: the lists may have filled meanwhile.
    loadTrends();
    loadCached();
  }
  setTimeout(checkReady, state.ready ? READY_POLL_MS : NOT_READY_POLL_MS);
}

function setWriteButtons() {
  for (const button of document.querySelectorAll("button.write")) {
    button.disabled = !state.ready;
  }
  $("another").disabled = !state.ready || state.activeTopic === null || state.writing !== null;
}

// ---------------------------------------------------------------- the server's settings

/** Reads `/page.json` (null when it cannot) and applies it. */
async function loadSettings() {
  try {
    const response = await fetch("/page.json", { headers: headers(), cache: "no-store" });
    if (!response.ok) return null;
    const first = state.settings === null;
    state.settings = await response.json();
    $("random-notice").hidden = !state.settings.random_weights;
    applyLengthLimit(first);
  } catch {
    // The readiness notice says when the server cannot be reached.
  }
  return state.settings;
}

/** The largest length the server accepts for every listed trend in the chosen style. */
function maxTokens() {
  const limits = state.settings ? state.settings.max_tokens : {};
  return limits[$("style").value] || null;
}

/** Shows the server's limit for the chosen style; the first time, sets its default. */
function applyLengthLimit(setDefault = false) {
  const max = maxTokens();
  if (max === null) return;
  const input = $("max-tokens");
  input.max = String(max);
  if (setDefault) input.value = String(Math.min(state.settings.default_max_tokens, max));
  $("max-tokens-hint").textContent = `1 to ${max} tokens (this model's limit for these trends)`;
}

// ---------------------------------------------------------------- trends

const FRESHNESS = {
  default: "Built-in list: no trend source has answered yet",
  fresh: "Fresh",
  stale: "Some sources failed: their last trends are shown, marked stale",
  expired: "Expired: the sources have not answered for a long time",
};

// GETs a JSON list from the API; on failure says why in `meta` (asking for a key when one
// is needed) and returns null.
async function fetchList(url, meta) {
  let response;
  try {
    response = await fetch(url, { headers: headers(), cache: "no-store" });
  } catch {
    meta.textContent = describe(new Problem({})).text;
    return null;
  }
  if (!response.ok) {
    const problem = await Problem.fromResponse(response);
    meta.textContent = describe(problem).text;
    if (problem.code === "unauthorized") askForKey();
    return null;
  }
  return response.json();
}

async function loadTrends() {
  const settings = await loadSettings();
  const limit = settings ? settings.trends_listed : 20;
  const body = await fetchList(`/v1/trends?limit=${limit}`, $("trends-meta"));
  if (body) renderTrends(body);
}

function renderTrends(body) {
  const list = $("trends");
  const focused = document.activeElement;
  const focusedTopic = focused && list.contains(focused) ? focused.dataset.topic : null;
  const freshness = FRESHNESS[body.freshness] || body.freshness;
  const age = body.age_secs === null || body.age_secs === undefined ? "" : ` · oldest ${ago(body.age_secs)}`;
  $("trends-meta").textContent = `${body.trends.length} trends · ${freshness}${age}`;
  const items = body.trends.map((trend) => trendItem(trend));
  list.replaceChildren(...items);
  if (focusedTopic !== null && focusedTopic !== undefined) {
    const again = [...list.querySelectorAll("button.write")].find((b) => b.dataset.topic === focusedTopic);
    if (again) again.focus();
  }
  setWriteButtons();
}

function trendItem(trend) {
  const sources = trend.sources.map((s) => el("span", { className: "badge", text: SOURCE_NAMES[s] || s }));
  const facts = el("p", { className: "trend-facts" }, ...sources);
  if (trend.stale) {
    facts.append(
      el("span", { className: "badge stale", text: "stale" }),
      `its source failed the last refresh; last confirmed ${ago(trend.age_secs)}`,
    );
  } else {
    facts.append(`confirmed ${ago(trend.age_secs)}`);
  }
  const write = el("button", {
    type: "button",
    className: "write",
    text: "Write a story",
    "aria-label": `Write a story about: ${trend.topic}`,
  });
  write.dataset.topic = trend.topic;
  write.addEventListener("click", () => writeStory(trend.topic));
  const actions = el("div", { className: "trend-actions" }, write);
  const url = trend.url ? safeUrl(trend.url) : null;
  if (url) {
    actions.append(
      el("a", { href: url, rel: "noopener noreferrer", target: "_blank", text: "Source", "aria-label": `Source of: ${trend.topic}` }),
    );
  }
  const item = el(
    "li",
    { className: "trend", "data-active": trend.topic === state.activeTopic ? "true" : null },
    el("span", { className: "rank", text: String(trend.rank), "aria-label": `Rank ${trend.rank}` }),
    el(
      "div",
      {},
      el("div", { className: "trend-topic", text: trend.topic }),
      trend.context ? el("p", { className: "trend-context", text: trend.context }) : null,
      facts,
    ),
    actions,
  );
  item.dataset.topic = trend.topic;
  if (trend.stale) item.dataset.stale = "true";
  return item;
}

// ---------------------------------------------------------------- the story

/** Batches streamed text into one text node. */
class StoryText {
  constructor(node) {
    this.node = node;
    this.text = document.createTextNode("");
    this.pending = "";
    this.timer = null;
    node.replaceChildren(this.text);
  }

  append(delta) {
    this.pending += delta;
    if (this.timer === null) this.timer = setTimeout(() => this.flush(), FLUSH_MS);
  }

  flush() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (!this.pending) return;
    const box = this.node;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    this.text.appendData(this.pending);
    this.pending = "";
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  replace(text) {
    this.flush();
    this.text.data = text;
  }
}

function setStatus(text, kind = "", detail = null) {
  const status = $("story-status");
  status.dataset.kind = kind;
  status.replaceChildren(text);
  if (detail) status.append(el("small", { text: detail }));
}

function readOptions() {
  const length = Number($("max-tokens").value);
  const max = maxTokens();
  if (!Number.isInteger(length) || length < 1 || (max !== null && length > max)) {
    return null;
  }
  return { style: $("style").value, max_tokens: length };
}

/** Remembers that the story `id` about `topic` was shown. */
function rememberSeen(topic, id) {
  const ids = (state.seen.get(topic) || []).filter((seen) => seen !== id);
  ids.push(id);
  state.seen.set(topic, ids.slice(-SEEN_MAX));
}

function markActive(topic) {
  state.activeTopic = topic;
  for (const item of document.querySelectorAll("#trends > li")) {
    if (item.dataset.topic === topic) item.dataset.active = "true";
    else delete item.dataset.active;
  }
}

/** Splits SSE text into complete events; returns [events, the unfinished rest]. */
function parseEvents(buffer) {
  const events = [];
  let rest = buffer;
  let cut = rest.indexOf("\n\n");
  while (cut >= 0) {
    const frame = rest.slice(0, cut);
    rest = rest.slice(cut + 2);
    let name = "message";
    const data = [];
    for (const line of frame.split("\n")) {
      if (line.startsWith(":")) continue;
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (data.length) events.push({ name, data: JSON.parse(data.join("\n")) });
    cut = rest.indexOf("\n\n");
  }
  return [events, rest];
}

/**
 * Streams a story about `topic`; with `another`, one this page has not shown yet (the server
 * answers with one written ahead when it has one).
 */
async function writeStory(topic, another = false) {
  const options = readOptions();
  if (!options) {
    setStatus(`The length must be a whole number from 1 to ${maxTokens() || "the server's limit"}.`, "error");
    $("max-tokens").focus();
    return;
  }
  if (another) options.seen = state.seen.get(topic) || [];
  if (state.writing) stopStory(true);
  clearRetry();
  const writing = { controller: new AbortController(), topic, stopped: false };
  state.writing = writing;
  markActive(topic);
  const box = $("story-text");
  const text = new StoryText(box);
  box.dataset.state = "writing";
  delete box.dataset.storyId;
  delete $("story-status").dataset.code;
  $("story-topic").textContent = topic;
  setStatus("Writing…", "busy");
  $("stop").disabled = false;
  setWriteButtons();
  if (window.matchMedia("(max-width: 56rem)").matches) {
    $("story").scrollIntoView({ block: "start" });
  }

  let response = null;
  try {
    response = await fetch("/v1/stories", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify({ topic, ...options, stream: true }),
      signal: writing.controller.signal,
      cache: "no-store",
    });
  } catch {
    response = null;
  }
  let ended = false;
  let tokens = 0;
  if (writing.stopped) return; // stopStory has said so
  if (response === null) {
    showProblem(new Problem({}));
    ended = true;
  } else if (!response.ok) {
    showProblem(await Problem.fromResponse(response));
    ended = true;
  } else {
    try {
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      while (!ended) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        const [events, rest] = parseEvents(buffer);
        buffer = rest;
        for (const event of events) {
          if (event.name === "token") {
            tokens += 1;
            text.append(event.data.text);
          } else if (event.name === "done") {
            text.replace(event.data.story);
            finishStory(event.data);
            ended = true;
          } else if (event.name === "error") {
            text.flush();
            showProblem(Problem.fromBody(event.data, 200));
            ended = true;
          }
        }
      }
      if (ended) reader.cancel().catch(() => {});
    } catch {
      // The connection broke (or a frame was garbled): reported as cut off below.
    }
  }
  text.flush();
  if (writing.stopped) return;
  if (!ended) {
    box.dataset.state = "cut-off";
    setStatus(
      "The story was cut off: the connection closed before the end. The text above is what arrived.",
      "error",
      `${tokens} token${tokens === 1 ? "" : "s"} arrived. Try again to get the whole story.`,
    );
  }
  if (state.writing === writing) {
    state.writing = null;
    $("stop").disabled = true;
  }
  setWriteButtons();
}

function showProblem(problem) {
  const box = $("story-text");
  box.dataset.state = "error";
  const said = describe(problem);
  const detail = problem.requestId ? `Code ${problem.code}, request id ${problem.requestId}.` : null;
  if (said.retryAfter) countdown(said.text, said.kind, said.retryAfter, detail);
  else setStatus(said.text, said.kind, detail);
  $("story-status").dataset.code = problem.code;
  if (problem.code === "unauthorized") askForKey();
}

function countdown(text, kind, seconds, detail) {
  clearRetry();
  let left = seconds;
  const tick = () => {
    if (left > 0) {
      setStatus(`${text} Try again in ${left} s.`, kind, detail);
      left -= 1;
    } else {
      setStatus(`${text} You can try again now.`, kind, detail);
      clearRetry();
    }
  };
  tick();
  state.retryTimer = setInterval(tick, 1000);
}

function clearRetry() {
  if (state.retryTimer !== null) clearInterval(state.retryTimer);
  state.retryTimer = null;
}

function finishStory(story) {
  const box = $("story-text");
  box.dataset.state = "done";
  box.dataset.storyId = story.id;
  if (state.activeTopic !== null) rememberSeen(state.activeTopic, story.id);
  const seed = story.seed === null ? null : `Seed ${story.seed}: the same seed and settings give the same story.`;
  if (story.variant === "ready") {
    setStatus(`Done: another story, written ahead for this trend, ${story.tokens} tokens.`, "ok", seed);
  } else if (story.cached) {
    setStatus(
      `Done: this story was already written (from the story cache), ${story.tokens} tokens. “Another story” writes a new one.`,
      "ok",
      seed,
    );
  } else {
    const why = FINISH_REASONS[story.finish_reason] || story.finish_reason;
    setStatus(`Done: ${story.tokens} tokens (${why}).`, "ok", seed);
  }
  renderTimings(story);
  loadCached();
}

function renderTimings(story) {
  const t = story.timings;
  if (story.cached) {
    $("t-queue").textContent = "none (cached)";
    $("t-ttft").textContent = "none (cached)";
    $("t-speed").textContent = "–";
  } else {
    $("t-queue").textContent = ms(t.queue_ms);
    $("t-ttft").textContent = ms(t.ttft_ms);
    const decodeMs = t.generation_ms - t.ttft_ms;
    $("t-speed").textContent =
      story.tokens > 1 && decodeMs > 0 ? `${((story.tokens - 1) / (decodeMs / 1000)).toFixed(1)} tokens/s` : "–";
  }
  $("t-tokens").textContent = `${story.tokens} (prompt ${story.prompt_tokens})`;
  $("t-total").textContent = ms(t.total_ms);
}

/** Stops the story being written: the connection closes and the server cancels it. */
function stopStory(replaced = false) {
  const writing = state.writing;
  if (!writing) return;
  writing.stopped = true;
  writing.controller.abort();
  state.writing = null;
  $("stop").disabled = true;
  setWriteButtons();
  if (!replaced) {
    $("story-text").dataset.state = "stopped";
    setStatus("Stopped. The server has stopped writing it too.", "warn");
  }
}

// ---------------------------------------------------------------- stories already written

async function loadCached() {
  const meta = $("cached-meta");
  const body = await fetchList("/v1/stories/trending", meta);
  if (!body) return;
  const ready = body.stories.filter((s) => s.status === "ready").length;
  meta.textContent = body.stories.length
    ? `Written in the background for the top trends: ${ready} of ${body.stories.length} ready.`
    : "No trends, so no stories yet.";
  const list = $("cached-stories");
  const open = new Set([...list.querySelectorAll("details[open]")].map((d) => d.dataset.topic));
  list.replaceChildren(...body.stories.map((entry) => cachedItem(entry, open)));
}

function cachedItem(entry, open) {
  if (entry.status !== "ready" || !entry.story) {
    return el(
      "li",
      { className: "cached-item" },
      el("span", { text: `${entry.rank}. ${entry.topic} ` }),
      el("span", {
        className: "pending",
        text: entry.status === "pending" ? "(being written…)" : "(not written in the background)",
      }),
    );
  }
  const details = el(
    "details",
    { open: open.has(entry.topic) },
    el("summary", { text: `${entry.rank}. ${entry.topic} (${entry.story.style.replace("_", " ")}, ${entry.story.tokens} tokens)` }),
    el("p", { text: entry.story.story }),
  );
  details.dataset.topic = entry.topic;
  return el("li", { className: "cached-item" }, details);
}

// ---------------------------------------------------------------- API key

function askForKey() {
  const box = $("key-box");
  if (!box.open) box.open = true;
}

function saveKey(event) {
  event.preventDefault();
  state.apiKey = $("api-key").value.trim();
  if (state.apiKey) sessionStorage.setItem(KEY_STORAGE, state.apiKey);
  else sessionStorage.removeItem(KEY_STORAGE);
  setStatus(state.apiKey ? "Key saved for this tab." : "Key removed.", "ok");
  loadTrends();
  loadCached();
}

// ---------------------------------------------------------------- start

function start() {
  $("api-key").value = state.apiKey;
  $("key-form").addEventListener("submit", saveKey);
  $("story-options").addEventListener("submit", (event) => event.preventDefault());
  $("stop").addEventListener("click", () => stopStory());
  $("another").addEventListener("click", () => writeStory(state.activeTopic, true));
  $("style").addEventListener("change", () => applyLengthLimit());
  $("refresh-trends").addEventListener("click", () => loadTrends());
  $("refresh-cached").addEventListener("click", () => loadCached());
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.writing) {
      event.preventDefault();
      stopStory();
    }
  });
  checkReady();
  loadTrends();
  loadCached();
  setInterval(loadTrends, TRENDS_POLL_MS);
  setInterval(loadCached, CACHED_POLL_MS);
}

start();
