//! Chat templates: a model folder's `chat_template` from `tokenizer_config.json` (or the
//! built-in Zephyr-style fallback), checked at load with a probe conversation and rendered with
//! minijinja as Hugging Face TGI does (`messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, `raise_exception`, Python string methods). [`super::prompt::PromptBuilder`]
//! renders it once per style.

use std::path::Path;

use serde::Serialize;

/// Why a chat template cannot be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// `tokenizer_config.json` is unreadable, not JSON, or holds fields of the wrong shape.
    #[error("cannot read chat template settings from {path}: {reason}")]
    File {
        path: std::path::PathBuf,
        reason: String,
    },
    /// The template does not parse as Jinja.
    #[error("chat template from {origin} does not parse: {reason}")]
    Syntax { origin: String, reason: String },
    /// The template parses but fails on a conversation, or does not show both messages verbatim.
    #[error("chat template from {origin} cannot render a story prompt: {reason}")]
    Render { origin: String, reason: String },
}

/// Built-in template for model folders without a `chat_template`: TinyLlama-Chat's
/// Zephyr-style turns, `<|system|>\n{system}</s>\n<|user|>\n{user}</s>\n<|assistant|>\n`
/// (with the folder's EOS token in place of `</s>` when it names one).
pub const FALLBACK_TEMPLATE: &str = "{% for message in messages %}\
<|{{ message.role }}|>\n{{ message.content }}{{ eos_token }}\n\
{% endfor %}\
{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/// Stands in for the user message when rendering the template parts; private-use
/// characters, so no real template or system prompt holds it.
pub(super) const USER_SENTINEL: &str = "\u{e000}trendstory-user-message\u{e001}";
/// Stands in for the system message in the probe render at load time.
const SYSTEM_PROBE: &str = "\u{e000}trendstory-system-message\u{e001}";

/// A model's chat template, checked at load by rendering a probe conversation.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    /// The file the template came from, or a note that it is the built-in fallback; it also
    /// names the template inside minijinja, so its errors point there.
    origin: String,
    pub(super) bos_token: Option<String>,
    eos_token: Option<String>,
}

/// The role/content pair templates iterate over.
#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

/// The variables TGI passes to a chat template (tools aside).
#[derive(Serialize)]
struct RenderContext<'a> {
    messages: [Message<'a>; 2],
    add_generation_prompt: bool,
    bos_token: Option<&'a str>,
    eos_token: Option<&'a str>,
}

/// What `tokenizer_config.json` says about chat formatting.
struct TemplateSettings {
    template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// Loads the chat template of a model folder: `chat_template` from
    /// `tokenizer_config.json` (a string, or a list of `{name, template}` of which `default`
    /// is taken), with its `bos_token` and `eos_token` (strings or `{content}` objects).
    /// Without the file or without a `chat_template`, [`FALLBACK_TEMPLATE`] is used, with
    /// `<s>` and `</s>` unless the file names other tokens.
    ///
    /// # Errors
    /// `TemplateFile` naming the file when it cannot be read or parsed; `TemplateSyntax` or
    /// `TemplateRender` naming it when the template does not parse, fails on a system plus
    /// user conversation, or does not show both messages verbatim exactly once.
    pub fn load(dir: &Path) -> Result<Self, TemplateError> {
        let path = dir.join("tokenizer_config.json");
        let settings = if path.is_file() {
            read_settings(&path)?
        } else {
            TemplateSettings {
                template: None,
                bos_token: None,
                eos_token: None,
            }
        };
        match settings.template {
            Some(template) => Self::from_source(
                template,
                path.display().to_string(),
                settings.bos_token,
                settings.eos_token,
            ),
            None => Self::from_source(
                FALLBACK_TEMPLATE.to_string(),
                format!(
                    "the built-in fallback (no chat_template in {})",
                    dir.display()
                ),
                Some(settings.bos_token.unwrap_or_else(|| "<s>".into())),
                Some(settings.eos_token.unwrap_or_else(|| "</s>".into())),
            ),
        }
    }

