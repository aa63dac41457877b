//! Bad inputs over real HTTP: each gets its status and the one JSON error shape with the
//! request id, and the server still serves afterwards.

mod common;

use actix_web::http::header;
use serde_json::{json, Value};

use common::{client, start_server, tiny_server_config};
use trendstory::stories::validate::{field_rule, FIELDS};

/// One bad request: how it is sent and what must come back.
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn post(name: &'static str, body: impl Into<Vec<u8>>, status: u16, code: &'static str) -> Case {
    Case {
        name,
        method: "POST",
        path: "/v1/stories".into(),
        content_type: Some("application/json"),
        body: body.into(),
        status,
        code,
    }
}

fn get(name: &'static str, path: &str, status: u16, code: &'static str) -> Case {
    Case {
        name,
        method: "GET",
        path: path.into(),
        content_type: None,
        body: Vec::new(),
        status,
        code,
    }
}

async fn send(base: &str, case: &Case) -> (u16, Value, Option<String>) {
    let c = client();
    let url = format!("{base}{}", case.path);
    let mut request = match case.method {
        "POST" => c.post(url),
        "GET" => c.get(url),
        "DELETE" => c.delete(url),
        other => panic!("method {other}"),
    };
    if let Some(content_type) = case.content_type {
        request = request.insert_header((header::CONTENT_TYPE, content_type));
    }
    let mut response = request
        .send_body(case.body.clone())
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.body().limit(1 << 20).await.unwrap();
    let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{}: body is not JSON ({e}): {:?}",
            case.name,
            String::from_utf8_lossy(&body)
        )
    });
    (response.status().as_u16(), json, id)
}

#[actix_web::test]
async fn every_bad_input_gets_its_status_and_a_json_error() {
    let base = start_server(tiny_server_config()).await;
    let nested = format!("{{\"topic\": {}1{}}}", "[".repeat(5_000), "]".repeat(5_000));
    let big_topic = format!("{{\"topic\": \"{}\"}}", "a".repeat(1 << 20));
    let cases = [
        post("invalid JSON", "{\"topic\": ", 400, "invalid_request"),
        post("not an object", "[1, 2]", 400, "invalid_request"),
        post(
            "unknown field",
            r#"{"topic": "x", "colour": "red"}"#,
            400,
            "invalid_request",
        ),
        post(
            "wrong type",
            r#"{"max_tokens": "ten"}"#,
            400,
            "invalid_request",
        ),
        post(
            "negative max_tokens",
            r#"{"max_tokens": -1}"#,
            400,
            "invalid_request",
        ),
        post(
            "float max_tokens",
            r#"{"max_tokens": 1.5}"#,
            400,
            "invalid_request",
        ),
        post(
            "max_tokens above the cap",
            r#"{"max_tokens": 513}"#,
            400,
            "out_of_range",
        ),
        post(
            "max_tokens zero",
            r#"{"max_tokens": 0}"#,
            400,
            "out_of_range",
        ),
        post(
            "negative temperature",
            r#"{"temperature": -0.5}"#,
            400,
            "out_of_range",
        ),
        post("top_p zero", r#"{"top_p": 0}"#, 400, "out_of_range"),
        post("top_p above one", r#"{"top_p": 1.5}"#, 400, "out_of_range"),
        post(
            "repetition_penalty zero",
            r#"{"repetition_penalty": 0}"#,
            400,
            "out_of_range",
        ),
        post(
            "unknown style",
            r#"{"style": "opera"}"#,
            400,
            "invalid_request",
        ),
        post(
            "empty topic",
            r#"{"topic": "  \n\t\u0000 "}"#,
            400,
            "empty_topic",
        ),
        post(
            "duplicate keys",
            r#"{"topic": "a", "topic": "b"}"#,
            400,
            "invalid_request",
        ),
        post("deeply nested", nested, 400, "invalid_request"),
        post(
            "malformed UTF-8",
            [b"{\"topic\": \"".as_slice(), &[0xff, 0xfe, 0xc3], b"\"}"].concat(),
            400,
            "invalid_request",
        ),
        post("1 MB topic", big_topic, 413, "payload_too_large"),
        Case {
            content_type: Some("text/plain"),
            ..post(
                "wrong content type",
                r#"{"topic": "x"}"#,
                415,
                "unsupported_media_type",
            )
        },
        Case {
            content_type: None,
            ..post(
                "no content type",
                r#"{"topic": "x"}"#,
                415,
                "unsupported_media_type",
            )
        },
        get("unknown path", "/v2/everything", 404, "not_found"),
        Case {
            method: "DELETE",
            ..get("wrong method", "/v1/stories", 405, "method_not_allowed")
        },
        get(
            "bad query number",
            "/v1/stories?max_tokens=-3",
            400,
            "invalid_request",
        ),
        get(
            "unknown query parameter",
            "/v1/stories?colour=red",
            400,
            "invalid_request",
        ),
        get(
            "query above the cap",
            "/v1/stories?topic=x&max_tokens=9999",
            400,
            "out_of_range",
        ),
        get(
            "unknown trend source",
            "/v1/trends?source=myspace",
            400,
            "invalid_request",
        ),
        get(
            "trends limit zero",
            "/v1/trends?limit=0",
            400,
            "invalid_request",
        ),
        get(
            "trending limit too big",
            "/v1/stories/trending?limit=500",
            400,
            "invalid_request",
        ),
    ];
    for case in &cases {
        let (status, body, id) = send(&base, case).await;
        assert_eq!(status, case.status, "{}: {body}", case.name);
        assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.name);
        assert!(
            !body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{}: a message says why: {body}",
            case.name
        );
        let id = id.unwrap_or_else(|| panic!("{}: no x-request-id header", case.name));
        assert_eq!(body["error"]["request_id"], id.as_str(), "{}", case.name);
    }
    // Field-named messages.
    let (_, body, _) = send(&base, &cases[6]).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("max_tokens") && message.contains("512"),
        "{message}"
    );

    // A long topic within the body limit is capped, not refused.
    let (status, story) = {
        let mut response = client()
            .post(format!("{base}/v1/stories"))
            .send_json(&json!({"topic": "word ".repeat(1000), "max_tokens": 2}))
            .await
            .unwrap();
        let json: Value = response.json().limit(1 << 20).await.unwrap();
        (response.status().as_u16(), json)
    };
    assert_eq!(status, 200, "{story}");
    assert!(story["topic"].as_str().unwrap().chars().count() <= 200);

    // Still serving.
    let mut response = client()
        .post(format!("{base}/v1/stories"))
        .send_json(&json!({"topic": "after the storm", "max_tokens": 3}))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let story: Value = response.json().await.unwrap();
    assert_eq!(story["tokens"], 3);
}

