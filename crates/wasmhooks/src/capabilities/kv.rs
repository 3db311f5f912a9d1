//! `wasmhooks:plugin/kv` (contract 0.3.0): values and counters that outlive
//! a call and a request, kept by the host. A plugin's instances are pooled
//! (a serving replica keeps several sets, and any one takes a request), so
//! a per-tenant budget kept in a plugin's globals would be split among
//! them; here every instance of a plugin made through one [`Host`](crate::Host) sees the
//! same keys.
//!
//! One [`KvStore`] per host (`Host::kv`), shared by every plugin and
//! instance made through it. Each plugin has a namespace, its name: it sees
//! only its own keys. The operator bounds a namespace's keys and values
//! together, in bytes (`kv_quota_kib`); a key is at most [`MAX_KEY`] bytes.
//! Entries may expire (a ttl per entry): an expired entry is dropped when
//! it is touched, and writes sweep a few of the earliest expired ones
//! (bounded work per call), so expired entries do not hold the quota for
//! long. Every operation is a hash-map lookup under the namespace's own
//! lock, plus an ordered index of expiries.
//!
//! # Syncing replicas
//!
//! A serving deployment runs several replicas, each with its own host and
//! store. Whoever runs them (the Python/Ray side) keeps a cluster store and
//! syncs each replica with it periodically, in this order, from one place:
//!
//! 1. [`KvStore::take_changes`]: what changed here since the last take. A
//!    counter's increments cross as [`KvOp::Add`] (moved out of the
//!    counter's local part into a pending part, so increments made after
//!    the take are not lost); a value as [`KvOp::Put`] or [`KvOp::Delete`].
//! 2. The caller applies them to the cluster store, in order: `Add` adds
//!    to the counter (creating it at 0, with its ttl, when absent; an `Add`
//!    to a key that holds bytes is dropped), `Put` replaces, `Delete`
//!    removes. A push that fails must be retried with the same changes:
//!    once taken, they are the caller's.
//! 3. The caller reads the cluster's whole state, after the push, and
//!    hands it to [`KvStore::apply_snapshot`]: a counter's total becomes the
//!    cluster's (which holds what this replica pushed), plus what was
//!    incremented here since the take; a value becomes the cluster's unless
//!    it changed here since the take (then it is pushed at the next take);
//!    an entry the snapshot lacks is gone, unless it changed here since.
//!
//! What is consistent, then:
//!
//! - A replica's own reads see its own writes at once, from every instance
//!   of the plugin on that host.
//! - Other replicas' writes arrive within one sync interval (theirs plus
//!   this one's): eventual, not linearizable. A budget checked against a
//!   counter may be overrun by what other replicas spent in that interval.
//! - Counters never lose an increment: each is pushed once, as a delta,
//!   and a snapshot replaces only the part already pushed. A counter that
//!   expires, or that a delete removes, loses its count by design.
//! - Values are last-writer-wins, by the order in which the cluster store
//!   applies pushes. A `set` over a counter replaces it, and increments of
//!   it made concurrently elsewhere are dropped.
//! - A replica starts tracking deletes (for pushing) at its first take or
//!   snapshot; until then it keeps no record of them.
//!
//! Quotas bound what plugins write; a snapshot is applied whole even where
//! it takes a namespace past its quota (other replicas wrote it), and then
//! writes that grow the namespace fail until it is back under.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use wasmtime::component::Linker;
use wasmtime_wasi::WasiCtxBuilder;

mod cluster;
mod space;
#[cfg(test)]
mod tests;

pub use cluster::KvCluster;
use space::{Space, lock};

use super::{Capability, CapabilityView, HostWide};
use crate::Error;
use crate::policy::PluginPolicy;

/// Longest key, in bytes.
pub const MAX_KEY: usize = 256;
/// Bytes a counter's value counts for against the quota.
const COUNTER_BYTES: usize = 8;
/// Expired entries a write sweeps, at most.
const SWEEP: usize = 16;
/// Expired entries a write sweeps, at most, before it is refused for the
/// quota: those might make room.
const SWEEP_WHEN_FULL: usize = 1024;

