//! Command-line entry point: parses arguments, sets up logging, dispatches a subcommand.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use trendstory::config::Config;

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
    /// Greedy-generate a continuation of one prompt and print it with tokens/s.
    Generate {
        /// Model folder written by scripts/export_onnx.py; defaults to `model.dir`.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
    },
    /// Fetch every configured trend source once and print the merged ranking and source status.
    Trends {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Generate {
            model,
            prompt,
            max_tokens,
        } => {
            let _ = (model, prompt, max_tokens, &config);
            anyhow::bail!("not yet")
        }
        Command::Trends { json } => trendstory::trends::cli::run(&config.trends, json),
    }
    .context("trendstory failed")
}
