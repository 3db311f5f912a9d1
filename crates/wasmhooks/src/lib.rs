//! wasmhooks runs the callbacks of ML jobs as sandboxed WebAssembly
//! components. A plugin implements the `wasmhooks:plugin` world (see `wit/`):
//! at each phase of a job it gets the keys of the shared data map it reads
//! and returns updates, the one primitive `(phase, config, data) -> updates`.
//!
//! The operator decides what runs: a [`Policy`] pins each allowed plugin by
//! sha256 and sets its limits (fuel and wall-clock per call, memory), its
//! error policy and its grants (keys it may write, folders it may read,
//! environment variables it may see). The host enforces all of it: a plugin
//! that loops, allocates without end, panics or writes a key it may not
//! gets an error naming it and the cause, and the data map is left as it
//! was.
//!
//! ```no_run
//! use serde_json::json;
//! use wasmhooks::{DataMap, Hooks, Host, Policy};
//!
//! # fn main() -> Result<(), wasmhooks::Error> {
//! let host = Host::new(Policy::from_file("operator.toml")?)?;
//! let plugin = host.load_file("plugins/force_download.wasm")?;
//! let mut hooks = Hooks::builder(json!({"model_id": "llama-2-7b"}))
//!     .plugin(plugin, json!(null))
//!     .start()?;
//! let mut data = DataMap::new();
//! let report = hooks.fire("pre_download", &mut data)?;
//! println!("{} plugin(s) ran; data is now {data:?}", report.calls.len());
//! # Ok(())
//! # }
//! ```

mod bindings;
mod capabilities;
mod dispatch;
mod error;
pub mod files;
mod host;
mod inspect;
mod instance;
mod json;
mod loading;
mod manifest;
pub mod policy;
mod sandbox;
pub mod schema;
mod text;

pub use capabilities::kv::{
    KvChange, KvCluster, KvError, KvOp, KvSnapshotEntry, KvSnapshotValue, KvStore,
    MAX_KEY as KV_MAX_KEY,
};
pub use dispatch::{
    CallReport, Change, DEFAULT_FLUSH, DataBudget, DataMap, Hooks, HooksBuilder, MAX_KEYS_LISTED,
    Outcome, PhaseReport, PluginStats,
};
pub use error::{Call, CallError, Cause, Error, TypeMismatch};
pub use files::read_regular;
pub use host::Host;
pub use inspect::Inspection;
pub use loading::{Plugin, sha256_hex};
pub use manifest::{ALL_PHASES, Manifest};
pub use policy::{DirGrant, JobLimits, OnError, PluginPolicy, Policy, Section};
pub use text::clean as clean_text;

/// The newest version of the `wasmhooks:plugin` WIT package this host
/// implements (and the one the SDKs in this repository build against).
pub const WIT_VERSION: &str = bindings::NEWEST;

/// Every version of the `wasmhooks:plugin` WIT package this host runs
/// plugins of, each frozen in `wit/v<version>/`.
pub const WIT_VERSIONS: &[&str] = bindings::SUPPORTED;