/// Why a plugin's write was refused (the WIT's `kv-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvError {
    /// The namespace's keys and values would pass its quota.
    QuotaExceeded,
    /// A key over [`MAX_KEY`] bytes, or empty.
    InvalidKey,
    /// The key holds bytes, not a counter.
    NotACounter,
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvError::QuotaExceeded => "the plugin's keys and values would pass its kv quota",
            KvError::InvalidKey => "the key is empty or longer than 256 bytes",
            KvError::NotACounter => "the key holds bytes, not a counter",
        })
    }
}

impl std::error::Error for KvError {}

/// A change made on this replica since the last take, to push to the
/// cluster store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvChange {
    /// The plugin whose key it is.
    pub namespace: String,
    /// The key.
    pub key: String,
    /// What to do to the cluster's entry.
    #[serde(flatten)]
    pub op: KvOp,
}

/// What a [`KvChange`] does to the cluster's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum KvOp {
    /// Add `delta` to the counter; create it at 0 first, expiring in
    /// `ttl_ms`, when absent. Dropped where the key holds bytes.
    Add {
        /// The increments made here since the last take.
        delta: i64,
        /// The counter's remaining lifetime here, for creating it.
        ttl_ms: Option<u64>,
    },
    /// Store these bytes, replacing what is there (last writer wins).
    Put {
        /// The value.
        value: Vec<u8>,
        /// Its remaining lifetime.
        ttl_ms: Option<u64>,
    },
    /// Remove the entry. Comes before an `Add` for the same key when a
    /// counter was deleted and then counted again here.
    Delete,
}

/// One entry of the cluster store, as [`KvStore::apply_snapshot`] takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSnapshotEntry {
    /// The plugin whose key it is.
    pub namespace: String,
    /// The key.
    pub key: String,
    /// Its value in the cluster.
    pub value: KvSnapshotValue,
    /// Its remaining lifetime in the cluster; `None`: no expiry.
    pub ttl_ms: Option<u64>,
}

/// A value in the cluster store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvSnapshotValue {
    /// Bytes a plugin set.
    Bytes(Vec<u8>),
    /// A counter's total over every replica.
    Counter(i64),
}

/// The key-value store of one host: a namespace per plugin.
#[derive(Default)]
pub struct KvStore {
    spaces: Mutex<HashMap<String, Arc<Mutex<Space>>>>,
    /// Set by the first take or snapshot: from then on a delete leaves a
    /// tombstone until it is taken, so a snapshot does not bring the entry
    /// back.
    syncing: AtomicBool,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("namespaces", &self.spaces_now().len())
            .field("syncing", &self.syncing.load(Ordering::Relaxed))
            .finish()
    }
}

impl KvStore {
    /// An empty store.
    pub fn new() -> Self {
        KvStore::default()
    }

    /// The namespace `name`, made empty when it is new.
    fn space(&self, name: &str) -> Arc<Mutex<Space>> {
        let mut spaces = lock(&self.spaces);
        match spaces.get(name) {
            Some(space) => space.clone(),
            None => {
                let space = Arc::new(Mutex::new(Space::default()));
                spaces.insert(name.to_owned(), space.clone());
                space
            }
        }
    }

    fn spaces_now(&self) -> Vec<(String, Arc<Mutex<Space>>)> {
        lock(&self.spaces)
            .iter()
            .map(|(name, space)| (name.clone(), space.clone()))
            .collect()
    }

    /// The value under `key` in `namespace` as its plugin would `get` it
    /// (a counter as its decimal text), for a host that reports it.
    pub fn get(&self, namespace: &str, key: &str) -> Option<Vec<u8>> {
        let space = lock(&self.spaces).get(namespace)?.clone();
        lock(&space).get(key, Instant::now())
    }

    /// Bytes of keys and values `namespace` holds, as its quota counts
    /// them (expired entries not yet swept included).
    pub fn used_bytes(&self, namespace: &str) -> usize {
        match lock(&self.spaces).get(namespace) {
            Some(space) => lock(space).used,
            None => 0,
        }
    }

    /// A handle on `namespace`, bounded by `quota` bytes: what a plugin's
    /// instance holds.
    pub(crate) fn namespace(self: &Arc<Self>, name: &str, quota: usize) -> Namespace {
        Namespace {
            store: self.clone(),
            space: self.space(name),
            quota,
        }
    }

