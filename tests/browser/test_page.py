"""The web page at `/`, in headless Chromium, against the real server with the tiny model and a
fake Hacker News upstream: it loads without console errors, lists the trends (stale ones
marked), streams a story to the end, stops one midway (the server cancels it), shows the
overloaded state with its retry time, renders a script-injection title as text, and explains
a model that cannot be loaded and a stream that is cut off. Screenshots (desktop and phone
width) are saved under target/browser-artifacts/.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import threading
import time
import urllib.request

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from harness import ARTIFACTS, TINY_MODEL, TINY_MODEL_EXPLICIT, http_get, model_config, post_json

INJECTION = "<img src=x onerror=alert(1)>"
FILE_TRENDS = [
    {"topic": "Northern lights seen far south", "score": 80, "url": "https://news.example.com/aurora",
     "context": "Solar storm sends auroras to low latitudes"},
    {"topic": INJECTION, "score": 60, "context": "A title that tries to inject a script"},
    {"topic": "City marathon record", "score": 40, "url": "javascript:alert(2)",
     "context": "A link that is not http(s) is not shown"},
]
HN_TOPICS = ["Rust 2.0 released", "A lighthouse keeper's diary, digitized", "Ask HN: What are you reading this winter?"]
WAIT_S = 30
RETRY_AFTER_S = 3


def wait(driver, condition, timeout: float = WAIT_S, message: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message)


def severe_console_entries(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def trend_items(driver) -> list[dict]:
    return driver.execute_script(
        """return [...document.querySelectorAll('#trends > li')].map(li => ({
            topic: li.querySelector('.trend-topic').textContent,
            rank: li.querySelector('.rank').textContent,
            context: (li.querySelector('.trend-context') || {}).textContent || null,
            facts: li.querySelector('.trend-facts').textContent,
            stale: li.dataset.stale === 'true',
            link: (li.querySelector('a') || {}).href || null,
        }))"""
    )


def write_button(driver, topic: str):
    for button in driver.find_elements(By.CSS_SELECTOR, "#trends button.write"):
        if button.get_attribute("data-topic") == topic:
            return button
    raise AssertionError(f"no Write button for {topic!r}")


def story_state(driver) -> str | None:
    return driver.find_element(By.ID, "story-text").get_attribute("data-state")


def wait_story(driver, expected: str) -> None:
    """Until the story has ended; it must have ended as `expected` (with the status shown)."""
    wait(driver, lambda d: story_state(d) not in (None, "writing"), message=f"story {expected}")
    state = story_state(driver)
    status = driver.find_element(By.ID, "story-status").text
    assert state == expected, f"story ended {state}, not {expected}: {status}"


def set_options(driver, style: str, max_tokens: int) -> None:
    Select(driver.find_element(By.ID, "style")).select_by_value(style)
    field = driver.find_element(By.ID, "max-tokens")
    field.clear()
    field.send_keys(str(max_tokens))


def user_generations(metrics: str, outcome: str) -> float:
    sample = f'trendstory_story_generations_total{{priority="user",outcome="{outcome}"}}'
    for line in metrics.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def screenshot(driver, name: str, width: int, height: int, mobile: bool) -> None:
    """A screenshot of the whole page at this viewport size, as a test artifact."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )
    try:
        time.sleep(0.3)  # layout after the viewport change
        full = driver.execute_script("return document.documentElement.scrollHeight")
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": max(full, height), "scale": 1},
            },
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@pytest.fixture(scope="module")
def server(start_server, fake_hn):
    trends_file = start_server.workdir / "trends.json"
    trends_file.write_text(json.dumps(FILE_TRENDS))
    # The explicit-attention model: the fused one writes 250 tokens so fast that the whole
    # story can arrive in one read, and the streaming test could not see it grow.
    config = model_config(
        TINY_MODEL_EXPLICIT,
        extra_inference=f"max_batch_size = 1\nmax_queue = 0\nretry_after_secs = {RETRY_AFTER_S}\n",
    ) + (
        "[stories.trending]\nenabled = true\ntop_k = 3\ncheck_interval_secs = 1\n"
        "[trends]\nrefresh_interval_secs = 1\nttl_secs = 600\n"
        f'[trends.sources.hackernews]\nenabled = true\nbase_url = "{fake_hn.base_url}"\nlimit = 3\n'
        f'[trends.sources.file]\nenabled = true\npath = "{trends_file}"\n'
    )
    server = start_server("page", config)
    # Both sources have answered: the ranking holds all six trends.
    deadline = time.monotonic() + WAIT_S
    while len(json.loads(http_get(f"{server.base}/v1/trends")[2])["trends"]) < 6:
        assert time.monotonic() < deadline, "the trends never included both sources"
        time.sleep(0.1)
    return server


