//! Turns one sequence's tokens into text deltas as they are produced.
//!
//! Two things make this more than `decode(new_token)`: byte-fallback tokens (and byte-level
//! BPE tokens) can carry part of a UTF-8 character (a run of them decodes to text only once
//! complete), and
//! SentencePiece-style decoders strip a leading space when a piece is decoded alone. So we
//! decode a short window that starts a few tokens back and emit only what grew past the
//! text already sent, holding back while a run of byte tokens may still grow. Stop
//! strings are checked on the text, and any tail that could still become a stop string is
//! held back until it is known not to be one.

use super::TextTokenizer;

/// Tokens kept before the new ones so the decoder sees their context (spaces, bytes).
const CONTEXT_TOKENS: usize = 6;

/// What the caller should do after a token was pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// Text that is now safe to send (may be empty).
    pub text: String,
    /// A stop string was found: the sequence ends, and `text` ends just before it.
    pub stopped: bool,
}

/// Incremental detokenizer with stop-string detection for one sequence.
pub struct Detokenizer {
    /// Context tokens (from the prompt's tail) followed by the generated tokens.
    ids: Vec<u32>,
    /// Start of the decoding window in `ids`.
    prefix_offset: usize,
    /// End of what has already been turned into `text`.
    read_offset: usize,
    /// All text decoded so far for the generated tokens.
    text: String,
    /// Bytes of `text` already sent to the client.
    sent: usize,
    stop: Vec<String>,
}

impl Detokenizer {
    pub fn new(prompt_ids: &[u32], stop: Vec<String>) -> Self {
        let context = &prompt_ids[prompt_ids.len().saturating_sub(CONTEXT_TOKENS)..];
        Self {
            ids: context.to_vec(),
            prefix_offset: 0,
            read_offset: context.len(),
            text: String::new(),
            sent: 0,
            stop,
        }
    }

    /// Adds a generated token and returns the text that became final.
    pub fn push(&mut self, token: u32, tokenizer: &TextTokenizer) -> Delta {
        self.ids.push(token);
        self.decode_pending(tokenizer, false);
        self.release(false)
    }

    /// Moves the text of tokens not yet decoded into `text`. Unless `force` is set, waits
    /// while the last token is a byte-fallback token: the run of bytes it belongs to may
    /// still grow, and the decoder turns a whole run into text (or into U+FFFD per byte
    /// when the run is not valid UTF-8) only once it is complete.
    fn decode_pending(&mut self, tokenizer: &TextTokenizer, force: bool) {
        let Some(&last) = self.ids.last() else {
            return;
        };
        if self.read_offset == self.ids.len() || (!force && tokenizer.is_byte_token(last)) {
            return;
        }
        let prefix = tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset])
            .unwrap_or_default();
        let window = tokenizer
            .decode(&self.ids[self.prefix_offset..])
            .unwrap_or_default();
        // A byte-level BPE token (GPT-2 style) can end inside a character, which the
        // decoder shows as U+FFFD until the token that completes it arrives.
        if !force && window.ends_with('\u{FFFD}') {
            return;
        }
        if window.len() > prefix.len() {
            let start = (prefix.len()..=window.len())
                .find(|&i| window.is_char_boundary(i))
                .unwrap_or(window.len());
            self.text.push_str(&window[start..]);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
        }
    }

    /// Sends whatever is held back, an incomplete character included (as U+FFFD); call
    /// when the sequence ends for another reason than a stop string.
    pub fn finish(&mut self, tokenizer: &TextTokenizer) -> String {
        self.decode_pending(tokenizer, true);
        self.release(true).text
    }

    /// All text of the generated tokens (stop string excluded once found).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn release(&mut self, flush: bool) -> Delta {
        // Any tail that could begin a stop string was held back, so a stop string can only
        // start in text not yet sent.
        let unsent = &self.text[self.sent..];
        let found = self
            .stop
            .iter()
            .filter_map(|s| unsent.find(s.as_str()))
            .min()
            .map(|i| self.sent + i);
        if let Some(at) = found {
            self.text.truncate(at);
            let text = self.text[self.sent..].to_string();
            self.sent = self.text.len();
            return Delta {
                text,
                stopped: true,
            };
        }
        let end = if flush {
            self.text.len()
        } else {
            self.text.len() - self.partial_stop_suffix()
        };
        let text = self.text[self.sent..end.max(self.sent)].to_string();
        self.sent = end.max(self.sent);
        Delta {
            text,
            stopped: false,
        }
    }

    /// Length of the longest tail of `text` that is a proper prefix of a stop string.
    fn partial_stop_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stop {
            for len in (1..stop.len()).rev() {
                if len <= best || len > self.text.len() - self.sent {
                    continue;
                }
                let start = self.text.len() - len;
                if self.text.is_char_boundary(start) && stop.starts_with(&self.text[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}
