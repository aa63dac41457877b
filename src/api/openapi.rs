//! `GET /openapi.json`: the OpenAPI 3.1 document.
//!
//! `utoipa` derives its structure from the handlers' own types and annotations; [`document`]
//! then writes in what only the running server knows or what the derive cannot say, each
//! from the one place the server itself reads it, so the document cannot drift from what is
//! enforced:
//! - every bound of a request field: the validators' constants (`stories::validate`,
//!   [`prompt::is_blank`]) and the configuration (`inference.max_new_tokens`,
//!   `trends.max_trends`), with integer formats of the Rust types that read them;
//! - the query parameters of `GET /v1/stories`, copied from the body's schema (one request
//!   type for both forms);
//! - the Server-Sent Events answer of both story endpoints (each event's name and data);
//! - the headers every answer has (`x-request-id`; `Retry-After` with a 429) and the answers
//!   every operation may give (a request head over the limits, and on `/v1` the access
//!   layer's 401 and 429);
//! - a link from a story to the same story as a URL, for stateful clients and tests (none
//!   from the trend lists: a list may be empty, and a link must hold for every answer).

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use serde_json::{json, Map, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{probes, sse, stories, trends, AppState};
use crate::stories::another::MAX_SEEN;
use crate::stories::prompt;
use crate::stories::validate::{
    NumberRange, MIN_MAX_TOKENS, REPETITION_PENALTY, TEMPERATURE, TOP_P,
};
use crate::trends::SourceKind;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "TrendStory",
        description = "Short stories about what is trending right now, written by an int4 TinyLlama-1.1B-Chat on ONNX Runtime. Errors are always `{\"error\": {\"code\", \"message\", \"request_id\"}}`; every response has an `x-request-id` header."
    ),
    paths(
        stories::post_story,
        stories::get_story,
        stories::trending,
        trends::list,
        probes::healthz,
        probes::readyz,
        probes::metrics,
        serve,
    ),
    components(schemas(sse::StoryToken)),
    modifiers(&BearerKeys),
    tags(
        (name = "stories", description = "Stories about trending topics"),
        (name = "trends", description = "What is trending"),
        (name = "probes", description = "Health, readiness, metrics and this document (no API key)"),
    )
)]
pub struct ApiDoc;

/// Declares the optional bearer API key of `/v1/*`.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Required on /v1/* when the server is configured with API keys",
                    ))
                    .build(),
            ),
        );
    }
}

/// The limits of this server that the document publishes (from its configuration).
#[derive(Debug, Clone, Copy)]
pub struct DocumentLimits {
    /// `inference.max_new_tokens`: the largest `max_tokens`.
    pub max_new_tokens: usize,
    /// `trends.max_trends`: the largest `limit` of the list endpoints.
    pub max_trends: usize,
    /// `api.max_url_bytes` and `api.max_header_bytes`: the largest request head.
    pub max_url_bytes: usize,
    pub max_header_bytes: usize,
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "probes",
    operation_id = "openapi_document",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn serve(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .body(state.openapi.clone())
}

/// The document rendered once at start-up, as [`serve`] sends it.
pub fn render(limits: &DocumentLimits) -> Bytes {
    Bytes::from(document(limits).to_string())
}

/// The whole document for a server with these limits (module doc).
pub fn document(limits: &DocumentLimits) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document is JSON");
    bound_story_request(&mut doc, limits);
    story_query_from_body(&mut doc);
    bound_list_queries(&mut doc, limits);
    for method in ["post", "get"] {
        add_event_stream(doc.operation("/v1/stories", method));
    }
    add_common_answers(&mut doc, limits);
    add_links(&mut doc);
    doc
}

/// `doc.operation(path, method)`: the operation object of the document's `paths`.
trait Operations {
    fn operation(&mut self, path: &str, method: &str) -> &mut Value;
}

impl Operations for Value {
    fn operation(&mut self, path: &str, method: &str) -> &mut Value {
        &mut self["paths"][path][method]
    }
}