@pytest.fixture
def page(browser, server):
    """The browser on the page of `server` (loaded once; the tests go on from its state)."""
    if not browser.current_url.startswith(server.base):
        browser.get(f"{server.base}/")
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#trends > li")) == 6, message="trends listed")
        wait(browser, lambda d: d.find_element(By.ID, "server-status").get_attribute("data-state") == "ready")
    return browser


def test_the_page_and_its_assets_have_a_strict_policy(server):
    status, headers, body = http_get(f"{server.base}/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    policy = headers["content-security-policy"]
    for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"]:
        assert directive in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert b"/static/app.js" in body
    for path, content_type in [("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")]:
        status, headers, _ = http_get(f"{server.base}{path}")
        assert status == 200 and headers["content-type"].startswith(content_type), path


def test_the_page_loads_without_console_errors_and_lists_the_trends(page):
    assert severe_console_entries(page) == []
    trends = {t["topic"]: t for t in trend_items(page)}
    assert set(trends) == {f["topic"] for f in FILE_TRENDS} | set(HN_TOPICS)
    assert sorted(int(t["rank"]) for t in trends.values()) == [1, 2, 3, 4, 5, 6]
    aurora = trends["Northern lights seen far south"]
    assert aurora["context"] == "Solar storm sends auroras to low latitudes"
    assert "Local list" in aurora["facts"] and "confirmed" in aurora["facts"]
    assert aurora["link"] == "https://news.example.com/aurora"
    assert trends["Rust 2.0 released"]["context"] == "blog.example.org"
    assert "Hacker News" in trends["Rust 2.0 released"]["facts"]
    assert trends["City marathon record"]["link"] is None, "javascript: URLs are not linked"
    assert not any(t["stale"] for t in trends.values())
    meta = page.find_element(By.ID, "trends-meta").text
    assert meta.startswith("6 trends · Fresh"), meta
    assert "random weights" in page.find_element(By.ID, "model").text
    # Beside the story, not only in the footer: noise is what this model writes.
    notice = page.find_element(By.ID, "random-notice")
    assert notice.is_displayed() and "random weights" in notice.text, notice.text


def test_the_script_injection_title_is_shown_as_text(page):
    trends = {t["topic"] for t in trend_items(page)}
    assert INJECTION in trends
    assert page.execute_script("return document.querySelectorAll('img').length") == 0
    write_button(page, INJECTION).click()
    wait_story(page, "done")
    assert page.find_element(By.ID, "story-topic").text == INJECTION
    assert page.execute_script("return document.querySelectorAll('img').length") == 0
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text  # noqa: B018 (raises when no alert is open)


# The tiny model writes 250 tokens in well under 100 ms, about two of the page's 40 ms text
# flushes: whether a second one comes before the end was a race. Like a slow network, this
# hands the page each answer of /v1/stories 64 bytes at a time, 2 ms apart (about 0.5 s for
# a story), so the page's own pacing is what the test sees.
SLOW_STORY_STREAMS = """
window.__realFetch = window.fetch;
window.fetch = async (resource, init) => {
    const response = await window.__realFetch(resource, init);
    if (!String(resource).includes('/v1/stories') || !response.body) return response;
    const reader = response.body.getReader();
    const body = new ReadableStream({
        async pull(controller) {
            const {value, done} = await reader.read();
            if (done) { controller.close(); return; }
            for (let i = 0; i < value.length; i += 64) {
                controller.enqueue(value.slice(i, i + 64));
                await new Promise(resolve => setTimeout(resolve, 2));
            }
        },
        cancel(reason) { return reader.cancel(reason); },
    });
    return new Response(body, {status: response.status, statusText: response.statusText, headers: response.headers});
};
"""


def test_a_story_streams_into_the_page_to_the_end(page):
    set_options(page, "fairy_tale", 250)
    page.execute_script(
        """const box = document.getElementById('story-text');
        window.__lengths = [];
        window.__observer = new MutationObserver(() => {
            if (box.dataset.state === 'writing') window.__lengths.push(box.textContent.length);
        });
        window.__observer.observe(box, {childList: true, characterData: true, subtree: true});"""
        + SLOW_STORY_STREAMS
    )
    try:
        button = write_button(page, "Northern lights seen far south")
        page.execute_script("arguments[0].focus()", button)
        button.send_keys(Keys.ENTER)  # the keyboard works
        wait_story(page, "done")
    finally:
        page.execute_script("window.fetch = window.__realFetch; window.__observer.disconnect()")
    lengths = [n for n in page.execute_script("return window.__lengths") if n > 0]
    final = len(page.find_element(By.ID, "story-text").get_attribute("textContent"))
    assert final > 0
    assert len(set(lengths)) >= 2 and min(lengths) < final, f"not streamed in steps: {lengths} of {final}"
    status = page.find_element(By.ID, "story-status").text
    assert status.startswith("Done: 250 tokens"), status
    assert page.find_element(By.ID, "t-tokens").text.startswith("250 ")
    assert page.find_element(By.ID, "t-ttft").text.endswith("ms")
    assert page.find_element(By.ID, "t-queue").text.endswith("ms")
    assert page.find_element(By.ID, "t-speed").text.endswith("tokens/s")
    assert page.find_element(By.ID, "stop").get_attribute("disabled") is not None
    # The background stories of the top trends are listed.
    page.find_element(By.ID, "refresh-cached").click()
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#cached-stories details")) >= 1,
         message="a cached story listed")
    assert severe_console_entries(page) == []