    fn from_source(
        source: String,
        origin: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TemplateError> {
        // `new` (filters such as `trim` and `tojson`, tests, globals) is marked deprecated
        // while minijinja's `serde` feature is off; that feature only acknowledges serde use.
        #[allow(deprecated)]
        let mut env = minijinja::Environment::new();
        // What Hugging Face uses (and TinyLlama's template needs: without them every
        // `{% %}` line adds a newline).
        env.set_trim_blocks(true);
        // The template is named after its file, and minijinja would pick JSON escaping for a
        // `.json` name: prompts are plain text.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(origin.clone(), source)
            .map_err(|e| TemplateError::Syntax {
                origin: origin.clone(),
                reason: e.to_string(),
            })?;
        let template = Self {
            env,
            origin,
            bos_token,
            eos_token,
        };
        let probe = template.render(SYSTEM_PROBE, USER_SENTINEL)?;
        for (what, marker) in [("system", SYSTEM_PROBE), ("user", USER_SENTINEL)] {
            let found = probe.matches(marker).count();
            if found != 1 {
                return Err(template.render_error(format!(
                    "the {what} message must appear exactly once and verbatim, \
                     but a probe conversation shows it {found} times"
                )));
            }
        }
        Ok(template)
    }

    /// Where the template came from: its file, or a note that it is the built-in fallback.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Renders a system plus user conversation, ending with the assistant's turn opening.
    ///
    /// # Errors
    /// `TemplateRender` when the template fails (for example by calling `raise_exception`).
    pub fn render(&self, system: &str, user: &str) -> Result<String, TemplateError> {
        let context = RenderContext {
            messages: [
                Message {
                    role: "system",
                    content: system,
                },
                Message {
                    role: "user",
                    content: user,
                },
            ],
            add_generation_prompt: true,
            bos_token: self.bos_token.as_deref(),
            eos_token: self.eos_token.as_deref(),
        };
        self.env
            .get_template(&self.origin)
            .and_then(|t| t.render(context))
            .map_err(|e| self.render_error(e.to_string()))
    }

    pub(super) fn render_error(&self, reason: String) -> TemplateError {
        TemplateError::Render {
            origin: self.origin.clone(),
            reason,
        }
    }
}

/// `raise_exception(message)`, which templates call to refuse a conversation.
fn raise_exception(message: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("the template raised an exception: {message}"),
    ))
}

fn read_settings(path: &Path) -> Result<TemplateSettings, TemplateError> {
    let bad = |reason: String| TemplateError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let template = match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(named)) => {
            let default = named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"));
            match default
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
            {
                Some(s) => Some(s.to_string()),
                None => return Err(bad("chat_template lists no \"default\" template".into())),
            }
        }
        Some(_) => return Err(bad("chat_template is neither a string nor a list".into())),
    };
    let token = |field: &str| -> Result<Option<String>, TemplateError> {
        match config.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => match v.get("content").and_then(|c| c.as_str()) {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(bad(format!(
                    "{field} is neither a string nor an object with a string `content`"
                ))),
            },
        }
    };
    Ok(TemplateSettings {
        template,
        bos_token: token("bos_token")?,
        eos_token: token("eos_token")?,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A model folder holding only `tokenizer_config.json` (the prompt tests use it too).
    pub(in crate::stories) fn folder_with_config(config: &serde_json::Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            serde_json::to_string(config).expect("json"),
        )
        .expect("write config");
        dir
    }

    #[test]
    fn template_list_takes_default_and_python_methods_work() {
        let dir = folder_with_config(&serde_json::json!({
            "chat_template": [
                {"name": "tool_use", "template": "tools"},
                {"name": "default", "template":
                    "{% for m in messages %}[{{ m['role'].upper() }}]{{ m['content'].strip() }}{% endfor %}[ASSISTANT]"}
            ],
            "bos_token": {"content": "<s>", "special": true},
            "eos_token": "</s>",
        }));
        let template = ChatTemplate::load(dir.path()).unwrap();
        assert_eq!(
            template.render(" S ", "U\n").unwrap(),
            "[SYSTEM]S[USER]U[ASSISTANT]"
        );
        assert_eq!(template.bos_token.as_deref(), Some("<s>"));
    }

    #[test]
    fn broken_template_files_are_load_errors_naming_them() {
        let bad_json = tempfile::tempdir().expect("temp dir");
        let path = bad_json.path().join("tokenizer_config.json");
        std::fs::write(&path, "{\"chat_template\": ").expect("write");
        match ChatTemplate::load(bad_json.path()) {
            Err(TemplateError::File { path: named, .. }) => assert_eq!(named, path),
            other => panic!("expected TemplateFile, got {:?}", other.err()),
        }

        let cases = [
            ("{% for m in messages %}{{ m.content }}", "parse"),
            ("{{ raise_exception('System role not supported') }}", "System role not supported"),
            (
                "{% for m in messages %}{% if m.role == 'system' %}{{ m.content }}{% endif %}{% endfor %}",
                "user message must appear exactly once",
            ),
            ("{{ messages[1].content }}{{ messages[1].content }}{{ messages[0].content }}", "2 times"),
        ];
        for (template, expected) in cases {
            let dir = folder_with_config(&serde_json::json!({"chat_template": template}));
            let path = dir
                .path()
                .join("tokenizer_config.json")
                .display()
                .to_string();
            let err = ChatTemplate::load(dir.path())
                .err()
                .unwrap_or_else(|| panic!("{template:?} loaded"));
            assert!(
                matches!(
                    err,
                    TemplateError::Syntax { .. } | TemplateError::Render { .. }
                ),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(message.contains(&path), "{message}");
            assert!(message.contains(expected), "{message}");
        }

        let wrong_shape =
            folder_with_config(&serde_json::json!({"chat_template": [{"name": "rag"}]}));
        assert!(matches!(
            ChatTemplate::load(wrong_shape.path()),
            Err(TemplateError::File { .. })
        ));
    }
}