fn integer(format: &str, min: u64, max: u64) -> Value {
    json!({"type": "integer", "format": format, "minimum": min, "maximum": max})
}

fn number(range: NumberRange) -> Value {
    let mut schema = json!({"type": "number", "format": "double", "maximum": range.max});
    let key = if range.min_exclusive {
        "exclusiveMinimum"
    } else {
        "minimum"
    };
    schema[key] = json!(range.min);
    schema
}

/// The topic must hold a character that cleaning keeps: a JSON Schema (ECMA-262) class of
/// every character outside [`prompt::is_blank`], computed from it.
pub fn topic_pattern() -> String {
    let mut class = String::from("[^");
    let mut blank = (0..=0xFFFF_u32).filter(|&c| char::from_u32(c).is_some_and(prompt::is_blank));
    let mut start = blank.next();
    while let Some(first) = start {
        let mut last = first;
        start = None;
        for c in blank.by_ref() {
            if c == last + 1 {
                last = c;
            } else {
                start = Some(c);
                break;
            }
        }
        class.push_str(&format!("\\u{first:04x}"));
        if last > first {
            class.push_str(&format!("-\\u{last:04x}"));
        }
    }
    class.push(']');
    class
}

/// Each field of `StoryRequest` with its bounds (keeping the derived description and
/// `null`, which the server reads as absent).
fn bound_story_request(doc: &mut Value, limits: &DocumentLimits) {
    let max_new_tokens = u64::try_from(limits.max_new_tokens).unwrap_or(u64::MAX);
    let fields = [
        (
            "topic",
            json!({"type": "string", "pattern": topic_pattern()}),
        ),
        (
            "max_tokens",
            integer("uint32", MIN_MAX_TOKENS.into(), max_new_tokens),
        ),
        ("temperature", number(TEMPERATURE)),
        ("top_p", number(TOP_P)),
        ("top_k", integer("uint32", 0, u32::MAX.into())),
        ("repetition_penalty", number(REPETITION_PENALTY)),
        ("seed", integer("uint64", 0, u64::MAX)),
        (
            "seen",
            json!({
                "type": "array",
                "items": {"type": "string", "pattern": "^story-[0-9a-f]{16}$"},
                "maxItems": MAX_SEEN,
            }),
        ),
    ];
    let properties = &mut doc["components"]["schemas"]["StoryRequest"]["properties"];
    for (name, mut schema) in fields {
        let derived = &mut properties[name];
        let kind = schema["type"].clone();
        schema["type"] = json!([kind, "null"]);
        if let Some(description) = derived.get("description") {
            schema["description"] = description.clone();
        }
        *derived = schema;
    }
}

