//! Server-Sent Events for a story: `token` events (`{"text": delta}`) as the text comes,
//! then one `done` event with the whole [`StoryResponse`], or one `error` event with the
//! same body as an HTTP error. A comment line every [`KEEP_ALIVE`] keeps proxies from
//! closing a quiet stream. When the client disconnects, actix drops the body, which drops
//! the story stream: the generation is cancelled once no subscriber is left.

use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use futures_util::stream;
use serde::Serialize;
use utoipa::ToSchema;

use super::errors::{ApiError, ErrorBody};
use super::request_log::StoryNote;
use super::story_response::StoryResponse;
use crate::stories::{StoryEvent, StoryStream};

/// Interval of the keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// True when the client asks for `text/event-stream`.
pub fn accepts_event_stream(request: &HttpRequest) -> bool {
    request
        .headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// The streaming response of one story; `note` gets its token counts at the end.
pub fn respond(
    story: StoryStream,
    trend_lookup: Duration,
    started: Instant,
    request_id: Option<String>,
    note: StoryNote,
) -> HttpResponse {
    let variant = story.variant();
    let events = stream::unfold(Some(story), move |story| {
        let request_id = request_id.clone();
        let note = note.clone();
        async move {
            let mut story = story?;
            let next = tokio::select! {
                event = story.next() => event,
                () = actix_web::rt::time::sleep(KEEP_ALIVE) => {
                    return Some((Ok::<_, actix_web::Error>(Bytes::from_static(b": keep-alive\n\n")), Some(story)));
                }
            };
            let (frame, more) = match next? {
                StoryEvent::Delta(text) => (frame("token", &StoryToken { text }), true),
                StoryEvent::Done {
                    story: done,
                    cached,
                } => {
                    note.set_tokens(done.prompt_tokens, done.tokens);
                    let body = StoryResponse::new(&done, cached, trend_lookup, started)
                        .with_variant(variant);
                    (frame("done", &body), false)
                }
                StoryEvent::Failed(error) => {
                    let api = ApiError::from(error);
                    let body = ErrorBody::new(api.code(), api.to_string(), request_id);
                    (frame("error", &body), false)
                }
            };
            Some((Ok(frame), more.then_some(story)))
        }
    });
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx and similar proxies must pass events through as they come.
        .insert_header(("x-accel-buffering", HeaderValue::from_static("no")))
        .streaming(events)
}

/// The data of a `token` event.
#[derive(Serialize, ToSchema)]
pub struct StoryToken {
    /// New text, to append to what came before.
    text: String,
}

/// One SSE frame; JSON never holds a raw newline, so `data:` is one line.
fn frame(event: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|e| {
        format!(r#"{{"error":{{"code":"internal","message":"cannot encode event: {e}"}}}}"#)
    });
    Bytes::from(format!("event: {event}\ndata: {json}\n\n"))
}
