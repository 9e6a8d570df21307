//! # tt-serve
//!
//! `tito serve`: an OpenAI-compatible completions server over the workspace's one model and one
//! cached decoder, with continuous batching.
//!
//! - [`batcher`]: the scheduler. The decoder holds `max_batch` slots, each at its own position;
//!   requests join at any step (their prompt prefilled in that step's forward pass, beside the
//!   others' decode tokens) and leave when they finish, freeing their slot.
//! - [`server`]: axum handlers over shared state — `POST /v1/completions` (whole or streamed as
//!   Server-Sent Events), `GET /v1/models`, `/health`, `/ready`, `/metrics` (Prometheus) — and
//!   one engine thread that owns the decoder.
//! - [`api`]: the protocol: requests checked field by field against [`api::Limits`], answers,
//!   chunks and OpenAI-style errors.
//!
//! Under pressure it refuses rather than grows: a bounded queue (429 with `Retry-After` past it),
//! capped bodies (413), prompts and `max_tokens` (400 naming the limit). A client that
//! disconnects cancels its generation; a panic inside a request answers 500 and the server keeps
//! serving; on shutdown it refuses new requests (503) and drains the ones in flight.
//!
//! What it does not do: load models (the caller hands it a [`tt_transformer::Gpt`] in any weight
//! format, as `tito serve` does), TLS, authentication, or more than one model per process —
//! replicas behind a load balancer scale it out (`deploy/`).
//!
//! ```no_run
//! # async fn demo(m: tt_serve::server::ServeModel) -> Result<(), Box<dyn std::error::Error>> {
//! use tt_serve::server::{Server, ServeConfig};
//! let server = Server::start(m, ServeConfig::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod batcher;
pub mod metrics;
pub mod server;

use thiserror::Error;

/// Errors starting a server.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("serve: {0}")]
    Config(String),
    #[error(transparent)]
    Engine(#[from] tt_kvcache::KvError),
}
