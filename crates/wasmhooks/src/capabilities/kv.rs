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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::component::Linker;
use wasmtime_wasi::WasiCtxBuilder;

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

/// One plugin's entries.
#[derive(Default)]
struct Space {
    entries: HashMap<String, Entry>,
    /// The entries that expire, by when (and a sequence number, unique per
    /// entry, for ties): the sweep's order.
    expiring: BTreeMap<(Instant, u64), String>,
    next_seq: u64,
    /// Bytes of keys and values held, tombstones' keys included.
    used: usize,
    /// Keys changed here since the last take.
    changed: HashSet<String>,
}

struct Entry {
    slot: Slot,
    /// When it expires, with its sequence number in `Space::expiring`.
    expires: Option<(Instant, u64)>,
    /// Changed here since the last take: a value or a tombstone to push
    /// (and keep over snapshots), or a counter deleted and then counted
    /// again (a `Delete` to push before its `Add`).
    dirty: bool,
}

enum Slot {
    Bytes(Vec<u8>),
    /// `base`: the cluster's total at the last snapshot; `pending`: taken
    /// and pushed, not yet in a snapshot; `local`: counted here since the
    /// last take.
    Counter {
        base: i64,
        pending: i64,
        local: i64,
    },
    /// Deleted here, the delete not yet taken (only while syncing).
    Gone,
}

impl Slot {
    fn bytes(&self) -> usize {
        match self {
            Slot::Bytes(v) => v.len(),
            Slot::Counter { .. } => COUNTER_BYTES,
            Slot::Gone => 0,
        }
    }
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|(at, _)| at <= now)
    }

    fn ttl_ms(&self, now: Instant) -> Option<u64> {
        self.expires.map(|(at, _)| {
            let left = at.saturating_duration_since(now);
            // Rounded up: an entry still here has some life left.
            u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1)
        })
    }
}

fn total(base: i64, pending: i64, local: i64) -> i64 {
    base.saturating_add(pending).saturating_add(local)
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KEY {
        Err(KvError::InvalidKey)
    } else {
        Ok(())
    }
}

