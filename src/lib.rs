//! TrendStory turns what is trending right now into short stories written by an int4
//! TinyLlama running on ONNX Runtime.
//!
//! # Layout
//! - [`bench`]: `trendstory bench-engine`, the engine measured alone against a bare matmul graph.
//! - [`config`]: one TOML file plus environment overrides, validated at start-up.
//! - [`runtime`]: finds and loads the ONNX Runtime shared library once per process.
//! - [`engine`]: synchronous model code (no actix): tokenizer, ONNX session, generation.
//! - [`server`]: the actix-web server over the trend cache and the inference pool (`run`).
//! - [`trends`]: trend-cache actor refreshing upstream sources in the background; snapshots for handlers.
//! - [`inference`]: supervised pool of engine workers on their own threads; admission, routing, response streams.
//! - [`stories`]: the story pipeline: styles and injection-safe chat prompts.

pub mod bench;
pub mod config;
pub mod engine;
pub mod inference;
pub mod runtime;
pub mod server;
pub mod stories;
pub mod trends;
