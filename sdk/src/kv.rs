//! State that outlives a call and a request: values and counters the host
//! keeps for the plugin (contract 0.3.0's `kv`).
//!
//! A plugin's fields live in one instance, and the host keeps several
//! instances of a plugin (a serving replica pools them, and any one takes
//! a request), so a per-tenant budget or a rate limit kept in a field would
//! be split among them. What a plugin keeps here, every instance of it on
//! the same host sees at once. The keys are the plugin's own (the host
//! namespaces them by its name), and the operator bounds its keys and
//! values together (`kv_quota_kib`, 1 MiB unless it says otherwise).
//!
//! Counters add rather than overwrite: where the operator syncs replicas,
//! other replicas' increments arrive within one sync interval and none is
//! lost, whereas values are last-writer-wins. Count with [`increment`]
//! rather than [`get`] then [`set`].
//!
//! ```no_run
//! use std::time::Duration;
//! use wasmhooks_sdk::kv;
//!
//! # fn f() -> Result<(), wasmhooks_sdk::Error> {
//! // A counter per minute window, gone by itself after two minutes.
//! let used = kv::increment("tpm:acme:29117", 6, Some(Duration::from_secs(120)))?;
//! kv::set("last-tenant", "acme", None)?;
//! assert_eq!(kv::counter("tpm:acme:29117")?, used);
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use crate::bindings::wasmhooks::plugin::kv as wit;

/// Longest key, in bytes.
pub const MAX_KEY: usize = 256;

/// Why a write (or a counter's read) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvError {
    /// The plugin's keys and values would pass its quota (the operator's
    /// `kv_quota_kib`); nothing was written.
    QuotaExceeded,
    /// The key is empty or longer than [`MAX_KEY`] bytes.
    InvalidKey,
    /// The key holds bytes [`set`] wrote, not a counter.
    NotACounter,
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvError::QuotaExceeded => {
                "kv: the plugin's keys and values would pass its quota (the operator's kv_quota_kib)"
            }
            KvError::InvalidKey => "kv: the key is empty or longer than 256 bytes",
            KvError::NotACounter => "kv: the key holds bytes, not a counter",
        })
    }
}

impl std::error::Error for KvError {}

impl From<KvError> for crate::Error {
    fn from(e: KvError) -> Self {
        crate::Error::new(e)
    }
}

fn lift(e: wit::KvError) -> KvError {
    match e {
        wit::KvError::QuotaExceeded => KvError::QuotaExceeded,
        wit::KvError::InvalidKey => KvError::InvalidKey,
        wit::KvError::NotACounter => KvError::NotACounter,
    }
}

fn millis(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The value under `key`; `None` when it is absent, expired or the key is
/// invalid. A counter reads as its decimal text.
pub fn get(key: &str) -> Option<Vec<u8>> {
    wit::get(key)
}

/// Stores `value` under `key`, replacing what is there (a counter too).
/// With `ttl` the entry expires that long from now; without, it stays
/// until deleted.
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<(), KvError> {
    wit::set(key, value.as_ref(), millis(ttl)).map_err(lift)
}

/// Removes `key`; an absent key is not an error.
pub fn delete(key: &str) {
    wit::delete(key)
}

/// Adds `delta` (which may be negative) to the counter under `key` and
/// returns its new total. An absent (or expired) counter is created at 0
/// first, expiring after `ttl`: the ttl is set when the counter is made,
/// not renewed by later increments, so a counter per time window goes by
/// itself. Totals saturate at the bounds of `i64`.
pub fn increment(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
    wit::increment(key, delta, millis(ttl)).map_err(lift)
}

/// The counter's total: 0 when absent or expired.
pub fn counter(key: &str) -> Result<i64, KvError> {
    wit::get_counter(key).map_err(lift)
}