fn deadline(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.and_then(|ms| now.checked_add(Duration::from_millis(ms)))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is consistent after every statement that could panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Space {
    /// Puts `entry` under `key` (replacing any), keeping the byte count and
    /// the expiry index; `expires` is set from `at`.
    fn put(&mut self, key: &str, slot: Slot, at: Option<Instant>, dirty: bool) {
        self.remove(key);
        let expires = at.map(|at| {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.expiring.insert((at, seq), key.to_owned());
            (at, seq)
        });
        self.used += key.len() + slot.bytes();
        self.entries.insert(
            key.to_owned(),
            Entry {
                slot,
                expires,
                dirty,
            },
        );
    }

    /// Removes `key`'s entry, keeping the count and the index.
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        if let Some(e) = entry.expires {
            self.expiring.remove(&e);
        }
        self.used -= key.len() + entry.slot.bytes();
        Some(entry)
    }

    /// Forgets the pending change of a key no longer held.
    fn forget(&mut self, key: &str) {
        if !self.entries.contains_key(key) {
            self.changed.remove(key);
        }
    }

    /// The live entry under `key` (not a tombstone); an expired one is
    /// dropped.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.entries.get(key)?.expired(now) {
            self.remove(key);
            self.forget(key);
            return None;
        }
        self.entries
            .get_mut(key)
            .filter(|e| !matches!(e.slot, Slot::Gone))
    }

    /// Drops up to `max` of the earliest expired entries.
    fn sweep(&mut self, now: Instant, max: usize) {
        for _ in 0..max {
            let Some(entry) = self.expiring.first_entry() else {
                return;
            };
            if entry.key().0 > now {
                return;
            }
            let key = entry.remove();
            if let Some(e) = self.entries.remove(&key) {
                self.used -= key.len() + e.slot.bytes();
            }
            self.changed.remove(&key);
        }
    }

    /// Whether the namespace has room for `key` to hold `bytes` of value,
    /// sweeping expired entries for it when it is short.
    fn room(&mut self, key: &str, bytes: usize, quota: usize, now: Instant) -> bool {
        let fits = |s: &Space| {
            let old = s.entries.get(key).map_or(0, |e| key.len() + e.slot.bytes());
            s.used - old + key.len() + bytes <= quota
        };
        if fits(self) {
            return true;
        }
        self.sweep(now, SWEEP_WHEN_FULL);
        fits(self)
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<Vec<u8>> {
        check_key(key).ok()?;
        match &self.live(key, now)?.slot {
            Slot::Bytes(v) => Some(v.clone()),
            Slot::Counter {
                base,
                pending,
                local,
            } => Some(total(*base, *pending, *local).to_string().into_bytes()),
            Slot::Gone => None,
        }
    }

    fn set(
        &mut self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        quota: usize,
        now: Instant,
    ) -> Result<(), KvError> {
        check_key(key)?;
        self.sweep(now, SWEEP);
        if !self.room(key, value.len(), quota, now) {
            return Err(KvError::QuotaExceeded);
        }
        self.put(key, Slot::Bytes(value), deadline(now, ttl_ms), true);
        self.changed.insert(key.to_owned());
        Ok(())
    }

    fn delete(&mut self, key: &str, syncing: bool, now: Instant) {
        if check_key(key).is_err() || self.live(key, now).is_none() {
            return;
        }
        if syncing {
            self.put(key, Slot::Gone, None, true);
            self.changed.insert(key.to_owned());
        } else {
            self.remove(key);
            self.changed.remove(key);
        }
    }

    fn increment(
        &mut self,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
        quota: usize,
        now: Instant,
    ) -> Result<i64, KvError> {
        check_key(key)?;
        self.sweep(now, SWEEP);
        if let Some(entry) = self.live(key, now) {
            let Slot::Counter {
                base,
                pending,
                local,
            } = &mut entry.slot
            else {
                return Err(KvError::NotACounter);
            };
            *local = local.saturating_add(delta);
            let sum = total(*base, *pending, *local);
            self.changed.insert(key.to_owned());
            return Ok(sum);
        }
        if !self.room(key, COUNTER_BYTES, quota, now) {
            return Err(KvError::QuotaExceeded);
        }
        // Over a tombstone: the delete is pushed before the new count.
        let deleted = matches!(
            self.entries.get(key),
            Some(Entry {
                slot: Slot::Gone,
                ..
            })
        );
        let slot = Slot::Counter {
            base: 0,
            pending: 0,
            local: delta,
        };
        self.put(key, slot, deadline(now, ttl_ms), deleted);
        self.changed.insert(key.to_owned());
        Ok(delta)
    }

    fn counter(&mut self, key: &str, now: Instant) -> Result<i64, KvError> {
        check_key(key)?;
        match self.live(key, now).map(|e| &e.slot) {
            None => Ok(0),
            Some(Slot::Counter {
                base,
                pending,
                local,
            }) => Ok(total(*base, *pending, *local)),
            Some(_) => Err(KvError::NotACounter),
        }
    }

    /// Moves this namespace's changes since the last take into `out`.
    fn take(&mut self, namespace: &str, now: Instant, out: &mut Vec<KvChange>) {
        let change = |key: &str, op| KvChange {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            op,
        };
        let mut changed: Vec<String> = self.changed.drain().collect();
        // In a stable order, for whoever reads them.
        changed.sort_unstable();
        for key in changed {
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.expired(now) {
                self.remove(&key);
                continue;
            }
            let ttl_ms = entry.ttl_ms(now);
            let dirty = std::mem::take(&mut entry.dirty);
            match &mut entry.slot {
                Slot::Gone => {
                    out.push(change(&key, KvOp::Delete));
                    self.remove(&key);
                }
                Slot::Bytes(value) => {
                    if dirty {
                        let value = value.clone();
                        out.push(change(&key, KvOp::Put { value, ttl_ms }));
                    }
                }
                Slot::Counter { pending, local, .. } => {
                    if dirty {
                        out.push(change(&key, KvOp::Delete));
                    }
                    if *local != 0 || dirty {
                        let delta = std::mem::take(local);
                        *pending = pending.saturating_add(delta);
                        out.push(change(&key, KvOp::Add { delta, ttl_ms }));
                    }
                }
            }
        }
    }

    /// Merges the cluster's entries for this namespace (see the module's
    /// doc); what the cluster lacks is gone unless it changed here since
    /// the last take.
    fn apply(
        &mut self,
        mut cluster: HashMap<String, (KvSnapshotValue, Option<u64>)>,
        now: Instant,
    ) {
        let keys: Vec<String> = self.entries.keys().cloned().collect();
        for key in keys {
            let theirs = cluster.remove(&key);
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            if entry.expired(now) {
                self.remove(&key);
                self.forget(&key);
                continue;
            }
            // Changed here since the take: kept, to push next.
            if entry.dirty {
                continue;
            }
            let expires = entry.expires.map(|(at, _)| at);
            let counted = match entry.slot {
                Slot::Counter { local, .. } => Some(local),
                Slot::Bytes(_) | Slot::Gone => None,
            };
            match (theirs, counted) {
                (Some((KvSnapshotValue::Counter(sum), ttl_ms)), Some(local)) => {
                    // Keeps the count made here since the take.
                    let slot = Slot::Counter {
                        base: sum,
                        pending: 0,
                        local,
                    };
                    self.put(&key, slot, deadline(now, ttl_ms), false);
                }
                (Some((value, ttl_ms)), _) => self.put_theirs(&key, value, ttl_ms, now),
                (None, Some(local)) if local != 0 => {
                    // Gone from the cluster (expired there): counted
                    // afresh from what was counted here since the take.
                    let slot = Slot::Counter {
                        base: 0,
                        pending: 0,
                        local,
                    };
                    self.put(&key, slot, expires, false);
                }
                (None, _) => {
                    self.remove(&key);
                    self.forget(&key);
                }
            }
        }
        for (key, (value, ttl_ms)) in cluster {
            self.put_theirs(&key, value, ttl_ms, now);
        }
    }

    fn put_theirs(&mut self, key: &str, value: KvSnapshotValue, ttl_ms: Option<u64>, now: Instant) {
        let slot = match value {
            KvSnapshotValue::Bytes(v) => Slot::Bytes(v),
            KvSnapshotValue::Counter(sum) => Slot::Counter {
                base: sum,
                pending: 0,
                local: 0,
            },
        };
        self.put(key, slot, deadline(now, ttl_ms), false);
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

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: usize = 1 << 20;

    fn store() -> Arc<KvStore> {
        Arc::new(KvStore::new())
    }

    /// A plain map playing the cluster store, applying pushes as the
    /// module's doc says.
    #[derive(Default)]
    struct Cluster {
        entries: BTreeMap<(String, String), (KvSnapshotValue, Option<u64>)>,
    }

    impl Cluster {
        fn push(&mut self, changes: Vec<KvChange>) {
            for c in changes {
                let id = (c.namespace, c.key);
                match c.op {
                    KvOp::Add { delta, ttl_ms } => {
                        let e = self
                            .entries
                            .entry(id)
                            .or_insert((KvSnapshotValue::Counter(0), ttl_ms));
                        if let KvSnapshotValue::Counter(sum) = &mut e.0 {
                            *sum += delta;
                        }
                    }
                    KvOp::Put { value, ttl_ms } => {
                        self.entries
                            .insert(id, (KvSnapshotValue::Bytes(value), ttl_ms));
                    }
                    KvOp::Delete => {
                        self.entries.remove(&id);
                    }
                }
            }
        }

        fn snapshot(&self) -> Vec<KvSnapshotEntry> {
            self.entries
                .iter()
                .map(|((namespace, key), (value, ttl_ms))| KvSnapshotEntry {
                    namespace: namespace.clone(),
                    key: key.clone(),
                    value: value.clone(),
                    ttl_ms: *ttl_ms,
                })
                .collect()
        }

        /// One replica's sync: take, push, read, apply.
        fn sync(&mut self, replica: &KvStore) {
            self.push(replica.take_changes());
            replica.apply_snapshot(self.snapshot());
        }
    }

    #[test]
    fn values_and_counters_in_one_namespace() {
        let s = store();
        let ns = s.namespace("p", QUOTA);
        assert_eq!(ns.get("k"), None);
        ns.set("k", b"v".to_vec(), None).unwrap();
        assert_eq!(ns.get("k").as_deref(), Some(&b"v"[..]));
        assert_eq!(ns.counter("k"), Err(KvError::NotACounter));
        assert_eq!(ns.increment("k", 1, None), Err(KvError::NotACounter));
        assert_eq!(ns.counter("c"), Ok(0));
        assert_eq!(ns.increment("c", 5, None), Ok(5));
        assert_eq!(ns.increment("c", -7, None), Ok(-2));
        assert_eq!(ns.get("c").as_deref(), Some(&b"-2"[..]));
        // A set replaces a counter.
        ns.set("c", b"x".to_vec(), None).unwrap();
        assert_eq!(ns.counter("c"), Err(KvError::NotACounter));
        ns.delete("c");
        ns.delete("absent");
        assert_eq!(ns.get("c"), None);
        assert_eq!(ns.increment("c", i64::MAX, None), Ok(i64::MAX));
        assert_eq!(ns.increment("c", 1, None), Ok(i64::MAX), "saturates");
        assert_eq!(s.used_bytes("p"), 1 + 1 + 1 + COUNTER_BYTES);
    }

    #[test]
    fn keys_are_bounded_and_namespaces_apart() {
        let s = store();
        let (a, b) = (s.namespace("a", QUOTA), s.namespace("b", QUOTA));
        let long = "k".repeat(MAX_KEY + 1);
        assert_eq!(a.set("", vec![], None), Err(KvError::InvalidKey));
        assert_eq!(a.set(&long, vec![], None), Err(KvError::InvalidKey));
        assert_eq!(a.increment(&long, 1, None), Err(KvError::InvalidKey));
        assert_eq!(a.counter(""), Err(KvError::InvalidKey));
        assert_eq!(a.get(&long), None);
        a.set(&long[1..], vec![1], None).unwrap();
        a.increment("n", 1, None).unwrap();
        assert_eq!(b.get("n"), None);
        assert_eq!(b.counter("n"), Ok(0));
        // A second handle on a namespace (another instance) sees it all.
        assert_eq!(s.namespace("a", QUOTA).counter("n"), Ok(1));
        assert_eq!(s.get("a", "n").as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn the_quota_bounds_keys_and_values_together() {
        let s = store();
        let ns = s.namespace("p", 100);
        ns.set("a", vec![0; 90], None).unwrap();
        assert_eq!(ns.set("b", vec![0; 9], None), Err(KvError::QuotaExceeded));
        assert_eq!(
            ns.increment("counter", 1, None),
            Err(KvError::QuotaExceeded)
        );
        ns.set("b", vec![0; 8], None).unwrap();
        assert_eq!(s.used_bytes("p"), 100);
        // Replacing a value counts only the difference.
        ns.set("a", vec![1; 90], None).unwrap();
        assert_eq!(ns.set("a", vec![1; 91], None), Err(KvError::QuotaExceeded));
        assert_eq!(ns.get("a").map(|v| v.len()), Some(90), "left as it was");
        ns.delete("a");
        assert_eq!(s.used_bytes("p"), 9);
        ns.set("a", vec![0; 90], None).unwrap();
        // A zero quota: nothing can be written.
        let none = s.namespace("zero", 0);
        assert_eq!(none.increment("n", 1, None), Err(KvError::QuotaExceeded));
        assert_eq!(none.counter("n"), Ok(0));
    }

    #[test]
    fn entries_expire_and_free_their_quota() {
        let s = store();
        let ns = s.namespace("p", 64);
        ns.set("short", vec![0; 40], Some(20)).unwrap();
        assert_eq!(ns.increment("n", 1, Some(20)), Ok(1));
        ns.set("long", vec![1], Some(60_000)).unwrap();
        // The ttl is set when a counter is made, not renewed.
        assert_eq!(ns.increment("n", 1, Some(60_000)), Ok(2));
        assert_eq!(
            ns.set("more", vec![0; 30], None),
            Err(KvError::QuotaExceeded)
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(ns.counter("n"), Ok(0));
        assert_eq!(ns.get("long").as_deref(), Some(&[1][..]));
        // The write sweeps what expired, which makes room.
        ns.set("more", vec![0; 30], None).unwrap();
        assert_eq!(ns.get("short"), None);
        assert_eq!(s.used_bytes("p"), 4 + 1 + 4 + 30);
        assert!(lock(&s.space("p")).expiring.len() == 1, "only `long` left");
    }

    #[test]
    fn two_replicas_lose_no_increment_through_interleaved_syncs() {
        let (a, b) = (store(), store());
        let (na, nb) = (a.namespace("p", QUOTA), b.namespace("p", QUOTA));
        let mut cluster = Cluster::default();
        let mut counted = 0;
        for round in 0..20_i64 {
            na.increment("n", round, None).unwrap();
            nb.increment("n", 2 * round, None).unwrap();
            counted += 3 * round;
            // Take, then an increment before the snapshot comes back.
            let changes = a.take_changes();
            na.increment("n", 1, None).unwrap();
            counted += 1;
            cluster.push(changes);
            if round % 3 == 0 {
                // b syncs between a's push and a's apply.
                cluster.sync(&b);
                nb.increment("n", 1, None).unwrap();
                counted += 1;
            }
            a.apply_snapshot(cluster.snapshot());
            // Each replica sees its own writes at once.
            assert!(na.counter("n").unwrap() >= 1);
        }
        cluster.sync(&a);
        cluster.sync(&b);
        cluster.sync(&a);
        assert_eq!(na.counter("n"), Ok(counted));
        assert_eq!(nb.counter("n"), Ok(counted));
        assert_eq!(
            cluster.entries[&("p".to_owned(), "n".to_owned())].0,
            KvSnapshotValue::Counter(counted)
        );
    }

    #[test]
    fn a_take_without_its_snapshot_keeps_the_pending_count() {
        let (a, b) = (store(), store());
        let (na, nb) = (a.namespace("p", QUOTA), b.namespace("p", QUOTA));
        let mut cluster = Cluster::default();
        na.increment("n", 5, None).unwrap();
        cluster.push(a.take_changes());
        assert_eq!(na.counter("n"), Ok(5), "pending still counts");
        na.increment("n", 1, None).unwrap();
        cluster.push(a.take_changes());
        nb.increment("n", 10, None).unwrap();
        cluster.sync(&b);
        assert_eq!(nb.counter("n"), Ok(16));
        a.apply_snapshot(cluster.snapshot());
        assert_eq!(na.counter("n"), Ok(16));
        assert!(a.take_changes().is_empty());
    }

    #[test]
    fn values_are_last_writer_wins_and_local_changes_survive_a_snapshot() {
        let (a, b) = (store(), store());
        let (na, nb) = (a.namespace("p", QUOTA), b.namespace("p", QUOTA));
        let mut cluster = Cluster::default();
        na.set("k", b"a".to_vec(), None).unwrap();
        cluster.sync(&a);
        nb.set("k", b"b".to_vec(), None).unwrap();
        cluster.sync(&b);
        cluster.sync(&a);
        assert_eq!(na.get("k").as_deref(), Some(&b"b"[..]));
        // Changed here since the take: the snapshot does not undo it.
        let changes = a.take_changes();
        assert!(changes.is_empty(), "{changes:?}");
        na.set("k", b"a2".to_vec(), None).unwrap();
        a.apply_snapshot(cluster.snapshot());
        assert_eq!(na.get("k").as_deref(), Some(&b"a2"[..]));
        cluster.sync(&a);
        cluster.sync(&b);
        assert_eq!(nb.get("k").as_deref(), Some(&b"a2"[..]));
        // A delete travels too, and a snapshot before its take does not
        // bring the key back.
        nb.delete("k");
        b.apply_snapshot(cluster.snapshot());
        assert_eq!(nb.get("k"), None);
        cluster.sync(&b);
        cluster.sync(&a);
        assert_eq!(na.get("k"), None);
        assert!(cluster.entries.is_empty());
        assert_eq!(a.used_bytes("p"), 0);
        assert_eq!(b.used_bytes("p"), 0);
    }

    #[test]
    fn a_counter_deleted_and_counted_again_starts_over_everywhere() {
        let (a, b) = (store(), store());
        let (na, nb) = (a.namespace("p", QUOTA), b.namespace("p", QUOTA));
        let mut cluster = Cluster::default();
        na.increment("n", 7, None).unwrap();
        cluster.sync(&a);
        cluster.sync(&b);
        assert_eq!(nb.counter("n"), Ok(7));
        nb.delete("n");
        nb.increment("n", 2, None).unwrap();
        let changes = b.take_changes();
        assert_eq!(
            changes.iter().map(|c| &c.op).collect::<Vec<_>>(),
            [
                &KvOp::Delete,
                &KvOp::Add {
                    delta: 2,
                    ttl_ms: None
                }
            ]
        );
        cluster.push(changes);
        b.apply_snapshot(cluster.snapshot());
        cluster.sync(&a);
        assert_eq!(na.counter("n"), Ok(2));
        assert_eq!(nb.counter("n"), Ok(2));
    }

    #[test]
    fn ttls_travel_and_expire_on_every_replica() {
        let (a, b) = (store(), store());
        let (na, nb) = (a.namespace("p", QUOTA), b.namespace("p", QUOTA));
        let mut cluster = Cluster::default();
        na.increment("window", 3, Some(50)).unwrap();
        na.set("v", b"x".to_vec(), Some(50)).unwrap();
        let changes = a.take_changes();
        for c in &changes {
            match &c.op {
                KvOp::Add { ttl_ms, .. } | KvOp::Put { ttl_ms, .. } => {
                    assert!(matches!(ttl_ms, Some(1..=50)), "{c:?}")
                }
                KvOp::Delete => panic!("{c:?}"),
            }
        }
        cluster.push(changes);
        b.apply_snapshot(cluster.snapshot());
        assert_eq!(nb.counter("window"), Ok(3));
        assert_eq!(nb.get("v").as_deref(), Some(&b"x"[..]));
        std::thread::sleep(Duration::from_millis(70));
        assert_eq!(nb.counter("window"), Ok(0));
        assert_eq!(nb.get("v"), None);
        assert_eq!(na.counter("window"), Ok(0));
        // Expired entries are not pushed.
        na.increment("window", 1, Some(10)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(a.take_changes().is_empty());
        // The cluster dropped them too (its own expiry): the snapshot
        // lacks them, and nothing is left anywhere.
        cluster.entries.clear();
        a.apply_snapshot(cluster.snapshot());
        b.apply_snapshot(cluster.snapshot());
        assert_eq!(a.used_bytes("p"), 0);
        assert_eq!(b.used_bytes("p"), 0);
    }

    #[test]
    fn a_snapshot_fills_namespaces_no_plugin_touched_yet() {
        let s = store();
        s.apply_snapshot(vec![KvSnapshotEntry {
            namespace: "later".into(),
            key: "n".into(),
            value: KvSnapshotValue::Counter(4),
            ttl_ms: None,
        }]);
        assert_eq!(s.namespace("later", QUOTA).increment("n", 1, None), Ok(5));
        let changes = s.take_changes();
        assert_eq!(
            changes,
            [KvChange {
                namespace: "later".into(),
                key: "n".into(),
                op: KvOp::Add {
                    delta: 1,
                    ttl_ms: None
                },
            }]
        );
    }

    #[test]
    fn changes_and_snapshots_cross_as_plain_json() {
        let change = KvChange {
            namespace: "token-budget".into(),
            key: "tpm:acme:1".into(),
            op: KvOp::Add {
                delta: 6,
                ttl_ms: Some(120_000),
            },
        };
        assert_eq!(
            serde_json::to_value(&change).unwrap(),
            serde_json::json!({"namespace": "token-budget", "key": "tpm:acme:1",
                               "op": "add", "delta": 6, "ttl_ms": 120_000})
        );
        let delete: KvChange = serde_json::from_value(
            serde_json::json!({"namespace": "p", "key": "k", "op": "delete"}),
        )
        .unwrap();
        assert_eq!(delete.op, KvOp::Delete);
        let entry: KvSnapshotEntry = serde_json::from_value(serde_json::json!(
            {"namespace": "p", "key": "k", "value": {"counter": 3}, "ttl_ms": null}
        ))
        .unwrap();
        assert_eq!(entry.value, KvSnapshotValue::Counter(3));
    }

    #[test]
    fn tombstones_are_kept_only_while_syncing_and_bounded_by_the_quota() {
        let s = store();
        let ns = s.namespace("p", 10);
        for _ in 0..100 {
            ns.set("abcde", vec![0; 5], None).unwrap();
            ns.delete("abcde");
        }
        assert_eq!(s.used_bytes("p"), 0, "no tombstones before syncing");
        s.take_changes();
        ns.set("abcde", vec![0; 5], None).unwrap();
        ns.delete("abcde");
        assert_eq!(s.used_bytes("p"), 5, "the tombstone's key");
        assert_eq!(
            ns.set("other", vec![0; 1], None),
            Err(KvError::QuotaExceeded)
        );
        let changes = s.take_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].op, KvOp::Delete);
        assert_eq!(s.used_bytes("p"), 0);
    }
}
