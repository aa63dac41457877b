//! The story API over real HTTP on 127.0.0.1, through the same `server::run` as `main`,
//! on the tiny model: response shapes, SSE, coalescing, the cache, cancellation, overload,
//! pre-generation, access control, and the OpenAPI document.

mod common;

use std::time::Duration;

use actix_web::http::header;
use futures_util::StreamExt;
use serde_json::{json, Value};

use common::{
    client, get_json, metric, parse_sse, post_story, start_server, tiny_server_config, SseEvent,
};

/// Keys every story answer has, in any order.
const STORY_KEYS: [&str; 13] = [
    "id",
    "topic",
    "trend",
    "style",
    "story",
    "model",
    "prompt_tokens",
    "max_tokens",
    "tokens",
    "finish_reason",
    "cached",
    "seed",
    "timings",
];
const TIMING_KEYS: [&str; 6] = [
    "trend_lookup_ms",
    "queue_ms",
    "prefill_ms",
    "ttft_ms",
    "generation_ms",
    "total_ms",
];

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    names.sort();
    names
}

async fn metrics(base: &str) -> String {
    let mut response = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    String::from_utf8(response.body().limit(1 << 22).await.unwrap().to_vec()).unwrap()
}

fn generations(text: &str, outcome: &str) -> f64 {
    metric(
        text,
        &format!("trendstory_story_generations_total{{priority=\"user\",outcome=\"{outcome}\"}}"),
    )
}

/// Reads SSE events one by one from a streaming response.
struct SseReader {
    body: futures_util::stream::LocalBoxStream<
        'static,
        Result<actix_web::web::Bytes, awc::error::PayloadError>,
    >,
    buffer: String,
}

impl SseReader {
    fn new<S>(body: S) -> Self
    where
        S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>>
            + 'static,
    {
        Self {
            body: body.boxed_local(),
            buffer: String::new(),
        }
    }

    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                if frame.starts_with(':') {
                    continue;
                }
                return parse_sse(&frame).into_iter().next();
            }
            let chunk = self.body.next().await?.expect("body chunk");
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }

    /// Every remaining event.
    async fn rest(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event().await {
            events.push(event);
        }
        events
    }
}

/// Deltas joined, and the final event.
fn story_of(events: &[SseEvent]) -> (String, &SseEvent) {
    let (last, tokens) = events.split_last().expect("events");
    let text = tokens
        .iter()
        .map(|e| {
            assert_eq!(e.event, "token", "{e:?}");
            e.data["text"].as_str().unwrap().to_string()
        })
        .collect();
    (text, last)
}

async fn open_stream(base: &str, body: Value) -> SseReader {
    let response = client()
        .post(format!("{base}/v1/stories"))
        .insert_header((header::ACCEPT, "text/event-stream"))
        .send_json(&body)
        .await
        .expect("stream request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "text/event-stream"
    );
    SseReader::new(response)
}

