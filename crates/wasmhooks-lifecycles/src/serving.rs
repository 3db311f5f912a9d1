//! Serving: the request path of an OpenAI-compatible LLM server as a
//! lifecycle. Each request is an [`Exchange`] with its own data map, from
//! `on_request` (rewrite, clamp, block) through `on_response_chunk` (each
//! streamed chunk: rewrite, stop) or `on_response` (a whole response) to
//! `on_request_end` (on every path; metering and audit in the background).
//! A replica's plugins are a [`Pool`] of instance sets, so concurrent
//! requests never share an instance, and each call's deadline is the
//! operator's `[serving] timeout_ms` at most ([`ServingConfig`]).
//!
//! Transports stay thin: `wasmhooks.asgi` (any ASGI app, vLLM's own server
//! among them) and `wasmhooks.ray_llm`'s ingress for Ray Serve LLM hand an
//! exchange bodies and stream bytes, and send what it gives back.

mod config;
mod exchange;
mod openai;
mod pool;
mod stream;

pub use config::{
    DEFAULT_INSTANCES, DEFAULT_KV_SYNC_MS, DEFAULT_MAX_REQUEST_KIB, DEFAULT_TIMEOUT_MS,
    ServingConfig,
};
pub use exchange::{ChunkReply, EndReason, Exchange, Refusal, Reply};
pub use openai::{Route, SAMPLING, error_body};
pub use pool::{Plugins, Pool, ServingStats};
pub use stream::MAX_EVENT;

/// The operator config's table for the request path: `[serving]`.
pub(crate) const SECTION: &str = "serving";