/// `GET /v1/stories` takes the same fields as the POST body, as query parameters.
fn story_query_from_body(doc: &mut Value) {
    let properties = doc["components"]["schemas"]["StoryRequest"]["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let parameters: Vec<Value> = properties
        .into_iter()
        .map(|(name, mut schema)| {
            let description = schema.as_object_mut().and_then(|s| s.remove("description"));
            let mut parameter = json!({"name": name, "in": "query", "required": false});
            if let Some(description) = description {
                parameter["description"] = description;
            }
            parameter["schema"] = without_null(schema);
            if parameter["schema"]["type"] == "array" {
                // One comma-separated value (`seen=a,b`), as the extractor reads it.
                parameter["style"] = json!("form");
                parameter["explode"] = json!(false);
            }
            parameter
        })
        .collect();
    doc.operation("/v1/stories", "get")["parameters"] = Value::Array(parameters);
}

/// A body field's schema as a query parameter's: a query has no `null`.
fn without_null(mut schema: Value) -> Value {
    if let Some(types) = schema["type"].as_array() {
        let kind = types.iter().find(|t| *t != "null").cloned();
        schema["type"] = kind.unwrap_or(Value::Null);
    }
    if let Some(choices) = schema["oneOf"].as_array() {
        let kept: Vec<Value> = choices
            .iter()
            .filter(|c| c["type"] != "null")
            .cloned()
            .collect();
        if let [one] = kept.as_slice() {
            let mut one = one.clone();
            if let Some(o) = one.as_object_mut() {
                o.remove("description");
            }
            return one;
        }
    }
    schema
}

/// `limit` of both list endpoints (the same check, `AppState::trend_limit`) and `source`.
fn bound_list_queries(doc: &mut Value, limits: &DocumentLimits) {
    let max_trends = u64::try_from(limits.max_trends).unwrap_or(u64::MAX);
    let sources: Vec<&str> = SourceKind::ALL.iter().map(|s| s.as_str()).collect();
    for path in ["/v1/trends", "/v1/stories/trending"] {
        let parameters = doc.operation(path, "get")["parameters"]
            .as_array_mut()
            .expect("list endpoints take query parameters");
        for parameter in parameters {
            match parameter["name"].as_str() {
                Some("limit") => parameter["schema"] = integer("uint64", 1, max_trends),
                Some("source") => parameter["schema"] = json!({"type": "string", "enum": sources}),
                _ => {}
            }
        }
    }
}

/// The 200 answer as Server-Sent Events beside JSON (see `api::sse`). As Open API 3.1
/// tools read an event stream, `schema` describes one event: its name and its `data`, a
/// line of JSON whose own schema is the `contentSchema`.
fn add_event_stream(operation: &mut Value) {
    let event = |name: &str, description: &str, data: &str| {
        json!({
            "type": "object",
            "description": description,
            "required": ["event", "data"],
            "properties": {
                "event": {"const": name},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": format!("#/components/schemas/{data}")},
                },
            },
        })
    };
    let example = format!(
        "event: token\ndata: {}\n\nevent: token\ndata: {}\n\n: keep-alive\n\nevent: done\ndata: {{\"id\": \"story-…\", \"story\": \"Once upon\", …}}\n\n",
        json!({"text": "Once"}),
        json!({"text": " upon"}),
    );
    operation["responses"]["200"]["content"]["text/event-stream"] = json!({
        "schema": {
            "description": format!(
                "One Server-Sent Event (with `\"stream\": true` or `Accept: text/event-stream`): `token` events, then exactly one `done` or `error` event. A comment line (`: keep-alive`) comes every {} s while no event does. Disconnecting cancels the generation unless other clients share it.",
                sse::KEEP_ALIVE.as_secs()
            ),
            "oneOf": [
                event("token", "New text of the story, in order", "StoryToken"),
                event("done", "The last event: the finished story, as the JSON answer", "StoryResponse"),
                event("error", "The last event when the generation failed: the same body as an HTTP error", "ErrorBody"),
            ],
        },
        "example": example,
    });
}

/// Headers and answers that every operation has (module doc).
fn add_common_answers(doc: &mut Value, limits: &DocumentLimits) {
    let error = |description: String| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        })
    };
    let request_id = json!({
        "description": "The request's id, as in the server's log lines and in error bodies",
        "required": true,
        "schema": {"type": "string", "minLength": 1},
    });
    let retry_after = |required: bool| {
        json!({
            "description": "Seconds to wait before retrying",
            "required": required,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        })
    };
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(operations) = item.as_object_mut() else {
            continue;
        };
        for operation in operations.values_mut() {
            let responses = operation["responses"]
                .as_object_mut()
                .expect("every operation has responses");
            let mut common = vec![
                (
                    "414",
                    format!(
                        "The URL is over `api.max_url_bytes` ({} bytes)",
                        limits.max_url_bytes
                    ),
                ),
                (
                    "431",
                    format!(
                        "The request's headers are over `api.max_header_bytes` ({} bytes)",
                        limits.max_header_bytes
                    ),
                ),
            ];
            if path.starts_with("/v1/") {
                common.push(("401", "Missing or wrong API key".into()));
                common.push(("429", "Rate limited (see Retry-After)".into()));
            }
            for (status, description) in common {
                responses
                    .entry(status)
                    .or_insert_with(|| error(description));
            }
            for (status, response) in responses.iter_mut() {
                let headers = response
                    .as_object_mut()
                    .expect("a response is an object")
                    .entry("headers")
                    .or_insert_with(|| Value::Object(Map::new()));
                headers["x-request-id"] = request_id.clone();
                match status.as_str() {
                    "429" => headers["Retry-After"] = retry_after(true),
                    "503" if path.starts_with("/v1/") => {
                        headers["Retry-After"] = retry_after(false)
                    }
                    _ => {}
                }
            }
        }
    }
}