#[actix_web::test]
async fn every_endpoint_answers_with_its_shape() {
    let base = start_server(tiny_server_config()).await;

    let (status, story) = post_story(
        &base,
        json!({"topic": "Tides of Saturn", "max_tokens": 12, "seed": 3, "style": "poem"}),
    )
    .await;
    assert_eq!(status, 200, "{story}");
    assert_eq!(keys(&story), sorted(&STORY_KEYS));
    assert_eq!(keys(&story["timings"]), sorted(&TIMING_KEYS));
    assert_eq!(story["topic"], "Tides of Saturn");
    assert_eq!(story["style"], "poem");
    assert_eq!(story["tokens"], 12);
    assert_eq!(story["finish_reason"], "length");
    assert_eq!(story["cached"], false);
    assert_eq!(story["seed"], 3);
    assert!(story["trend"].is_null(), "not a current trend");
    assert!(story["prompt_tokens"].as_u64().unwrap() > 10);
    assert!(story["model"].as_str().unwrap().contains("random weights"));

    // No topic: the top trend, carried with its rank and sources.
    let (status, top) = post_story(&base, json!({"max_tokens": 4})).await;
    assert_eq!(status, 200, "{top}");
    let (_, trends) = get_json(&base, "/v1/trends?limit=3").await;
    assert_eq!(top["topic"], trends["trends"][0]["topic"]);
    assert_eq!(top["trend"]["rank"], 1);
    assert_eq!(top["trend"]["sources"], json!(["file"]));
    assert_eq!(
        keys(&trends),
        sorted(&["freshness", "built_at", "age_secs", "trends"])
    );
    assert_eq!(trends["trends"].as_array().unwrap().len(), 3);
    assert_eq!(
        keys(&trends["trends"][0]),
        sorted(&[
            "topic",
            "rank",
            "score",
            "sources",
            "url",
            "context",
            "first_seen",
            "last_seen",
            "fetched_at",
            "age_secs",
            "stale"
        ])
    );
    let (status, only_file) = get_json(&base, "/v1/trends?source=file&limit=1").await;
    assert_eq!(
        (status, only_file["trends"].as_array().unwrap().len()),
        (200, 1)
    );
    let (status, none) = get_json(&base, "/v1/trends?source=reddit").await;
    assert_eq!((status, none["trends"].as_array().unwrap().len()), (200, 0));

    // GET: the same request as a URL, cacheable by HTTP caches.
    let mut response = client()
        .get(format!(
            "{base}/v1/stories?topic=Tides%20of%20Saturn&max_tokens=12&seed=3&style=poem"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get(header::CACHE_CONTROL).unwrap(),
        "public, max-age=600"
    );
    let again: Value = response.json().limit(1 << 20).await.unwrap();
    assert_eq!(again["story"], story["story"], "same request, same story");
    assert_eq!(again["cached"], true);
    assert_eq!(again["id"], story["id"]);
    assert!(response.headers().get("x-request-id").is_some());

    let (status, trending) = get_json(&base, "/v1/stories/trending?limit=2").await;
    assert_eq!(status, 200);
    let entries = trending["stories"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        keys(&entries[0]),
        sorted(&["rank", "topic", "status", "story"])
    );
    assert_eq!(
        entries[0]["status"], "not_scheduled",
        "pre-generation is off here"
    );

    let (status, health) = get_json(&base, "/healthz").await;
    let model = "tiny (random weights: output is noise)";
    assert_eq!(
        (status, health),
        (
            200,
            json!({"status": "ok", "model": model, "random_weights": true})
        )
    );
    let (status, ready) = get_json(&base, "/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["warmed_up"], true);
    assert_eq!(ready["shutting_down"], false);

    let text = metrics(&base).await;
    for family in [
        "trendstory_http_request_duration_seconds_bucket{",
        "trendstory_inference_queue_depth ",
        "trendstory_inference_batch_size ",
        "trendstory_inference_generated_tokens_total ",
        "trendstory_inference_time_to_first_token_seconds_bucket{",
        "trendstory_inference_prefill_tokens_per_second_bucket{",
        "trendstory_inference_decode_tokens_per_second_bucket{",
        "trendstory_story_cache_lookups_total{result=\"hit\"}",
        "trendstory_story_cache_lookups_total{result=\"miss\"}",
        "trendstory_trend_source_up{source=\"file\"}",
        "trendstory_trend_source_age_seconds{source=\"file\"}",
        "trendstory_inference_worker_restarts_total ",
    ] {
        assert!(text.contains(family), "metrics lack {family}:\n{text}");
    }
    assert!(metric(&text, "trendstory_inference_generated_tokens_total") >= 16.0);
    assert!(
        text.contains("route=\"/v1/stories\",method=\"POST\",status=\"200\""),
        "request durations are labelled by route pattern"
    );
}

#[actix_web::test]
async fn sse_deltas_make_the_final_story() {
    let base = start_server(tiny_server_config()).await;
    let mut stream = open_stream(
        &base,
        json!({"topic": "Moon city", "max_tokens": 40, "seed": 9}),
    )
    .await;
    let events = stream.rest().await;
    let (text, last) = story_of(&events);
    assert_eq!(last.event, "done");
    assert_eq!(keys(&last.data), sorted(&STORY_KEYS));
    assert_eq!(last.data["story"], text.as_str());
    assert_eq!(last.data["tokens"], 40);
    // `"stream": true` in the body does the same; the seed makes it the cached story.
    let mut response = client()
        .post(format!("{base}/v1/stories"))
        .send_json(&json!({"topic": "Moon city", "max_tokens": 40, "seed": 9, "stream": true}))
        .await
        .unwrap();
    let body = response.body().limit(1 << 20).await.unwrap();
    let events = parse_sse(std::str::from_utf8(&body).unwrap());
    let (cached_text, last) = story_of(&events);
    assert_eq!(cached_text, text);
    assert_eq!(last.data["cached"], true);
}

#[actix_web::test]
async fn identical_requests_share_one_generation_and_late_joiners_get_everything() {
    let base = start_server(tiny_server_config()).await;
    let body = json!({"topic": "Lighthouse", "max_tokens": 300, "seed": 11});
    let before = metrics(&base).await;

    // N identical requests at once: one generation.
    let answers =
        futures_util::future::join_all((0..5).map(|_| post_story(&base, body.clone()))).await;
    let first = &answers[0].1;
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["story"], first["story"]);
        assert_eq!(answer["id"], first["id"], "one story, shared");
    }
    let after = metrics(&base).await;
    assert_eq!(generations(&after, "ok") - generations(&before, "ok"), 1.0);
    let coalesced = |t: &str| {
        metric(
            t,
            "trendstory_story_cache_lookups_total{result=\"coalesced\"}",
        )
    };
    let hits = |t: &str| metric(t, "trendstory_story_cache_lookups_total{result=\"hit\"}");
    assert_eq!(
        coalesced(&after) - coalesced(&before) + hits(&after) - hits(&before),
        4.0,
        "the other four joined the flight (or, if it had ended, hit the cache)"
    );

    // A cached request does not touch the inference pool.
    let (status, cached) = post_story(&base, body.clone()).await;
    assert_eq!((status, &cached["cached"]), (200, &json!(true)));
    let later = metrics(&base).await;
    assert_eq!(generations(&later, "ok"), generations(&after, "ok"));
    assert_eq!(
        metric(&later, "trendstory_inference_generated_tokens_total"),
        metric(&after, "trendstory_inference_generated_tokens_total")
    );

    // A streaming joiner that arrives after the first deltas still gets the whole text.
    let fresh = json!({"topic": "Lighthouse", "max_tokens": 300, "seed": 12});
    let mut early = open_stream(&base, fresh.clone()).await;
    let first_delta = early.next_event().await.unwrap();
    assert_eq!(first_delta.event, "token");
    let mut late = open_stream(&base, fresh).await;
    let mut early_events = vec![first_delta];
    early_events.extend(early.rest().await);
    let late_events = late.rest().await;
    let (early_text, early_done) = story_of(&early_events);
    let (late_text, late_done) = story_of(&late_events);
    assert_eq!(late_text, early_text);
    assert_eq!(
        late_done.data["id"], early_done.data["id"],
        "one generation"
    );
    assert_eq!(late_done.data["story"], early_text.as_str());
}

