//! Turning raw source titles into one ranking: clean, drop empties, de-duplicate across
//! sources, normalize each source's scores to `0..=1`, weight and merge.
//!
//! Scores are log-scaled against the source's best item (`ln(1+s) / ln(1+max)`) because
//! upstream scales differ by orders of magnitude (HN points vs. Wikipedia views) and are
//! heavy-tailed; a source without usable scores is ranked by position instead. A topic
//! listed by several sources sums their weighted scores, so agreement lifts it.
//!
//! A topic's context (why it trends) is upstream text too: it gets the same cleaning as
//! titles, capped at [`MAX_CONTEXT_CHARS`], and comes from the highest-weighted source that
//! gives one for the topic.

use std::collections::HashMap;
use std::time::SystemTime;

use super::{RawTrend, SourceKind};

/// Longest context kept; longer text is cut at a word boundary and ends with `…`.
pub const MAX_CONTEXT_CHARS: usize = 300;

/// One source's contribution to a merge.
pub struct SourceInput<'a> {
    pub source: SourceKind,
    pub items: &'a [RawTrend],
    pub weight: f64,
    /// When this list was fetched (becomes the trend's `last_seen`).
    pub fetched_at: SystemTime,
    /// When this source was last attempted (becomes the trend's `fetched_at`).
    pub attempted_at: SystemTime,
    /// Whether the latest attempt failed, so this list is the last good one.
    pub stale: bool,
}

/// A merged topic before the caller adds `first_seen` and the rank.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub key: String,
    pub topic: String,
    pub sources: Vec<SourceKind>,
    pub score: f64,
    pub url: Option<String>,
    /// Cleaned; see the module doc for which source it comes from.
    pub context: Option<String>,
    pub last_seen: SystemTime,
    pub fetched_at: SystemTime,
    pub stale: bool,
}

/// Decodes HTML entities (named common ones and numeric), replaces control characters,
/// collapses whitespace and caps the length at a word boundary. `None` if nothing is left.
pub fn clean_title(raw: &str, max_chars: usize) -> Option<String> {
    let decoded = decode_entities(raw);
    let spaced: String = decoded
        .chars()
        .map(|c| {
            if c.is_control() || c.is_whitespace() {
                ' '
            } else {
                c
            }
        })
        .filter(|c| !matches!(c, '\u{200b}'..='\u{200f}' | '\u{feff}'))
        .collect();
    let collapsed = spaced.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.is_empty() {
        return None;
    }
    if collapsed.chars().count() <= max_chars {
        return Some(collapsed);
    }
    let cut: String = collapsed
        .chars()
        .take(max_chars.saturating_sub(1))
        .collect();
    let cut = match cut.rfind(' ') {
        Some(space) if space > cut.len() / 2 => &cut[..space],
        _ => cut.as_str(),
    };
    Some(format!(
        "{}…",
        cut.trim_end_matches([' ', ',', ';', ':', '-'])
    ))
}

/// Case and punctuation insensitive identity of a topic: lower-case alphanumeric words.
pub fn dedupe_key(title: &str) -> String {
    title
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn decode_entities(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let decoded = tail
            .find(';')
            .filter(|&semi| semi <= 10)
            .and_then(|semi| entity(&tail[1..semi]).map(|c| (c, semi)));
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = &tail[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return char::from_u32(code);
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "ndash" => '–',
        "mdash" => '—',
        "hellip" => '…',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "eacute" => 'é',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        _ => return None,
    })
}

/// Normalizes `score`s of one source to `0..=1`.
fn normalized_scores(items: &[RawTrend]) -> Vec<f64> {
    let max = items.iter().map(|t| t.score).fold(0.0_f64, f64::max);
    let n = items.len() as f64;
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if max > 0.0 && t.score.is_finite() && t.score > 0.0 {
                (1.0 + t.score).ln() / (1.0 + max).ln()
            } else if max > 0.0 {
                0.0
            } else {
                1.0 - i as f64 / n
            }
        })
        .collect()
}

