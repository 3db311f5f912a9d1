//! One plugin's namespace in a host's store: its entries, the bytes they
//! take, their expiry order, and what changed since the last take. The
//! store ([`super::KvStore`]) locks one namespace at a time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{
    COUNTER_BYTES, KvChange, KvError, KvOp, KvSnapshotValue, MAX_KEY, SWEEP, SWEEP_WHEN_FULL,
};

/// One plugin's entries.
#[derive(Default)]
pub(super) struct Space {
    entries: HashMap<String, Entry>,
    /// The entries that expire, by when (and a sequence number, unique per
    /// entry, for ties): the sweep's order.
    pub(super) expiring: BTreeMap<(Instant, u64), String>,
    next_seq: u64,
    /// Bytes of keys and values held, tombstones' keys included.
    pub(super) used: usize,
    /// Keys changed here since the last take.
    changed: HashSet<String>,
}

pub(super) struct Entry {
    slot: Slot,
    /// When it expires, with its sequence number in `Space::expiring`.
    expires: Option<(Instant, u64)>,
    /// Changed here since the last take: a value or a tombstone to push
    /// (and keep over snapshots), or a counter deleted and then counted
    /// again (a `Delete` to push before its `Add`).
    dirty: bool,
}

pub(super) enum Slot {
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
    pub(super) fn bytes(&self) -> usize {
        match self {
            Slot::Bytes(v) => v.len(),
            Slot::Counter { .. } => COUNTER_BYTES,
            Slot::Gone => 0,
        }
    }
}

impl Entry {
    pub(super) fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|(at, _)| at <= now)
    }

    pub(super) fn ttl_ms(&self, now: Instant) -> Option<u64> {
        self.expires.map(|(at, _)| {
            let left = at.saturating_duration_since(now);
            // Rounded up: an entry still here has some life left.
            u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1)
        })
    }
}

pub(super) fn total(base: i64, pending: i64, local: i64) -> i64 {
    base.saturating_add(pending).saturating_add(local)
}

pub(super) fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KEY {
        Err(KvError::InvalidKey)
    } else {
        Ok(())
    }
}

pub(super) fn deadline(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.and_then(|ms| now.checked_add(Duration::from_millis(ms)))
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is consistent after every statement that could panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Space {
    /// Puts `entry` under `key` (replacing any), keeping the byte count and
    /// the expiry index; `expires` is set from `at`.
    pub(super) fn put(&mut self, key: &str, slot: Slot, at: Option<Instant>, dirty: bool) {
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
    pub(super) fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        if let Some(e) = entry.expires {
            self.expiring.remove(&e);
        }
        self.used -= key.len() + entry.slot.bytes();
        Some(entry)
    }

    /// Forgets the pending change of a key no longer held.
    pub(super) fn forget(&mut self, key: &str) {
        if !self.entries.contains_key(key) {
            self.changed.remove(key);
        }
    }

    /// The live entry under `key` (not a tombstone); an expired one is
    /// dropped.
    pub(super) fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
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
    pub(super) fn sweep(&mut self, now: Instant, max: usize) {
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
    pub(super) fn room(&mut self, key: &str, bytes: usize, quota: usize, now: Instant) -> bool {
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

    pub(super) fn get(&mut self, key: &str, now: Instant) -> Option<Vec<u8>> {
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

    pub(super) fn set(
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

    pub(super) fn delete(&mut self, key: &str, syncing: bool, now: Instant) {
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

    pub(super) fn increment(
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

    pub(super) fn counter(&mut self, key: &str, now: Instant) -> Result<i64, KvError> {
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
    pub(super) fn take(&mut self, namespace: &str, now: Instant, out: &mut Vec<KvChange>) {
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
    pub(super) fn apply(
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

    pub(super) fn put_theirs(
        &mut self,
        key: &str,
        value: KvSnapshotValue,
        ttl_ms: Option<u64>,
        now: Instant,
    ) {
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
