//! The cluster's store: what the replicas of a served app share. Each
//! replica pushes the changes its [`KvStore`](super::KvStore) took and reads
//! the whole state back (see the module above for the order and what it
//! guarantees); whoever runs the replicas keeps one of these where they can
//! all reach it (on Ray, in an actor). The rules the replicas' stores rely
//! on are here, once: `Add` creates a counter at 0 with its ttl and adds to
//! it (and is dropped where the key holds bytes), `Put` replaces, `Delete`
//! removes, expired entries are gone.
//!
//! Bounded: past `limit` bytes, a change that would grow the store is
//! dropped and counted (each replica's quota bounds what it writes; this
//! bounds what many replicas write together). An entry counts its keys and
//! value and [`ENTRY_OVERHEAD`] besides, what holding it costs: without it
//! a bound in bytes of tiny keys would hold a dozen times its memory here
//! and in every replica the state is copied to.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{COUNTER_BYTES, KvChange, KvOp, KvSnapshotEntry, KvSnapshotValue};

/// Bytes an entry costs beyond its keys and value (its slot in the map,
/// its expiry, its strings' allocations), counted against the bound.
pub(crate) const ENTRY_OVERHEAD: usize = 128;

/// One entry.
struct Held {
    value: KvSnapshotValue,
    expires: Option<Instant>,
}

impl Held {
    fn bytes(&self) -> usize {
        match &self.value {
            KvSnapshotValue::Bytes(v) => v.len(),
            KvSnapshotValue::Counter(_) => COUNTER_BYTES,
        }
    }
}

/// The store the replicas sync with.
pub struct KvCluster {
    entries: HashMap<(String, String), Held>,
    bytes: usize,
    limit: usize,
    dropped: u64,
}

impl KvCluster {
    /// A store holding at most `limit` bytes of keys and values, each
    /// entry's `ENTRY_OVERHEAD` (128) included.
    pub fn new(limit: usize) -> Self {
        KvCluster {
            entries: HashMap::new(),
            bytes: 0,
            limit,
            dropped: 0,
        }
    }

    /// Applies one replica's changes, in order.
    pub fn push(&mut self, changes: Vec<KvChange>) {
        let now = Instant::now();
        for change in changes {
            let id = (change.namespace, change.key);
            let key_bytes = id.0.len() + id.1.len();
            if self.entries.get(&id).is_some_and(|h| expired(h, now)) {
                self.remove(&id);
            }
            match change.op {
                KvOp::Add { delta, ttl_ms } => match self.entries.get_mut(&id) {
                    Some(Held {
                        value: KvSnapshotValue::Counter(sum),
                        ..
                    }) => *sum = sum.saturating_add(delta),
                    // A counter's increment on a key that holds bytes.
                    Some(_) => {}
                    None => {
                        let held = Held {
                            value: KvSnapshotValue::Counter(delta),
                            expires: deadline(now, ttl_ms),
                        };
                        self.insert(id, held, key_bytes);
                    }
                },
                KvOp::Put { value, ttl_ms } => {
                    self.remove(&id);
                    let held = Held {
                        value: KvSnapshotValue::Bytes(value),
                        expires: deadline(now, ttl_ms),
                    };
                    self.insert(id, held, key_bytes);
                }
                KvOp::Delete => self.remove(&id),
            }
        }
    }

    /// Every live entry, with its remaining lifetime.
    pub fn snapshot(&mut self) -> Vec<KvSnapshotEntry> {
        let now = Instant::now();
        let gone: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, h)| expired(h, now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.remove(id);
        }
        self.entries
            .iter()
            .map(|((namespace, key), held)| KvSnapshotEntry {
                namespace: namespace.clone(),
                key: key.clone(),
                value: held.value.clone(),
                ttl_ms: held.expires.map(|at| {
                    let left = at.saturating_duration_since(now).as_millis();
                    u64::try_from(left).unwrap_or(u64::MAX).max(1)
                }),
            })
            .collect()
    }

    /// Changes dropped because the store was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes of keys and values held, each entry's `ENTRY_OVERHEAD`
    /// included.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn insert(&mut self, id: (String, String), held: Held, key_bytes: usize) {
        let size = key_bytes + held.bytes() + ENTRY_OVERHEAD;
        if self.bytes + size > self.limit {
            self.dropped += 1;
            return;
        }
        self.bytes += size;
        self.entries.insert(id, held);
    }

    fn remove(&mut self, id: &(String, String)) {
        if let Some(held) = self.entries.remove(id) {
            self.bytes -= id.0.len() + id.1.len() + held.bytes() + ENTRY_OVERHEAD;
        }
    }
}

fn expired(held: &Held, now: Instant) -> bool {
    held.expires.is_some_and(|at| at <= now)
}

fn deadline(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.and_then(|ms| now.checked_add(Duration::from_millis(ms)))
}