/// Cleans, de-duplicates and merges every input, best first (ties by topic, for stable
/// output). Within one source a repeated topic counts once, at its best score.
pub fn merge(inputs: &[SourceInput<'_>], max_title_chars: usize) -> Vec<Merged> {
    let mut merged: Vec<Merged> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    // (merged index, source) pairs already counted, and the contribution that named the topic.
    let mut counted: HashMap<(usize, SourceKind), f64> = HashMap::new();
    let mut best: HashMap<usize, f64> = HashMap::new();
    // (source weight, contribution) of the item whose context a topic holds.
    let mut context_from: HashMap<usize, (f64, f64)> = HashMap::new();

    for input in inputs {
        for (item, norm) in input.items.iter().zip(normalized_scores(input.items)) {
            let Some(topic) = clean_title(&item.title, max_title_chars) else {
                continue;
            };
            let key = dedupe_key(&topic);
            if key.is_empty() {
                continue;
            }
            let contribution = norm * input.weight;
            let at = *index.entry(key.clone()).or_insert_with(|| {
                merged.push(Merged {
                    key,
                    topic: topic.clone(),
                    sources: Vec::new(),
                    score: 0.0,
                    url: None,
                    context: None,
                    last_seen: input.fetched_at,
                    fetched_at: input.attempted_at,
                    stale: true,
                });
                merged.len() - 1
            });
            let entry = &mut merged[at];
            match counted.get_mut(&(at, input.source)) {
                Some(previous) if *previous >= contribution => continue,
                Some(previous) => {
                    entry.score += contribution - *previous;
                    *previous = contribution;
                }
                None => {
                    counted.insert((at, input.source), contribution);
                    entry.score += contribution;
                    entry.sources.push(input.source);
                }
            }
            if best.get(&at).is_none_or(|b| contribution > *b) {
                best.insert(at, contribution);
                entry.topic = topic;
                if item.url.is_some() {
                    entry.url = item.url.clone();
                }
            }
            if entry.url.is_none() {
                entry.url = item.url.clone();
            }
            // Highest source weight wins; between equal weights, the better-scored item.
            let rank = (input.weight, contribution);
            let outranks = context_from
                .get(&at)
                .is_none_or(|held| rank.0 > held.0 || (rank.0 == held.0 && rank.1 > held.1));
            if outranks {
                if let Some(context) = item
                    .context
                    .as_deref()
                    .and_then(|c| clean_title(c, MAX_CONTEXT_CHARS))
                {
                    entry.context = Some(context);
                    context_from.insert(at, rank);
                }
            }
            entry.last_seen = entry.last_seen.max(input.fetched_at);
            entry.fetched_at = entry.fetched_at.max(input.attempted_at);
            entry.stale &= input.stale;
        }
    }
    for entry in &mut merged {
        entry.sources.sort();
    }
    merged.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.topic.cmp(&b.topic))
    });
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn raw(title: &str, score: f64) -> RawTrend {
        RawTrend {
            title: title.into(),
            score,
            url: None,
            context: None,
        }
    }

    fn with_context(title: &str, score: f64, context: &str) -> RawTrend {
        RawTrend {
            context: Some(context.into()),
            ..raw(title, score)
        }
    }

    fn input<'a>(source: SourceKind, items: &'a [RawTrend], stale: bool) -> SourceInput<'a> {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        SourceInput {
            source,
            items,
            weight: 1.0,
            fetched_at: t,
            attempted_at: t,
            stale,
        }
    }

    #[test]
    fn clean_title_decodes_entities_and_whitespace() {
        assert_eq!(
            clean_title(
                "  Tom &amp; Jerry&#x27;s\t\n&quot;Big&quot;\u{0007} day&nbsp;out ",
                120
            )
            .as_deref(),
            Some("Tom & Jerry's \"Big\" day out")
        );
        assert_eq!(
            clean_title("AT&T &bogus; & co", 120).as_deref(),
            Some("AT&T &bogus; & co")
        );
        assert_eq!(
            clean_title("Caf&eacute; Zoë — 東京 &#8212; ok", 120).as_deref(),
            Some("Café Zoë — 東京 — ok")
        );
    }

    #[test]
    fn clean_title_drops_empty_and_caps_length() {
        assert_eq!(clean_title(" \u{200b}\n\t ", 120), None);
        assert_eq!(clean_title("&nbsp;", 120), None);
        let long = clean_title("one two three four five six seven eight", 20).unwrap();
        assert_eq!(long, "one two three four…");
        assert!(long.chars().count() <= 20);
        let unbroken = clean_title(&"é".repeat(50), 10).unwrap();
        assert_eq!(unbroken.chars().count(), 10);
        assert!(unbroken.ends_with('…'));
    }

    #[test]
    fn dedupe_key_ignores_case_and_punctuation() {
        assert_eq!(dedupe_key("Super Bowl LI!"), dedupe_key("super-bowl   li"));
        assert_eq!(
            dedupe_key("Bowling_Green_massacre"),
            "bowling green massacre"
        );
        assert_ne!(dedupe_key("Rust 1.80"), dedupe_key("Rust 1.81"));
        assert_eq!(dedupe_key("Zoë"), "zoë");
    }

    #[test]
    fn merge_sums_sources_and_ranks() {
        let hn = [raw("Rust 2.0 released", 500.0), raw("Other story", 50.0)];
        let wiki = [raw("rust 2.0 Released!", 1_000_000.0), raw("Cats", 10.0)];
        let merged = merge(
            &[
                input(SourceKind::HackerNews, &hn, false),
                input(SourceKind::Wikipedia, &wiki, true),
            ],
            120,
        );
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[0].key, "rust 2 0 released");
        assert_eq!(
            merged[0].sources,
            vec![SourceKind::HackerNews, SourceKind::Wikipedia]
        );
        assert!((merged[0].score - 2.0).abs() < 1e-9, "{}", merged[0].score);
        assert!(!merged[0].stale, "confirmed by HN's fresh fetch");
        let cats = merged.iter().find(|m| m.key == "cats").unwrap();
        assert!(cats.stale, "only the stale source lists it");
        assert!(merged.windows(2).all(|w| w[0].score >= w[1].score));
    }

    #[test]
    fn duplicates_within_a_source_count_once() {
        let items = [
            raw("Same", 100.0),
            raw("same!", 100.0),
            raw("", 5.0),
            raw("&#32;", 5.0),
        ];
        let merged = merge(&[input(SourceKind::Wikipedia, &items, false)], 120);
        assert_eq!(merged.len(), 1);
        assert!((merged[0].score - 1.0).abs() < 1e-9);
        assert_eq!(merged[0].sources, vec![SourceKind::Wikipedia]);
    }

    #[test]
    fn context_comes_from_the_highest_weighted_source_that_has_one() {
        let hn = [with_context("Rust 2.0 released", 500.0, "github.com")];
        let reddit = [with_context(
            "rust 2.0 released!",
            900.0,
            "r/programming (News)",
        )];
        let google = [raw("Rust 2.0 Released", 50.0)];
        let wiki = [with_context(
            "Cats",
            10.0,
            "  Small &amp; furry\n\tanimals\u{0007} ",
        )];
        let mut inputs = [
            input(SourceKind::HackerNews, &hn, false),
            input(SourceKind::Reddit, &reddit, false),
            input(SourceKind::GoogleTrends, &google, false),
            input(SourceKind::Wikipedia, &wiki, false),
        ];
        inputs[0].weight = 0.5;
        inputs[1].weight = 2.0;
        inputs[2].weight = 3.0; // highest weight, but no context
        let merged = merge(&inputs, 120);
        let rust = merged
            .iter()
            .find(|m| m.key == "rust 2 0 released")
            .unwrap();
        assert_eq!(rust.sources.len(), 3);
        assert_eq!(rust.context.as_deref(), Some("r/programming (News)"));
        let cats = merged.iter().find(|m| m.key == "cats").unwrap();
        assert_eq!(cats.context.as_deref(), Some("Small & furry animals"));

        // Order of the inputs does not matter: the weight decides.
        inputs.reverse();
        let merged = merge(&inputs, 120);
        let rust = merged
            .iter()
            .find(|m| m.key == "rust 2 0 released")
            .unwrap();
        assert_eq!(rust.context.as_deref(), Some("r/programming (News)"));

        // Equal weights: the better-scored item's context.
        let a = [
            with_context("Topic", 10.0, "weak"),
            with_context("Other", 1000.0, "x"),
        ];
        let b = [with_context("topic", 100.0, "strong")];
        let merged = merge(
            &[
                input(SourceKind::HackerNews, &a, false),
                input(SourceKind::Reddit, &b, false),
            ],
            120,
        );
        let topic = merged.iter().find(|m| m.key == "topic").unwrap();
        assert_eq!(topic.context.as_deref(), Some("strong"));
    }

    #[test]
    fn context_is_cleaned_and_capped() {
        let long = format!("{} end", "word ".repeat(100));
        let items = [
            with_context("Long", 3.0, &long),
            with_context("Blank", 2.0, " \u{200b}&nbsp;\n "),
            raw("None", 1.0),
        ];
        let merged = merge(&[input(SourceKind::Wikipedia, &items, false)], 120);
        let long = merged[0].context.as_deref().unwrap();
        assert_eq!(merged[0].topic, "Long");
        assert!(long.chars().count() <= MAX_CONTEXT_CHARS, "{long}");
        assert!(long.ends_with("word…"), "cut at a word boundary: {long}");
        assert_eq!(merged[1].context, None, "nothing left after cleaning");
        assert_eq!(merged[2].context, None);
    }

    #[test]
    fn scoreless_sources_rank_by_position() {
        let items = [raw("first", 0.0), raw("second", 0.0)];
        let merged = merge(&[input(SourceKind::File, &items, false)], 120);
        assert_eq!(merged[0].topic, "first");
        assert!(merged[0].score > merged[1].score);
    }
}
