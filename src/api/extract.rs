//! Body and query extractors whose 400s name the field and what it accepts.
//!
//! actix's `web::Json` and `web::Query` answer a wrong type with serde's words ("invalid
//! type: string \"ten\", expected u32 at line 1 column 19", "invalid digit found in
//! string"). [`Body`] and [`Query`] read the same input, find the failing field with
//! `serde_path_to_error`, and answer with that field's rule from [`Fields`]: the words its
//! range check uses too, so `{"max_tokens": "ten"}` and `{"max_tokens": 9999}` both say
//! "`max_tokens` must be a whole number between 1 and 512". The body keeps `web::Json`'s
//! content type, size limit and syntax checks (`web::JsonConfig`).

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::errors::ApiError;
use super::AppState;

/// A request type whose every field can say what it accepts.
pub trait Fields: DeserializeOwned {
    /// Every field's name, in the order the API documents them.
    const NAMES: &'static [&'static str];

    /// What `field` (one of [`Self::NAMES`]) accepts, in words: "a whole number between 1
    /// and 512".
    fn rule(field: &str, state: &AppState) -> String;
}

/// A JSON body of `T`; a field of the wrong type or an unknown one is a 400 naming it.
pub struct Body<T>(pub T);

/// The query string as `T`; a bad parameter or an unknown one is a 400 naming it.
pub struct Query<T>(pub T);

type Extracting<T> = Pin<Box<dyn Future<Output = Result<T, actix_web::Error>>>>;

impl<T: Fields + 'static> FromRequest for Body<T> {
    type Error = actix_web::Error;
    type Future = Extracting<Self>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let raw = web::Json::<Box<RawValue>>::from_request(request, payload);
        let request = request.clone();
        Box::pin(async move {
            let raw = raw.await?;
            let json = raw.get();
            let parsed =
                serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(json));
            parsed.map(Body).map_err(|error| {
                let (path, message) = (error.path().to_string(), error.inner().to_string());
                let given = |name: &str| json_value(json, name);
                field_error::<T>(&request, Input::Body, &path, &message, given).into()
            })
        })
    }
}

impl<T: Fields + 'static> FromRequest for Query<T> {
    type Error = actix_web::Error;
    /// Parsing the query string waits for nothing.
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let query = request.query_string();
        let pairs = form_urlencoded::parse(query.as_bytes());
        let parsed = serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs));
        std::future::ready(parsed.map(Query).map_err(|error| {
            let (path, message) = (error.path().to_string(), error.inner().to_string());
            let given = |name: &str| query_value(query, name);
            field_error::<T>(request, Input::Query, &path, &message, given).into()
        }))
    }
}

/// Where the request's parameters come from.
#[derive(Clone, Copy)]
enum Input {
    Body,
    Query,
}

impl Input {
    fn noun(self) -> &'static str {
        match self {
            Self::Body => "field",
            Self::Query => "query parameter",
        }
    }
}

/// The error of a body or query that parsed but did not fit `T`. `path` is where
/// `serde_path_to_error` saw the failure (`.` for the whole input); `given` shows a
/// field's value as the client wrote it.
fn field_error<T: Fields>(
    request: &HttpRequest,
    input: Input,
    path: &str,
    serde_message: &str,
    given: impl Fn(&str) -> Option<String>,
) -> ApiError {
    let accepted = T::NAMES.join(", ");
    // serde's own words for these two (`de::Error::unknown_field`, `duplicate_field`).
    if let Some(name) = quoted_after(serde_message, "unknown field `") {
        return ApiError::UnknownField {
            kind: input.noun(),
            name: name.to_string(),
            accepted,
        };
    }
    if let Some(name) = quoted_after(serde_message, "duplicate field `") {
        return ApiError::BadRequest(format!("`{name}` is given more than once"));
    }
    let state = request.app_data::<web::Data<AppState>>();
    match (state, T::NAMES.iter().find(|n| **n == path)) {
        (Some(state), Some(&name)) => ApiError::InvalidField {
            field: name,
            rule: T::rule(name, state),
            value: given(name).unwrap_or_else(|| "an invalid value".into()),
        },
        // Not one field's fault: the input as a whole has the wrong shape.
        _ => ApiError::BadRequest(match input {
            Input::Body => format!(
                "the request body must be a JSON object with the fields {accepted} (all optional)"
            ),
            Input::Query => format!(
                "the query string cannot be read ({serde_message}); its parameters are {accepted} (all optional)"
            ),
        }),
    }
}

/// `name` in "...`name`..." right after `prefix`, if the message starts so.
fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// Longest value an error message repeats.
const SHOWN_CHARS: usize = 40;

/// The JSON of `field` in a body that is an object, as the client wrote it (shortened).
fn json_value(json: &str, field: &str) -> Option<String> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).ok()?;
    object.get(field).map(|v| shorten(v.to_string()))
}

/// The raw value of `field` in a query string: numbers and booleans as they are, other
/// text quoted (shortened).
fn query_value(query: &str, field: &str) -> Option<String> {
    let (_, raw) = form_urlencoded::parse(query.as_bytes()).find(|(name, _)| name == field)?;
    let plain = raw.parse::<f64>().is_ok() || raw == "true" || raw == "false";
    Some(shorten(if plain {
        raw.into_owned()
    } else {
        serde_json::Value::from(raw.as_ref()).to_string()
    }))
}

fn shorten(text: String) -> String {
    if text.chars().count() <= SHOWN_CHARS {
        return text;
    }
    let cut: String = text.chars().take(SHOWN_CHARS).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_shown_as_given_and_shortened() {
        assert_eq!(
            json_value(r#"{"max_tokens": "ten"}"#, "max_tokens").as_deref(),
            Some(r#""ten""#)
        );
        assert_eq!(json_value(r#"{"a": -1.5}"#, "a").as_deref(), Some("-1.5"));
        assert_eq!(json_value("[1]", "a"), None);
        assert_eq!(query_value("a=1&b=-3", "b").as_deref(), Some("-3"));
        assert_eq!(query_value("b=abc", "b").as_deref(), Some(r#""abc""#));
        assert_eq!(query_value("b=", "b").as_deref(), Some(r#""""#));
        let long = query_value(&format!("b={}", "x".repeat(100)), "b").unwrap();
        assert_eq!(long.chars().count(), SHOWN_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
