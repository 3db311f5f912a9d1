//! Paths of the guest plugins in `plugins/`, built for wasm32-wasip2 by this
//! crate's build script, for the integration tests and benchmarks.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