/// Every field of every endpoint, given a value of the wrong type or form: the 400 names
/// the field and says what it accepts, in the same words as the field's range error.
#[actix_web::test]
async fn every_field_error_names_the_field_and_what_it_accepts() {
    let config = tiny_server_config();
    let max_new_tokens = config.inference.max_new_tokens;
    let max_trends = config.trends.max_trends;
    let base = start_server(config).await;
    let rule = |field: &str| field_rule(field, max_new_tokens);
    let limit_rule = format!("a whole number between 1 and {max_trends}");
    let sources = "one of hackernews, reddit, google_trends, wikipedia, file";
    // (field, a wrong value as JSON, the same as a query value, what it accepts); the
    // query has no wrong value for `topic` or `seen` (any text is one: `seen`'s ids are
    // checked after, an out_of_range).
    let story_fields = [
        ("topic", "5", None),
        ("style", r#""opera""#, Some("opera")),
        ("max_tokens", r#""ten""#, Some("ten")),
        ("temperature", r#""hot""#, Some("hot")),
        ("top_p", "[1]", Some("x")),
        ("top_k", "-1", Some("-1")),
        ("repetition_penalty", "{}", Some("1,5")),
        ("seed", "1.5", Some("1.5")),
        ("seen", "5", None),
        ("stream", r#""yes""#, Some("maybe")),
    ];
    assert_eq!(
        story_fields.map(|(field, ..)| field),
        FIELDS,
        "every field of a story request is tried"
    );
    let mut cases: Vec<(Case, String)> = Vec::new();
    for (field, json_value, query_value) in story_fields {
        let body = format!(r#"{{"{field}": {json_value}}}"#);
        let expected = format!("`{field}` must be {}, got {json_value}", rule(field));
        cases.push((post("body field", body, 400, "invalid_request"), expected));
        if let Some(value) = query_value {
            let shown = if value.parse::<f64>().is_ok() {
                value.to_string()
            } else {
                format!("\"{value}\"")
            };
            let expected = format!("`{field}` must be {}, got {shown}", rule(field));
            let path = format!("/v1/stories?topic=x&{field}={value}");
            cases.push((
                get("query parameter", &path, 400, "invalid_request"),
                expected,
            ));
        }
    }
    for (path, expected) in [
        (
            "/v1/trends?limit=abc",
            format!("`limit` must be {limit_rule}, got \"abc\""),
        ),
        (
            "/v1/trends?limit=-2",
            format!("`limit` must be {limit_rule}, got -2"),
        ),
        (
            "/v1/trends?limit=0",
            format!("`limit` must be {limit_rule}, got 0"),
        ),
        (
            "/v1/trends?source=myspace",
            format!("`source` must be {sources}, got \"myspace\""),
        ),
        (
            "/v1/stories/trending?limit=1.5",
            format!("`limit` must be {limit_rule}, got 1.5"),
        ),
        (
            "/v1/stories/trending?limit=9999",
            format!("`limit` must be {limit_rule}, got 9999"),
        ),
    ] {
        cases.push((
            get("list parameter", path, 400, "invalid_request"),
            expected,
        ));
    }
    // Range errors say the same: only the code differs (`out_of_range`).
    for (field, value) in [
        ("max_tokens", "0"),
        ("temperature", "9"),
        ("top_p", "2"),
        ("repetition_penalty", "0"),
    ] {
        let body = format!(r#"{{"{field}": {value}}}"#);
        let expected = format!("`{field}` must be {}, got {value}", rule(field));
        cases.push((post("range", body, 400, "out_of_range"), expected));
    }
    // Unknown fields and parameters list the accepted ones.
    let story_list = FIELDS.join(", ");
    for (case, expected) in [
        (
            post("unknown", r#"{"colour": 1}"#, 400, "invalid_request"),
            format!("unknown field `colour`: the accepted ones are {story_list}"),
        ),
        (
            get("unknown", "/v1/stories?colour=1", 400, "invalid_request"),
            format!("unknown query parameter `colour`: the accepted ones are {story_list}"),
        ),
        (
            get("unknown", "/v1/trends?colour=1", 400, "invalid_request"),
            "unknown query parameter `colour`: the accepted ones are limit, source".into(),
        ),
        (
            get(
                "unknown",
                "/v1/stories/trending?colour=1",
                400,
                "invalid_request",
            ),
            "unknown query parameter `colour`: the accepted ones are limit".into(),
        ),
    ] {
        cases.push((case, expected));
    }
    for (case, expected) in &cases {
        let (status, body, _) = send(&base, case).await;
        let what = format!(
            "{} {} {:?}",
            case.method,
            case.path,
            String::from_utf8_lossy(&case.body)
        );
        assert_eq!(status, case.status, "{what}: {body}");
        assert_eq!(body["error"]["code"], case.code, "{what}: {body}");
        assert_eq!(body["error"]["message"], expected.as_str(), "{what}");
    }
}

/// Every path, the page's included, answers a method it has no route for with 405,
/// `Allow` naming exactly its methods, and the JSON error (actix alone answers 404 or a
/// bare 405).
#[actix_web::test]
async fn undeclared_methods_get_405_with_allow() {
    let base = start_server(tiny_server_config()).await;
    for (path, method, allow) in [
        ("/v1/stories", "DELETE", "POST, GET"),
        ("/v1/stories", "PATCH", "POST, GET"),
        ("/v1/stories/trending", "POST", "GET"),
        ("/v1/trends", "PUT", "GET"),
        ("/healthz", "TRACE", "GET"),
        ("/readyz", "OPTIONS", "GET"),
        ("/metrics", "QUERY", "GET"),
        ("/openapi.json", "DELETE", "GET"),
        ("/page.json", "POST", "GET"),
        ("/", "DELETE", "GET, HEAD"),
        ("/static/app.js", "PUT", "GET, HEAD"),
    ] {
        let method = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut response = client()
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(
            response.headers().get(header::ALLOW).unwrap(),
            allow,
            "{path}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "method_not_allowed",
            "{method} {path}"
        );
    }
}

/// Sends `request` as raw bytes on a new connection and reads the answer until the server
/// closes it; checks its status line.
async fn raw_exchange(base: &str, request: String, status: &str) -> String {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://").to_string();
    let answer = actix_web::rt::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        // The server may answer and close before reading everything (a head over its limit).
        let _ = stream.write_all(request.as_bytes());
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{answer}"
    );
    answer
}

/// A request head over `api.max_url_bytes` or `api.max_header_bytes` gets 414 or 431 with
/// the JSON error and a request id; beyond the HTTP codec's own limits (a URL of 64 KiB,
/// 96 headers, a 128 KiB head) actix answers before any of our code runs: 400 or 431 with
/// an empty body (README, "Reliability").
#[actix_web::test]
async fn request_heads_over_the_limits() {
    let mut config = tiny_server_config();
    config.api.max_url_bytes = 4096;
    config.api.max_header_bytes = 8192;
    let base = start_server(config).await;
    let long_url = format!(
        "GET /v1/trends?source={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(5000)
    );
    let many_headers: String = (0..40)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "b".repeat(250)))
        .collect();
    let big_headers =
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{many_headers}\r\n");
    for (request, status, code) in [
        (long_url, "414", "uri_too_long"),
        (big_headers, "431", "headers_too_large"),
    ] {
        let answer = raw_exchange(&base, request, status).await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.to_lowercase().contains("x-request-id:"), "{head}");
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["request_id"].is_string(), "{body}");
    }
    // The codec's own limits: no JSON possible there.
    let huge_url = format!(
        "GET /healthz?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "c".repeat(70_000)
    );
    let too_many: String = (0..200)
        .map(|i| format!("X-Many-{i}: {}\r\n", "d".repeat(200)))
        .collect();
    let too_many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{too_many}\r\n");
    for (request, status) in [(huge_url, "400"), (too_many, "431")] {
        let answer = raw_exchange(&base, request, status).await;
        assert!(
            answer.to_lowercase().contains("content-length: 0"),
            "{answer}"
        );
    }
    // Still serving.
    let response = client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
