//! "Another story": a story about a topic that the client has not seen yet.
//!
//! A client asks with the ids of the stories it has shown (`seen`). The candidates are the
//! topic's *variants*: the stories of seeds derived from the request itself (topic, style,
//! sampling, model; [`crate::stories::StoryKey::variant_seed`]). Every replica behind a load
//! balancer derives the same seeds and writes the same stories under the same ids
//! ([`crate::stories::StoryKey::story_id`]), so any of them can tell which ones a client has
//! seen. The first variants of the top trends are written ahead at background priority
//! (`pregen`); the answer is the first variant not seen that is ready, else the first one
//! not seen, written now.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// Most ids a request may list as seen.
pub const MAX_SEEN: usize = 32;

/// Ids of the stories a client has seen, as sent: a JSON array of strings, or in a query
/// string one comma-separated list (`seen=story-…,story-…`; OpenAPI's `explode: false`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen(pub Vec<String>);

impl<'de> Deserialize<'de> for Seen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A JSON body must send a list; a query string's value is text whatever is asked for
        // (serde_urlencoded hands it over as a string).
        deserializer.deserialize_seq(SeenVisitor)
    }
}

struct SeenVisitor;

impl<'de> Visitor<'de> for SeenVisitor {
    type Value = Seen;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of story ids")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Seen, E> {
        if text.is_empty() {
            return Ok(Seen::default());
        }
        Ok(Seen(text.split(',').map(str::to_string).collect()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seen, A::Error> {
        let mut ids = Vec::new();
        while let Some(id) = seq.next_element::<String>()? {
            // Stop reading a hostile list early; validation names the bound.
            if ids.len() > MAX_SEEN {
                return Err(de::Error::invalid_length(
                    ids.len() + 1,
                    &"at most 32 story ids",
                ));
            }
            ids.push(id);
        }
        Ok(Seen(ids))
    }
}

/// True for an id as the server writes them: `story-` and 16 lowercase hex digits.
pub fn is_story_id(id: &str) -> bool {
    id.strip_prefix("story-").is_some_and(|hex| {
        hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// How "another story" was answered: the `variant` field of the answer and the `answer`
/// label of `trendstory_story_another_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VariantAnswer {
    /// Written ahead (or for another client before): no generation ran for this request.
    Ready,
    /// None was ready: written for this request (or joined while being written).
    New,
}

impl VariantAnswer {
    pub const ALL: [Self; 2] = [Self::Ready, Self::New];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::New => "new",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_reads_a_json_list_and_a_query_list() {
        let json: Seen = serde_json::from_str(r#"["story-0123456789abcdef", "x"]"#).unwrap();
        assert_eq!(json.0, ["story-0123456789abcdef", "x"]);
        #[derive(Deserialize)]
        struct Query {
            seen: Seen,
        }
        let query: Query = serde_urlencoded::from_str("seen=story-0123456789abcdef,b").unwrap();
        assert_eq!(query.seen.0, ["story-0123456789abcdef", "b"]);
        let empty: Query = serde_urlencoded::from_str("seen=").unwrap();
        assert!(empty.seen.0.is_empty());
        assert!(serde_json::from_str::<Seen>("3").is_err());
        assert!(serde_json::from_str::<Seen>(r#""story-0123456789abcdef""#).is_err());
        let long = serde_json::to_string(&vec!["story-0123456789abcdef"; 1000]).unwrap();
        assert!(serde_json::from_str::<Seen>(&long).is_err());
    }

    #[test]
    fn story_ids_are_exactly_the_servers_form() {
        assert!(is_story_id("story-0123456789abcdef"));
        for bad in [
            "story-0123456789ABCDEF",
            "story-0123456789abcde",
            "story-0123456789abcdef0",
            "0123456789abcdef",
            "story-012345678_abcdef",
            "",
        ] {
            assert!(!is_story_id(bad), "{bad}");
        }
    }
}