#[actix_web::test]
async fn a_client_that_disconnects_frees_its_slot() {
    let base = start_server(tiny_server_config()).await;
    let before = metrics(&base).await;
    let mut stream = open_stream(
        &base,
        json!({"topic": "Long tale", "max_tokens": 300, "seed": 5}),
    )
    .await;
    assert_eq!(stream.next_event().await.unwrap().event, "token");
    let (_, ready) = get_json(&base, "/readyz").await;
    assert_eq!(ready["inference"]["in_flight"], 1);
    drop(stream);
    let freed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, ready) = get_json(&base, "/readyz").await;
            if ready["inference"]["in_flight"] == 0 {
                return;
            }
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the slot was not freed after the disconnect");
    let after = metrics(&base).await;
    assert_eq!(
        generations(&after, "cancelled") - generations(&before, "cancelled"),
        1.0
    );
    assert_eq!(generations(&after, "ok"), generations(&before, "ok"));
}

#[actix_web::test]
async fn overload_is_refused_with_retry_after_and_recovers() {
    let mut config = tiny_server_config();
    config.inference.max_batch_size = 1;
    config.inference.max_queue = 0;
    config.inference.retry_after_secs = 2;
    let base = start_server(config).await;
    let mut holder = open_stream(
        &base,
        json!({"topic": "Slot holder", "max_tokens": 300, "seed": 1}),
    )
    .await;
    assert_eq!(holder.next_event().await.unwrap().event, "token");
    let response = client()
        .post(format!("{base}/v1/stories"))
        .send_json(&json!({"topic": "Another", "max_tokens": 4, "seed": 2}))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "2");
    let mut response = response;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    drop(holder);
    let recovered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (status, _) = post_story(
                &base,
                json!({"topic": "Another", "max_tokens": 4, "seed": 2}),
            )
            .await;
            if status == 200 {
                return;
            }
            assert_eq!(status, 429);
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        recovered.is_ok(),
        "never served again after the load dropped"
    );
}

