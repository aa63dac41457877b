//! Command-line entry point: parses arguments, sets up logging, dispatches a subcommand.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use trendstory::config::{Config, LogFormat};
use trendstory::engine::{greedy_generate, ModelInfo, OnnxModel, TextTokenizer};

#[derive(Parser)]
#[command(
    name = "trendstory",
    version,
    about = "Stories about what is trending, written by an int4 TinyLlama"
)]
struct Cli {
    /// Configuration file (TOML); `TRENDSTORY_*` environment variables override it.
    #[arg(long, global = true, env = "TRENDSTORY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service. Ctrl-C stops it at once when idle; SIGTERM first turns
    /// readiness false for `server.shutdown_drain_secs` (for a load balancer).
    Serve {
        /// Address to listen on, e.g. 127.0.0.1; overrides `server.host` (default 0.0.0.0).
        #[arg(long)]
        host: Option<String>,
        /// Port to listen on, 1 to 65535; overrides `server.port` (default 8080).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
    },
    /// Measure the batching engine alone: at several concurrency levels (decode tokens/s,
    /// step time, time to first token, tokens per pass, where step time goes, peak RSS), or
    /// with `--users` in a closed loop.
    BenchEngine {
        /// Model folder; defaults to `model.dir`.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Comma-separated numbers of concurrent streams, all submitted at once per level.
        #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
        concurrency: Vec<usize>,
        /// Prompt length in tokens [default: 64; with --users 95, story-shaped].
        #[arg(long)]
        prompt_tokens: Option<usize>,
        /// Leading prompt tokens every request shares, declared as a shared prefix (the
        /// engine keeps their KV), as story prompts share their chat template
        /// [default: 0; with --users 80, a story prompt's template and instruction].
        #[arg(long)]
        shared_prefix_tokens: Option<usize>,
        /// New tokens per request (generated to the end: EOS is ignored).
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// A `--linear-only` export of the same model (the bare int4 matmul stack), timed in
        /// the same run: per level at the same batch, with --users at the loop's tokens per
        /// pass (the roof efficiency).
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Closed loop instead of levels: keep this many requests in flight, each finished
        /// one replaced at once by a new unique prompt.
        #[arg(long, conflicts_with = "concurrency")]
        users: Option<usize>,
        /// Length of the closed loop, in seconds.
        #[arg(long, default_value_t = 60, requires = "users")]
        duration: u64,
        /// Closed loop: write ONNX Runtime's profile of every run to a JSON file starting
        /// with this (summarize it with scripts/profile_steps.py).
        #[arg(long, requires = "users")]
        ort_profile: Option<PathBuf>,
        /// Also print the report as one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
    /// Greedy-generate a continuation of one prompt and print it with tokens/s.
    Generate {
        /// Model folder written by scripts/export_onnx.py; defaults to `model.dir`.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Text to continue (sent as is, without a chat template).
        #[arg(long)]
        prompt: String,
        /// Maximum number of new tokens.
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
    },
    /// Fetch every configured trend source once and print the merged ranking and source status.
    Trends {
        /// Print the result as one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    init_logging(config.server.log_format);
    match cli.command {
        Command::Serve { host, port } => {
            // Flags over the file and the environment.
            config.server.host = host.unwrap_or(config.server.host);
            config.server.port = port.unwrap_or(config.server.port);
            config.validate()?;
            serve(config)
        }
        Command::Generate {
            model,
            prompt,
            max_tokens,
        } => generate(&config, model, &prompt, max_tokens),
        Command::BenchEngine {
            model,
            concurrency,
            prompt_tokens,
            shared_prefix_tokens,
            new_tokens,
            baseline,
            users,
            duration,
            ort_profile,
            json,
        } => {
            // Story-shaped prompts in the closed loop (like the load test's W1), plain ones
            // per level.
            let (default_prompt, default_shared) = if users.is_some() { (95, 80) } else { (64, 0) };
            let prompt_tokens = prompt_tokens.unwrap_or(default_prompt);
            let shared_prefix_tokens = shared_prefix_tokens.unwrap_or(default_shared);
            if concurrency.is_empty()
                || concurrency.contains(&0)
                || prompt_tokens == 0
                || new_tokens == 0
                || users == Some(0)
                || duration == 0
            {
                anyhow::bail!("--concurrency, --users, --duration, --prompt-tokens and --new-tokens must be positive");
            }
            if shared_prefix_tokens >= prompt_tokens {
                anyhow::bail!("--shared-prefix-tokens must be below --prompt-tokens (at least one token of each prompt is its own)");
            }
            let model = model.unwrap_or_else(|| config.model.dir.clone());
            if let Some(users) = users {
                let options = trendstory::bench::closed_loop::ClosedLoopOptions {
                    model,
                    users,
                    duration: std::time::Duration::from_secs(duration),
                    prompt_tokens,
                    shared_prefix_tokens,
                    new_tokens,
                    baseline,
                    ort_profile,
                };
                let report = trendstory::bench::closed_loop::run(&config, &options)?;
                report.print();
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                }
                return Ok(());
            }
            let options = trendstory::bench::BenchOptions {
                model,
                concurrency,
                prompt_tokens,
                shared_prefix_tokens,
                new_tokens,
                baseline,
            };
            let report = trendstory::bench::run(&config, &options)?;
            report.print_table();
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(())
        }
        Command::Trends { json } => trendstory::trends::cli::run(&config.trends, json),
    }
}

/// Log lines go to stderr: text (colored on a terminal) or one JSON object per line. Each
/// line of an HTTP request carries its span, with the request id.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

/// `trendstory serve`: checks the set-up, binds, and runs until stopped.
fn serve(config: Config) -> anyhow::Result<()> {
    trendstory::server::preflight(&config)?;
    let address = (config.server.host.clone(), config.server.port);
    let listener = std::net::TcpListener::bind((address.0.as_str(), address.1))
        .with_context(|| format!("cannot listen on {}:{}", address.0, address.1))?;
    actix_web::rt::System::new().block_on(trendstory::server::run(config, listener))?;
    Ok(())
}

/// `trendstory generate`: one prompt, greedy, with prefill and decode speed.
fn generate(
    config: &Config,
    model_dir: Option<PathBuf>,
    prompt: &str,
    max_tokens: usize,
) -> anyhow::Result<()> {
    let info = match model_dir {
        Some(dir) => ModelInfo::load(&dir)?,
        None => trendstory::server::load_model_info(config)?,
    };
    if info.random_weights {
        tracing::warn!(model = %info.model_id, "this model has RANDOM weights: its text is noise (a benchmark stand-in)");
    }
    let tokenizer = TextTokenizer::load(&info.tokenizer_path(), &info)?;
    let env = trendstory::runtime::environment(&config.runtime)?;
    let options = trendstory::inference::session_options(&config.inference);
    let mut model = OnnxModel::load(&info, &env, &options)?;
    let ids = tokenizer.encode(prompt)?;
    let out = greedy_generate(&mut model, std::slice::from_ref(&ids), max_tokens)
        .context("generation failed")?;
    let new_tokens = &out.tokens[0];
    println!("{}", tokenizer.decode(new_tokens)?);
    let decode_rate = if out.decode_steps > 0 {
        out.decode_steps as f64 / out.decode.as_secs_f64()
    } else {
        0.0
    };
    eprintln!(
        "model: {} | prompt {} tokens, prefill {:.1} ms ({:.1} tokens/s) | {} new tokens, decode {:.2} tokens/s",
        info.model_id,
        ids.len(),
        out.prefill.as_secs_f64() * 1e3,
        ids.len() as f64 / out.prefill.as_secs_f64(),
        new_tokens.len(),
        decode_rate
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_option_has_help() {
        let cli = Cli::command();
        for command in std::iter::once(&cli).chain(cli.get_subcommands()) {
            for arg in command.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "`{} --{}` has no help",
                    command.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}
