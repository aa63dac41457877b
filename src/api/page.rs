//! The web page: `GET /` and its assets under `/static/`, embedded in the binary with
//! `include_str!` (no build step, no CDN, no request to any other origin).
//!
//! The page is plain HTML, CSS and JavaScript that talks only to this server's own API
//! (`/readyz`, `/v1/trends`, `/v1/stories`, `/v1/stories/trending`) and to `/page.json`,
//! its settings from this server ([`PageSettings`]: the model, whether its weights are
//! random, the length limits of the trends it lists). Every asset is served
//! with a strict Content-Security-Policy: scripts, styles and images only from this origin,
//! no inline code, `fetch` only to this origin, no framing. The script inserts trend and
//! story text with `textContent`, never as HTML. These routes are not part of the JSON API,
//! so the OpenAPI document leaves them out.

use std::collections::BTreeMap;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::AppState;
use crate::stories::Style;

/// How many trends the page lists (the top ones), at most `trends.max_trends`.
const TRENDS_LISTED: usize = 20;

/// The policy of every page response; the page needs nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file: its path, content type and text.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    path: "/",
    content_type: "text/html; charset=utf-8",
    body: include_str!("page/index.html"),
};

/// The files the page loads, each at its own route (so metrics label them by path).
const STATIC: [Asset; 3] = [
    Asset {
        path: "/static/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("page/app.js"),
    },
    Asset {
        path: "/static/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("page/style.css"),
    },
    Asset {
        path: "/static/favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("page/favicon.svg"),
    },
];

/// What the page needs to know about this server, at `GET /page.json`.
#[derive(Debug, Serialize)]
pub struct PageSettings {
    /// The served model's display id.
    pub model: String,
    /// Its weights are random: the page says, beside the story, that noise is expected.
    pub random_weights: bool,
    /// How many of the top trends the page lists.
    pub trends_listed: usize,
    pub default_style: Style,
    pub default_max_tokens: usize,
    /// Per style, the largest `max_tokens` the server accepts (`inference.max_new_tokens`);
    /// a story whose prompt leaves less room in the model's context is written up to what
    /// fits, and its answer's `max_tokens` says how many that was.
    pub max_tokens: BTreeMap<&'static str, usize>,
}

async fn settings(state: web::Data<AppState>) -> HttpResponse {
    let listed = TRENDS_LISTED.min(state.limits.max_trends);
    let stories = &state.stories;
    let body = PageSettings {
        model: state.model.to_string(),
        random_weights: state.random_weights,
        trends_listed: listed,
        default_style: stories.config().default_style,
        default_max_tokens: stories.config().default_max_tokens,
        max_tokens: Style::ALL
            .into_iter()
            .map(|style| (style.as_str(), stories.max_new_tokens()))
            .collect(),
    };
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(body)
}

/// Registers `GET /`, `/page.json` and the `/static/` files (and `HEAD` of the files,
/// answered without the body); another method gets 405 with `Allow`, as on the API.
pub fn configure(config: &mut web::ServiceConfig) {
    config.service(super::resource(
        "/page.json",
        [(Method::GET, web::route().to(settings))],
    ));
    for asset in std::iter::once(&INDEX).chain(STATIC.iter()) {
        let (content_type, body) = (asset.content_type, asset.body);
        let handler = move || async move { respond(content_type, body) };
        config.service(super::resource(
            asset.path,
            [
                (Method::GET, web::route().to(handler)),
                (Method::HEAD, web::route().to(handler)),
            ],
        ));
    }
}

/// One asset with the page's security headers. `no-cache`: browsers revalidate, so a new
/// binary's page is seen at once (the files are small).
fn respond(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ` on<letters>=` attribute (`onclick=`, `onerror=`...).
    fn has_inline_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(at, _)| {
            let rest = &html[at + 3..];
            let name_len = rest.find(|c: char| !c.is_ascii_lowercase()).unwrap_or(0);
            name_len > 0 && rest[name_len..].starts_with('=')
        })
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for asset in &STATIC {
            assert!(
                INDEX.body.contains(asset.path),
                "index.html does not reference {}",
                asset.path
            );
        }
        for text in [INDEX.body, STATIC[0].body, STATIC[1].body] {
            assert!(!text.contains("http://"), "no other origin");
            assert!(!text.contains("https://"), "no other origin");
        }
    }

    #[test]
    fn no_inline_code_and_no_html_insertion() {
        // The policy forbids inline scripts, styles and handlers; the page must not need them.
        assert!(!INDEX.body.contains("<script>"));
        assert!(!INDEX.body.contains("style="));
        assert!(!has_inline_handler(INDEX.body), "no inline event handler");
        // Text from trends and stories is inserted as text only.
        let script = STATIC[0].body;
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!script.contains(sink), "app.js uses {sink}");
        }
    }
}