#[actix_web::test]
async fn pregeneration_fills_the_trending_stories() {
    let mut config = tiny_server_config();
    config.stories.trending.enabled = true;
    config.stories.trending.top_k = 2;
    config.stories.trending.check_interval_secs = 1;
    config.stories.default_max_tokens = 8;
    let base = start_server(config).await;
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (status, body) = get_json(&base, "/v1/stories/trending?limit=2").await;
            assert_eq!(status, 200);
            let entries = body["stories"].as_array().unwrap().clone();
            if entries.iter().all(|e| e["status"] == "ready") {
                return entries;
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("trending stories written within 30 s");
    assert_eq!(ready[0]["story"]["topic"], ready[0]["topic"]);
    assert_eq!(ready[0]["story"]["tokens"], 8);
    // Beyond top_k, nothing is written in the background, and the entries say so.
    let (_, body) = get_json(&base, "/v1/stories/trending?limit=4").await;
    let statuses: Vec<&str> = body["stories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["ready", "ready", "not_scheduled", "not_scheduled"]
    );
    // A plain request for the top topic is then a cache hit.
    let (status, story) = post_story(&base, json!({"topic": ready[0]["topic"]})).await;
    assert_eq!(status, 200);
    assert_eq!(story["cached"], true);
    assert_eq!(story["story"], ready[0]["story"]["story"]);
    let text = metrics(&base).await;
    assert!(
        metric(
            &text,
            "trendstory_story_generations_total{priority=\"background\",outcome=\"ok\"}"
        ) >= 2.0
    );
}

#[actix_web::test]
async fn another_story_is_one_not_seen_and_written_ahead_for_the_top_trend() {
    let mut config = tiny_server_config();
    config.stories.trending.enabled = true;
    config.stories.trending.top_k = 1;
    config.stories.trending.check_interval_secs = 1;
    config.stories.variants.top_k = 1;
    config.stories.variants.per_trend = 2;
    config.stories.default_max_tokens = 8;
    let base = start_server(config).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while metric(
            &metrics(&base).await,
            "trendstory_story_variants_ready{rank=\"1\"}",
        ) < 2.0
        {
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("two variants of the top trend written within 30 s");
    let (_, trending) = get_json(&base, "/v1/stories/trending?limit=1").await;
    let top = trending["stories"][0]["topic"]
        .as_str()
        .unwrap()
        .to_string();
    let another = |seen: Vec<&Value>| json!({"topic": top, "seen": seen});

    // The two variants written ahead, one after the other, then one written now.
    let (status, first) = post_story(&base, another(vec![])).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (&first["variant"], &first["cached"]),
        (&json!("ready"), &json!(true))
    );
    assert_ne!(first["id"], trending["stories"][0]["story"]["id"]);
    let (_, second) = post_story(&base, another(vec![&first["id"]])).await;
    assert_eq!(second["variant"], "ready");
    assert_ne!(second["id"], first["id"]);
    assert_ne!(second["seed"], first["seed"]);
    let (_, third) = post_story(&base, another(vec![&first["id"], &second["id"]])).await;
    assert_eq!(
        (&third["variant"], &third["cached"]),
        (&json!("new"), &json!(false))
    );
    assert!(![&first["id"], &second["id"]].contains(&&third["id"]));
    // Written once, it is ready for the next client too, also through a URL.
    let url = format!(
        "/v1/stories?topic={}&seen={},{}",
        form_urlencoded::byte_serialize(top.as_bytes()).collect::<String>(),
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap()
    );
    let (status, again) = get_json(&base, &url).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (&again["id"], &again["variant"]),
        (&third["id"], &json!("ready"))
    );
    // A variant's seed asks for that story again, as any seed does.
    let (_, by_seed) = post_story(&base, json!({"topic": top, "seed": second["seed"]})).await;
    assert_eq!(
        (&by_seed["id"], &by_seed["cached"]),
        (&second["id"], &json!(true))
    );
    assert!(by_seed.get("variant").is_none(), "{by_seed}");
    // A seed keeps that meaning beside `seen`.
    let (_, both) = post_story(
        &base,
        json!({"topic": top, "seed": second["seed"], "seen": [&second["id"]]}),
    )
    .await;
    assert_eq!(both["id"], second["id"]);

    // Bad input is a 400 that names the field.
    let many: Vec<&Value> = vec![&first["id"]; 33];
    for (body, why) in [
        (json!({"topic": top, "seen": ["story-1"]}), "unknown id"),
        (json!({"topic": top, "seen": many}), "at most 32"),
        (
            json!({"topic": top, "seen": "story-0123456789abcdef"}),
            "seen",
        ),
    ] {
        let (status, error) = post_story(&base, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("seen") && message.contains(why),
            "{message}"
        );
    }
    let text = metrics(&base).await;
    let answered = |answer: &str| {
        metric(
            &text,
            &format!("trendstory_story_another_total{{answer=\"{answer}\"}}"),
        )
    };
    assert_eq!((answered("ready"), answered("new")), (3.0, 1.0));
    assert!(
        metric(
            &text,
            "trendstory_inference_background_generated_tokens_total"
        ) > 0.0
    );
}

