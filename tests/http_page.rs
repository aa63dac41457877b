//! The web page over real HTTP: `GET /` and its files under `/static/`, each with its content
//! type and the strict Content-Security-Policy; the page stays out of the API document.
//! (tests/browser drives the page itself in headless Chromium.)

mod common;

use actix_web::http::header;

use common::{client, start_server, tiny_server_config};

/// The directives the page depends on: nothing inline, nothing from another origin.
const POLICY: [&str; 6] = [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "frame-ancestors 'none'",
];

#[actix_web::test]
async fn the_page_and_its_files_are_served_with_a_strict_policy() {
    let base = start_server(tiny_server_config()).await;
    for (path, content_type, marker) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<script type=\"module\" src=\"/static/app.js\">",
        ),
        (
            "/static/app.js",
            "text/javascript; charset=utf-8",
            "textContent",
        ),
        (
            "/static/style.css",
            "text/css; charset=utf-8",
            ":focus-visible",
        ),
        ("/static/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let mut response = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert_eq!(
            headers.get(header::CONTENT_TYPE).unwrap(),
            content_type,
            "{path}"
        );
        let policy = headers
            .get(header::CONTENT_SECURITY_POLICY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{path} has no Content-Security-Policy"));
        for directive in POLICY {
            assert!(
                policy.contains(directive),
                "{path}: {directive} missing in {policy}"
            );
        }
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        assert_eq!(
            headers.get(header::X_CONTENT_TYPE_OPTIONS).unwrap(),
            "nosniff"
        );
        assert!(headers.contains_key("x-request-id"), "{path}");
        let body = response.body().await.unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains(marker), "{path} does not contain {marker}");
    }

    // HEAD answers the same headers without a body.
    let mut head = client().head(format!("{base}/")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.headers().contains_key(header::CONTENT_SECURITY_POLICY));
    assert!(head.body().await.unwrap().is_empty());

    // Other paths under /static/ are the usual JSON 404.
    let mut missing = client()
        .get(format!("{base}/static/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    // The page is not part of the JSON API: the OpenAPI document leaves it out.
    let mut document = client()
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap();
    let document: serde_json::Value = document.json().await.unwrap();
    let paths = document["paths"].as_object().unwrap();
    assert!(!paths.contains_key("/"));
    assert!(!paths.keys().any(|p| p.starts_with("/static/")));
}

#[actix_web::test]
async fn the_page_needs_no_api_key() {
    let mut config = tiny_server_config();
    config.api.api_keys = vec!["secret-key".into()];
    let base = start_server(config).await;
    let page = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(
        page.status(),
        200,
        "the page loads; it asks for the key itself"
    );
    let trends = client()
        .get(format!("{base}/v1/trends"))
        .send()
        .await
        .unwrap();
    assert_eq!(trends.status(), 401);
    let trends = client()
        .get(format!("{base}/v1/trends"))
        .insert_header((header::AUTHORIZATION, "Bearer secret-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(trends.status(), 200);
}