def story_status(server, body: dict) -> tuple[int, str | None]:
    """POSTs a streamed story and hangs up as soon as the status arrives (the server then
    cancels the generation); returns the status and, for an error, its code."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT_S)
    try:
        connection.request("POST", "/v1/stories", json.dumps({**body, "stream": True}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        code = json.loads(response.read())["error"]["code"] if response.status >= 400 else None
        return response.status, code
    finally:
        connection.close()


def wait_idle(server) -> None:
    deadline = time.monotonic() + WAIT_S
    while server.readyz()["inference"]["in_flight"] > 0:
        assert time.monotonic() < deadline, "generations still in flight"
        time.sleep(0.05)


def post_story(server, body: dict) -> dict:
    """POSTs a story request and returns its JSON answer (a 200)."""
    request = urllib.request.Request(f"{server.base}/v1/stories", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
        return json.loads(response.read())


def test_the_length_limit_is_the_servers_cap_and_a_long_prompt_gets_what_fits(page, server):
    settings = json.loads(http_get(f"{server.base}/page.json")[2])
    field, hint = page.find_element(By.ID, "max-tokens"), page.find_element(By.ID, "max-tokens-hint")
    for style in ("news", "poem"):
        Select(page.find_element(By.ID, "style")).select_by_value(style)
        limit = settings["max_tokens"][style]
        # The configured cap (`inference.max_new_tokens`), whatever the style or the trend.
        assert limit == 512, settings
        assert field.get_attribute("max") == str(limit)
        assert hint.text.startswith(f"1 to {limit} tokens"), hint.text
    # The tiny model's 512-position context leaves less than that after any prompt: every
    # listed trend is served, each story written up to what fits and saying so.
    for n, topic in enumerate(t["topic"] for t in trend_items(page)):
        story = post_story(server, {"topic": topic, "style": "poem", "max_tokens": limit, "seed": n})
        assert story["max_tokens"] == 512 - story["prompt_tokens"] < limit, story
        cut = story["tokens"] == story["max_tokens"]
        assert story["finish_reason"] == ("length" if cut else "stop"), story
    status, code = story_status(server, {"topic": topic, "style": "poem", "max_tokens": limit + 1})
    assert (status, code) == (400, "out_of_range")
    wait_idle(server)
    set_options(page, "poem", limit + 1)
    write_button(page, trend_items(page)[0]["topic"]).click()
    status = page.find_element(By.ID, "story-status").text
    assert status == f"The length must be a whole number from 1 to {limit}.", status


def test_another_story_is_new_and_the_cached_one_stays(page, server):
    deadline = time.monotonic() + WAIT_S
    while True:  # pre-generation has written the top trend's story
        top = json.loads(http_get(f"{server.base}/v1/stories/trending?limit=1")[2])["stories"][0]
        if top["status"] == "ready":
            break
        assert time.monotonic() < deadline, "the top trend's story was never written"
        time.sleep(0.1)
    settings = json.loads(http_get(f"{server.base}/page.json")[2])
    set_options(page, settings["default_style"], settings["default_max_tokens"])
    story_box = page.find_element(By.ID, "story-text")
    another = page.find_element(By.ID, "another")

    write_button(page, top["topic"]).click()
    wait_story(page, "done")
    assert story_box.get_attribute("data-story-id") == top["story"]["id"]
    assert "already written" in page.find_element(By.ID, "story-status").text
    assert another.is_enabled()

    another.click()
    wait_story(page, "done")
    new_id = story_box.get_attribute("data-story-id")
    assert new_id != top["story"]["id"]
    status = page.find_element(By.ID, "story-status").text
    assert status.startswith("Done: ") and "already written" not in status and "Seed " in status, status
    assert page.find_element(By.ID, "story-topic").text == top["topic"]
    # And another: not one this page has shown.
    another.click()
    wait_story(page, "done")
    third_id = story_box.get_attribute("data-story-id")
    assert third_id not in (new_id, top["story"]["id"]), third_id

    # The pre-written story stays for everyone else, and for this page's next plain request.
    again = json.loads(http_get(f"{server.base}/v1/stories/trending?limit=1")[2])["stories"][0]
    assert again["story"]["id"] == top["story"]["id"]
    write_button(page, top["topic"]).click()
    wait_story(page, "done")
    assert story_box.get_attribute("data-story-id") == top["story"]["id"]
    assert severe_console_entries(page) == []


def test_stale_trends_are_marked(page, server, fake_hn):
    fake_hn.failing = True
    deadline = time.monotonic() + WAIT_S
    while not any(t["stale"] for t in json.loads(http_get(f"{server.base}/v1/trends")[2])["trends"]):
        assert time.monotonic() < deadline, "the failing source's trends never went stale"
        time.sleep(0.1)
    page.find_element(By.ID, "refresh-trends").click()
    wait(page, lambda d: any(t["stale"] for t in trend_items(d)), message="stale trends marked")
    trends = {t["topic"]: t for t in trend_items(page)}
    for topic in HN_TOPICS:
        assert trends[topic]["stale"] and "stale" in trends[topic]["facts"], topic
        assert "its source failed the last refresh" in trends[topic]["facts"]
    for entry in FILE_TRENDS:
        assert not trends[entry["topic"]]["stale"]
    assert "marked stale" in page.find_element(By.ID, "trends-meta").text
    # The screenshots of the README and the artifacts: a finished story, stale trends marked.
    page.find_element(By.ID, "cached-stories").find_element(By.CSS_SELECTOR, "details summary").click()
    screenshot(page, "page-desktop", 1280, 900, mobile=False)
    screenshot(page, "page-phone", 390, 844, mobile=True)


def test_stop_midway_cancels_the_story_on_the_server(page, server):
    # Stop as soon as the first text shows. The tiny model writes a whole story in about a
    # second, so a browser slowed down by a busy machine may see the first text only after
    # the server has finished; such a try proves nothing and is made again (a new length,
    # so that the story cache does not answer it).
    outcomes = []
    for max_tokens in (250, 249, 248):
        metrics = server.metrics()
        before = {o: user_generations(metrics, o) for o in ("cancelled", "ok")}
        set_options(page, "mystery", max_tokens)
        page.execute_script(
            """const box = document.getElementById('story-text');
            const observer = new MutationObserver(() => {
                if (box.dataset.state === 'writing' && box.textContent.length > 0) {
                    observer.disconnect();
                    document.getElementById('stop').click();
                }
            });
            observer.observe(box, {childList: true, characterData: true, subtree: true});"""
        )
        write_button(page, "Rust 2.0 released").click()
        wait_story(page, "stopped")
        assert page.find_element(By.ID, "story-status").text.startswith("Stopped.")
        assert len(page.find_element(By.ID, "story-text").get_attribute("textContent")) > 0
        deadline = time.monotonic() + 10
        while True:
            metrics = server.metrics()
            outcome = next((o for o in before if user_generations(metrics, o) > before[o]), None)
            if outcome is not None:
                break
            assert time.monotonic() < deadline, "the stopped story never ended on the server"
            time.sleep(0.05)
        outcomes.append(outcome)
        if outcome == "cancelled":
            break
    assert outcomes[-1] == "cancelled", f"the server finished every stopped story first: {outcomes}"
    assert server.readyz()["inference"]["in_flight"] == 0, "the slot is free again"


def test_the_overloaded_state_shows_when_to_retry(page, server):
    # Other clients keep the one slot (max_batch_size 1, no queue) busy, back to back.
    stop = threading.Event()

    def hold(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            status = post_json(
                f"{server.base}/v1/stories",
                {"topic": f"Holder {worker}", "max_tokens": 250, "seed": worker * 100000 + n},
            )
            if status != 200:
                time.sleep(0.005)

    holders = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(3)]
    for thread in holders:
        thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while server.readyz()["inference"]["in_flight"] == 0:
            assert time.monotonic() < deadline, "the holders never took the slot"
            time.sleep(0.01)
        set_options(page, "poem", 20)
        status = page.find_element(By.ID, "story-status")
        for _ in range(10):  # the slot is free for a moment between two holders
            write_button(page, "City marathon record").click()
            wait(page, lambda d: story_state(d) in ("done", "error"), message="an answer")
            if status.get_attribute("data-code") == "overloaded":
                break
        assert status.get_attribute("data-code") == "overloaded"
        text = status.text
        assert "the server is overloaded" in text, text
        assert re.search(rf"Try again in [1-{RETRY_AFTER_S}] s", text), text
        screenshot(page, "page-overloaded", 1280, 900, mobile=False)
        wait(page, lambda d: "You can try again now." in status.text, timeout=RETRY_AFTER_S + 3)
    finally:
        stop.set()
        for thread in holders:
            thread.join(timeout=WAIT_S)


def test_a_model_that_cannot_be_loaded_is_explained(browser, start_server, tmp_path):
    # The model folder passes the start-up check but its weights file is gone: the worker
    # fails to load it and keeps retrying; /readyz says why.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for item in TINY_MODEL.iterdir():
        if item.is_file() and item.name != "model.onnx.data":
            (broken / item.name).write_bytes(item.read_bytes())
    server = start_server("model-missing", model_config(broken), ready=False)
    browser.get(f"{server.base}/")
    notice = browser.find_element(By.ID, "notice")
    wait(browser, lambda d: notice.is_displayed() and "could not be loaded" in notice.text, message="notice")
    assert "model.onnx.data" in notice.text
    assert browser.find_element(By.ID, "server-status").text == "Not ready"
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#trends button.write")) > 0)
    assert all(b.get_attribute("disabled") is not None
               for b in browser.find_elements(By.CSS_SELECTOR, "#trends button.write"))
    screenshot(browser, "page-model-missing", 1280, 900, mobile=False)


def test_a_stream_cut_off_is_explained(browser, start_server):
    server = start_server("cut-off", model_config())
    browser.get(f"{server.base}/")
    wait(browser, lambda d: d.find_element(By.ID, "server-status").get_attribute("data-state") == "ready")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#trends button.write"), message="trends listed")
    set_options(browser, "news", 250)
    browser.execute_script(
        """window.__firstText = new Promise(resolve => {
            const box = document.getElementById('story-text');
            const observer = new MutationObserver(() => {
                if (box.dataset.state === 'writing' && box.textContent.length > 0) {
                    observer.disconnect();
                    resolve();
                }
            });
            observer.observe(box, {childList: true, characterData: true, subtree: true});
        });"""
    )
    browser.find_element(By.CSS_SELECTOR, "#trends button.write").click()
    browser.execute_async_script("window.__firstText.then(arguments[arguments.length - 1])")
    server.kill()  # the server dies mid-story
    wait_story(browser, "cut-off")
    status = browser.find_element(By.ID, "story-status").text
    assert "cut off" in status and "arrived" in status, status
    assert len(browser.find_element(By.ID, "story-text").get_attribute("textContent")) > 0


def test_a_server_with_api_keys_asks_for_one(browser, start_server):
    server = start_server("api-key", model_config() + '[api]\napi_keys = ["page-test-key"]\n')
    browser.get(f"{server.base}/")
    wait(browser, lambda d: "API key" in d.find_element(By.ID, "trends-meta").text, message="key asked for")
    assert browser.find_element(By.ID, "key-box").get_attribute("open") is not None
    field = browser.find_element(By.ID, "api-key")
    field.send_keys("page-test-key")
    field.send_keys(Keys.ENTER)
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#trends > li")) > 0, message="trends with the key")
    assert browser.execute_script("return sessionStorage.getItem('trendstory.apiKey')") == "page-test-key"