#[actix_web::test]
async fn api_keys_and_rate_limits_guard_v1_only() {
    let mut config = tiny_server_config();
    config.api.api_keys = vec!["k-123".into()];
    config.api.rate_limit_per_second = 1;
    config.api.rate_limit_burst = 2;
    let base = start_server(config).await;
    let mut response = client()
        .get(format!("{base}/v1/trends"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(
        body["error"]["request_id"].as_str().unwrap(),
        response
            .headers()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
    );
    let authed = || {
        client()
            .get(format!("{base}/v1/trends"))
            .insert_header((header::AUTHORIZATION, "Bearer k-123"))
            .send()
    };
    assert_eq!(authed().await.unwrap().status(), 200);
    assert_eq!(authed().await.unwrap().status(), 200);
    let limited = authed().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().get(header::RETRY_AFTER).is_some());
    // Probes, metrics and the document stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let response = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[actix_web::test]
async fn a_max_tokens_past_the_model_s_context_gets_what_fits_and_says_so() {
    // The tiny model has 512 positions and the default cap is 512 new tokens: any prompt
    // leaves less room than a request may ask for.
    let base = start_server(tiny_server_config()).await;
    for (n, topic) in [
        "tides",
        "a much longer topic about the tides of the northern sea",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, story) =
            post_story(&base, json!({"topic": topic, "max_tokens": 512, "seed": n})).await;
        assert_eq!(status, 200, "{story}");
        let room = 512 - story["prompt_tokens"].as_u64().unwrap();
        assert_eq!(story["max_tokens"], room, "{story}");
        let tokens = story["tokens"].as_u64().unwrap();
        assert!(tokens <= room, "{story}");
        let end = if tokens == room { "length" } else { "stop" };
        assert_eq!(story["finish_reason"], end, "{story}");
    }
    // What the request asked for within the room is granted as asked.
    let (status, story) = post_story(&base, json!({"topic": "tides", "max_tokens": 5})).await;
    assert_eq!(
        (status, story["max_tokens"].as_u64()),
        (200, Some(5)),
        "{story}"
    );
}

#[actix_web::test]
async fn the_openapi_document_is_valid_and_lists_every_route() {
    let mut config = tiny_server_config();
    config.inference.max_new_tokens = 77;
    config.trends.max_trends = 33;
    let base = start_server(config).await;
    let (status, document) = get_json(&base, "/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
    // The configured limits are the published bounds, and the server enforces exactly them.
    let body = &document["components"]["schemas"]["StoryRequest"]["properties"];
    assert_eq!(body["max_tokens"]["maximum"], 77);
    let trends_limit = &document["paths"]["/v1/trends"]["get"]["parameters"][0]["schema"];
    assert_eq!(trends_limit["maximum"], 33);
    for (path, status) in [
        ("/v1/trends?limit=33", 200),
        ("/v1/trends?limit=34", 400),
        ("/v1/stories?topic=edge&max_tokens=77", 200),
        ("/v1/stories?topic=edge&max_tokens=78", 400),
    ] {
        let response = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/stories", "post"),
        ("/v1/stories", "get"),
        ("/v1/stories/trending", "get"),
        ("/v1/trends", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
        // Each documented route is served.
        if method == "get" {
            let response = client().get(format!("{base}{path}")).send().await.unwrap();
            assert_ne!(response.status(), 404, "{path} documented but not routed");
        }
    }
    assert_eq!(
        paths.len(),
        7,
        "no undocumented or stale paths: {:?}",
        paths.keys()
    );

    // Checked by openapi-spec-validator from PyPI, in the project's Python environment.
    let python = common::repo_path(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run ./scripts/test.sh (it creates the Python environment)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&document).unwrap()).unwrap();
    let output = std::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nfrom openapi_spec_validator.validation import OpenAPIV31SpecValidator\nvalidate(json.load(open(sys.argv[1])), cls=OpenAPIV31SpecValidator)\nprint('valid')",
        ])
        .arg(&file)
        .output()
        .expect("run the validator");
    assert!(
        output.status.success(),
        "the OpenAPI document is invalid:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[actix_web::test]
async fn a_trend_s_context_reaches_the_story_and_its_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("trends.json");
    std::fs::write(
        &list,
        r#"[{"topic": "Comet Atlas", "url": "https://example.org/atlas",
             "context": "A comet brighter than Venus, visible at dusk for the next week"},
            "Plain topic"]"#,
    )
    .unwrap();
    let mut config = tiny_server_config();
    config.trends.sources.file.path = Some(list);
    let base = start_server(config).await;
    let (_, trends) = get_json(&base, "/v1/trends").await;
    assert_eq!(trends["trends"][0]["topic"], "Comet Atlas");
    assert_eq!(
        trends["trends"][0]["context"],
        "A comet brighter than Venus, visible at dusk for the next week"
    );
    assert!(trends["trends"][1]["context"].is_null());

    let (status, with_context) = post_story(
        &base,
        json!({"topic": "comet atlas", "max_tokens": 2, "seed": 1}),
    )
    .await;
    assert_eq!(status, 200, "{with_context}");
    assert_eq!(with_context["trend"]["rank"], 1);
    assert_eq!(with_context["trend"]["url"], "https://example.org/atlas");
    assert_eq!(
        with_context["trend"]["context"],
        trends["trends"][0]["context"]
    );
    // The same words without the trend behind them: the context is in the prompt.
    let (_, without) = post_story(
        &base,
        json!({"topic": "comet atlases", "max_tokens": 2, "seed": 1}),
    )
    .await;
    assert!(without["trend"].is_null());
    assert!(
        with_context["prompt_tokens"].as_u64().unwrap()
            > without["prompt_tokens"].as_u64().unwrap() + 10,
        "{} vs {}",
        with_context["prompt_tokens"],
        without["prompt_tokens"]
    );
}