    /// Takes the changes made here since the last take, to push to the
    /// cluster store (see the module's doc): counters' increments as
    /// `Add`, values as `Put` or `Delete`, grouped by namespace and key.
    /// Increments made after the take are kept for the next one.
    pub fn take_changes(&self) -> Vec<KvChange> {
        self.syncing.store(true, Ordering::SeqCst);
        let now = Instant::now();
        let mut spaces = self.spaces_now();
        spaces.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        for (name, space) in spaces {
            lock(&space).take(&name, now, &mut out);
        }
        out
    }

    /// Merges the cluster store's whole state, read after the changes of
    /// every take so far were pushed (see the module's doc): a counter's
    /// total becomes the cluster's plus what was counted here since the
    /// last take; a value becomes the cluster's unless it changed here
    /// since the last take; an entry the cluster lacks is dropped unless
    /// it changed here since.
    pub fn apply_snapshot(&self, entries: Vec<KvSnapshotEntry>) {
        self.syncing.store(true, Ordering::SeqCst);
        let now = Instant::now();
        let mut by_space: HashMap<String, HashMap<String, (KvSnapshotValue, Option<u64>)>> =
            HashMap::new();
        for e in entries {
            by_space
                .entry(e.namespace)
                .or_default()
                .insert(e.key, (e.value, e.ttl_ms));
        }
        for (name, space) in self.spaces_now() {
            let cluster = by_space.remove(&name).unwrap_or_default();
            lock(&space).apply(cluster, now);
        }
        // Namespaces no plugin here has touched yet.
        for (name, cluster) in by_space {
            lock(&self.space(&name)).apply(cluster, now);
        }
    }
}

/// One plugin's namespace in a store, with its quota.
pub(crate) struct Namespace {
    store: Arc<KvStore>,
    space: Arc<Mutex<Space>>,
    quota: usize,
}

impl Namespace {
    /// The value under `key`; a counter as its decimal text.
    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        lock(&self.space).get(key, Instant::now())
    }

    /// Stores `value` under `key`, expiring in `ttl_ms`.
    pub(crate) fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), KvError> {
        lock(&self.space).set(key, value, ttl_ms, self.quota, Instant::now())
    }

    /// Removes `key`.
    pub(crate) fn delete(&self, key: &str) {
        let syncing = self.store.syncing.load(Ordering::SeqCst);
        lock(&self.space).delete(key, syncing, Instant::now());
    }

    /// Adds `delta` to the counter under `key` (created at 0, expiring in
    /// `ttl_ms`, when absent); its new total.
    pub(crate) fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, KvError> {
        lock(&self.space).increment(key, delta, ttl_ms, self.quota, Instant::now())
    }

    /// The counter's total; 0 when absent.
    pub(crate) fn counter(&self, key: &str) -> Result<i64, KvError> {
        lock(&self.space).counter(key, Instant::now())
    }
}

/// Per-instance state: the plugin's namespace in its host's store.
pub(crate) struct Kv {
    namespace: Namespace,
}

impl Kv {
    /// The plugin's namespace, where each version's `kv` import lands.
    pub(crate) fn namespace(&self) -> &Namespace {
        &self.namespace
    }
}

impl Capability for Kv {
    /// Every plugin may keep state, under the operator's `kv_quota_kib`;
    /// an instance made alone gets a store of its own.
    fn grant(policy: &PluginPolicy, wasi: &mut WasiCtxBuilder) -> Result<Self, Error> {
        Self::grant_in(&HostWide::default(), policy, wasi)
    }

    /// The plugin's namespace (its name) in the host's store.
    fn grant_in(
        host: &HostWide,
        policy: &PluginPolicy,
        _: &mut WasiCtxBuilder,
    ) -> Result<Self, Error> {
        Ok(Kv {
            namespace: host
                .kv
                .namespace(&policy.name, policy.limits.kv_quota_bytes),
        })
    }

    /// Each version's `kv` import (0.3.0 on), from `bindings`.
    fn add_to_linker<T: CapabilityView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        crate::bindings::add_kv_to_linker(linker)
    }
}
