//! One log line per request, written once its response has gone out (for a stream, after
//! its last event, so the latency is the whole stream's): method, route pattern, status,
//! latency, request id, client address, whether the body was sent to its end, and for
//! stories the cache outcome and token counts.
//!
//! The line's target is this module (`trendstory::api::request_log`), so `RUST_LOG` can
//! turn it down alone. Probes and `/metrics` log at `debug` (a load balancer polls them
//! every few seconds), 5xx answers at `warn`, the rest at `info`. `server.log_format =
//! "json"` makes each line one JSON object with these fields.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::web::Bytes;
use actix_web::HttpMessage;

use super::connections::InProgress;
use crate::stories::{millis, CacheOutcome};

/// Routes polled by machines, logged at `debug`.
const QUIET_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// What a story handler adds to its request's line; kept in the request's extensions
/// and shared with the response stream, which fills in the tokens when it ends.
#[derive(Debug, Clone, Default)]
pub struct StoryNote(Arc<Mutex<StoryFields>>);

#[derive(Debug, Clone, Copy, Default)]
struct StoryFields {
    cache: Option<CacheOutcome>,
    prompt_tokens: Option<usize>,
    tokens: Option<usize>,
}

impl StoryNote {
    /// The note of `request`, created on first use.
    pub fn of(request: &impl HttpMessage) -> Self {
        request
            .extensions_mut()
            .get_or_insert_with(StoryNote::default)
            .clone()
    }

    pub fn set_cache(&self, outcome: CacheOutcome) {
        self.update(|f| f.cache = Some(outcome));
    }

    pub fn set_tokens(&self, prompt_tokens: usize, tokens: usize) {
        self.update(|f| {
            f.prompt_tokens = Some(prompt_tokens);
            f.tokens = Some(tokens);
        });
    }

    fn update(&self, change: impl FnOnce(&mut StoryFields)) {
        change(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn fields(&self) -> StoryFields {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request's line, written when dropped (with the response body that carries it).
pub struct RequestLine {
    pub method: String,
    pub route: String,
    pub status: u16,
    pub request_id: Option<String>,
    pub client: String,
    pub started: Instant,
    pub story: Option<StoryNote>,
    /// The body reached its end (false: the client left, or the server stopped, first).
    complete: bool,
}

impl RequestLine {
    pub fn new(method: String, client: String, started: Instant) -> Self {
        Self {
            method,
            route: String::new(),
            status: 0,
            request_id: None,
            client,
            started,
            story: None,
            complete: false,
        }
    }
}

impl RequestLine {
    /// Writes the line now, for a request that ended without a response body.
    pub fn end(mut self, status: u16) {
        self.status = status;
    }
}

macro_rules! request_event {
    ($level:expr, $line:expr, $story:expr) => {
        tracing::event!(
            parent: None,
            $level,
            method = %$line.method,
            route = %$line.route,
            status = $line.status,
            latency_ms = millis($line.started.elapsed()),
            request_id = $line.request_id.as_deref().map(tracing::field::display),
            client = %$line.client,
            complete = $line.complete,
            cache = $story.cache.map(|c| tracing::field::display(c.as_str())),
            prompt_tokens = $story.prompt_tokens,
            tokens = $story.tokens,
            "request"
        )
    };
}

impl Drop for RequestLine {
    fn drop(&mut self) {
        let story = self
            .story
            .as_ref()
            .map(StoryNote::fields)
            .unwrap_or_default();
        if QUIET_ROUTES.contains(&self.route.as_str()) {
            request_event!(tracing::Level::DEBUG, self, story);
        } else if self.status >= 500 {
            request_event!(tracing::Level::WARN, self, story);
        } else {
            request_event!(tracing::Level::INFO, self, story);
        }
    }
}

/// A response body that writes its request's line when it is dropped: after the last
/// byte was taken, or when the client left. Until then it also keeps its request in
/// progress on its connection (`in_progress`), which the idle watchdog reads.
pub struct LoggedBody {
    body: BoxBody,
    line: RequestLine,
    _in_progress: Option<InProgress>,
}

impl LoggedBody {
    pub fn new(body: BoxBody, mut line: RequestLine, in_progress: Option<InProgress>) -> Self {
        // An empty body (HEAD, 204, 304) is never polled: it is complete as it is.
        line.complete = matches!(body.size(), BodySize::None | BodySize::Sized(0));
        Self {
            body,
            line,
            _in_progress: in_progress,
        }
    }
}

impl MessageBody for LoggedBody {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        let next = Pin::new(&mut this.body).poll_next(cx);
        if let Poll::Ready(None) = next {
            this.line.complete = true;
        }
        next
    }
}