#[actix_web::test]
async fn cors_allows_only_the_configured_origins() {
    let mut config = tiny_server_config();
    config.api.cors_allowed_origins = vec!["https://app.example".into()];
    let base = start_server(config).await;
    let preflight = client()
        .request(
            actix_web::http::Method::OPTIONS,
            format!("{base}/v1/stories"),
        )
        .insert_header((header::ORIGIN, "https://app.example"))
        .insert_header((header::ACCESS_CONTROL_REQUEST_METHOD, "POST"))
        .insert_header((header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type"))
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    assert_eq!(
        preflight
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .unwrap(),
        "https://app.example"
    );
    let allowed = client()
        .get(format!("{base}/v1/trends"))
        .insert_header((header::ORIGIN, "https://app.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .unwrap(),
        "https://app.example"
    );
    let foreign = client()
        .get(format!("{base}/v1/trends"))
        .insert_header((header::ORIGIN, "https://evil.example"))
        .send()
        .await
        .unwrap();
    assert!(foreign
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
}

#[actix_web::test]
async fn a_passed_deadline_is_a_504() {
    let mut config = tiny_server_config();
    config.inference.max_batch_size = 1;
    config.inference.request_timeout_secs = 1;
    let base = start_server(config).await;
    // One at a time, each a hundred milliseconds or more: the later ones cannot finish in 1 s.
    let answers = futures_util::future::join_all((0..24).map(|seed| {
        post_story(
            &base,
            json!({"topic": "Queue", "max_tokens": 340, "seed": seed}),
        )
    }))
    .await;
    let timed_out: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 504)
        .map(|(_, body)| body)
        .collect();
    assert!(
        !timed_out.is_empty(),
        "no request ran past its deadline: {answers:?}"
    );
    assert_eq!(timed_out[0]["error"]["code"], "timeout");
    for (status, body) in &answers {
        assert!(*status == 200 || *status == 504, "{status}: {body}");
    }
}
