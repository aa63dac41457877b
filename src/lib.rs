//! TrendStory turns what is trending right now into short stories written by an int4
//! TinyLlama running on ONNX Runtime.
//!
//! # Layout
//! - [`api`]: the HTTP API: routes, SSE, errors, access control, probes, OpenAPI.
//! - [`bench`]: `trendstory bench-engine`, the engine measured alone against a bare matmul graph.
//! - [`config`]: one TOML file plus environment overrides, validated at start-up.
//! - [`runtime`]: finds and loads the ONNX Runtime shared library once per process.
//! - [`engine`]: synchronous model code (no actix): tokenizer, ONNX session, generation.
//! - [`server`]: starts everything and runs actix-web until SIGTERM (`run`), with graceful shutdown.
//! - [`trends`]: trend-cache actor refreshing upstream sources in the background; snapshots for handlers.
//! - [`stories`]: the story pipeline: validation, chat prompts, cache and coalescing, pre-generation.
//! - [`metrics`]: Prometheus metrics, declared once.
//! - [`inference`]: supervised pool of engine workers on their own threads; admission, routing, response streams.

pub mod api;
pub mod bench;
pub mod config;
pub mod engine;
pub mod inference;
pub mod metrics;
pub mod runtime;
pub mod server;
pub mod stories;
pub mod trends;