/// From a story to the same story as a URL. The trend lists link nowhere: a link from
/// "the first trend's topic" breaks on an empty list (no trends yet, every source down).
fn add_links(doc: &mut Value) {
    doc.operation("/v1/stories", "post")["responses"]["200"]["links"] = json!({
        "TheSameStoryAsAUrl": {
            "operationId": "get_story",
            "description": "The same topic and style as a URL",
            "parameters": {
                "topic": "$response.body#/topic",
                "style": "$response.body#/style",
            },
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stories::validate::FIELDS;

    fn limits() -> DocumentLimits {
        DocumentLimits {
            max_new_tokens: 300,
            max_trends: 40,
            max_url_bytes: 8192,
            max_header_bytes: 16384,
        }
    }

    #[test]
    fn bounds_come_from_the_validators_and_the_configuration() {
        let doc = document(&limits());
        let body = &doc["components"]["schemas"]["StoryRequest"]["properties"];
        assert_eq!(body["max_tokens"]["maximum"], 300);
        assert_eq!(body["max_tokens"]["minimum"], 1);
        assert_eq!(body["top_p"]["exclusiveMinimum"], TOP_P.min);
        assert_eq!(body["temperature"]["maximum"], TEMPERATURE.max);
        assert_eq!(body["top_k"]["maximum"], u32::MAX);
        assert_eq!(body["seed"]["maximum"], u64::MAX);
        assert_eq!(body["seed"]["type"], json!(["integer", "null"]));
        let query = doc["paths"]["/v1/stories"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let max_tokens = query.iter().find(|p| p["name"] == "max_tokens").unwrap();
        assert_eq!(max_tokens["schema"]["type"], "integer");
        assert_eq!(max_tokens["schema"]["maximum"], 300);
        let style = query.iter().find(|p| p["name"] == "style").unwrap();
        assert_eq!(style["schema"]["$ref"], "#/components/schemas/Style");
        let trends = &doc["paths"]["/v1/trends"]["get"]["parameters"];
        assert_eq!(trends[0]["schema"]["maximum"], 40);
        assert_eq!(trends[1]["schema"]["enum"][0], "hackernews");
    }

    #[test]
    fn the_story_query_takes_exactly_the_fields_the_extractor_reads() {
        let doc = document(&limits());
        let mut names: Vec<&str> = doc["paths"]["/v1/stories"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        names.sort_unstable();
        let mut fields = FIELDS;
        fields.sort_unstable();
        assert_eq!(names, fields);
    }

    #[test]
    fn the_topic_pattern_excludes_exactly_the_blank_characters() {
        let pattern = topic_pattern();
        assert!(pattern.starts_with("[^\\u0000-\\u0020"), "{pattern}");
        // Every blank character is below U+10000, so \uXXXX escapes cover them all.
        assert!(!(0x10000..=0x10_ffff)
            .filter_map(char::from_u32)
            .any(prompt::is_blank));
    }

    #[test]
    fn both_story_endpoints_document_their_event_stream() {
        let doc = document(&limits());
        for method in ["get", "post"] {
            let content = &doc["paths"]["/v1/stories"][method]["responses"]["200"]["content"];
            assert!(content["application/json"].is_object());
            let events = &content["text/event-stream"]["schema"]["oneOf"];
            assert_eq!(events[1]["properties"]["event"]["const"], "done");
            assert_eq!(
                events[1]["properties"]["data"]["contentSchema"]["$ref"],
                "#/components/schemas/StoryResponse"
            );
        }
        assert!(doc["components"]["schemas"]["StoryToken"].is_object());
    }
}
