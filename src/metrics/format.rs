//! The two exposition formats of `/metrics`, chosen by the scraper's `Accept` header:
//! OpenMetrics, which Prometheus asks for and `prometheus-client` writes, and the
//! Prometheus text format 0.0.4 for every other client (`curl | promtool check metrics`),
//! rewritten from the OpenMetrics text.

/// The exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text: what Prometheus asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4: for clients that do not ask for OpenMetrics.
    Text,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it (as Prometheus's does), else the
    /// Prometheus text format, as the official client libraries do.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites `prometheus-client`'s OpenMetrics text as the Prometheus text format 0.0.4.
/// The samples are the same; only the metadata differs: a counter's HELP and TYPE name
/// its `_total` series, `unknown` is `untyped`, and there are no `# UNIT` or `# EOF`
/// lines. (The crate writes help text as given, unescaped, in both formats.)
pub(super) fn to_text_format(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(&name) {
                    "_total"
                } else {
                    ""
                };
                let tail = if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
    }

    #[test]
    fn the_text_format_names_counters_by_their_total_and_drops_openmetrics_lines() {
        let openmetrics = "# HELP a_tokens Tokens.\n# TYPE a_tokens counter\na_tokens_total 3\n\
            # HELP a_wait_seconds Wait.\n# TYPE a_wait_seconds histogram\n# UNIT a_wait_seconds seconds\n\
            a_wait_seconds_sum 1.5\na_wait_seconds_count 2\na_wait_seconds_bucket{le=\"+Inf\"} 2\n\
            # HELP a_odd Odd.\n# TYPE a_odd unknown\na_odd 1\n# EOF\n";
        assert_eq!(
            to_text_format(openmetrics),
            "# HELP a_tokens_total Tokens.\n# TYPE a_tokens_total counter\na_tokens_total 3\n\
            # HELP a_wait_seconds Wait.\n# TYPE a_wait_seconds histogram\n\
            a_wait_seconds_sum 1.5\na_wait_seconds_count 2\na_wait_seconds_bucket{le=\"+Inf\"} 2\n\
            # HELP a_odd Odd.\n# TYPE a_odd untyped\na_odd 1\n"
        );
    }
}
