//! A replica's plugins: each one instantiated [`ServingConfig::instances`]
//! times, so concurrent requests call different instances and no instance
//! is ever in two requests' calls at once. A call takes the first free set
//! (round robin from the last, so the sets share the work and stay warm),
//! or waits for one; it never waits for a particular request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use wasmhooks::schema::phases::serving as phase;
use wasmhooks::{Hooks, Host, KvStore, OnError, Plugin, PluginStats, Policy};

use super::ServingConfig;
use crate::LifecycleError;
use crate::job::JobBundle;

/// Where a replica's plugins come from.
pub enum Plugins<'a> {
    /// A job bundle: its plugins and configs, read from inside it.
    Job(&'a JobBundle),
    /// Files with their configs, and the config every plugin's `init` gets.
    Files {
        /// `(file, plugin config)` in call order for equal `order`s.
        plugins: Vec<(PathBuf, Value)>,
        /// The job config.
        job_config: Value,
    },
}

/// The plugins of one replica, ready for requests.
pub struct Pool {
    sets: Box<[Mutex<Hooks>]>,
    next: AtomicUsize,
    config: ServingConfig,
    /// Each plugin's error policy, by name: the plugin that set a key the
    /// host cannot use answers for it as for a failed call.
    on_error: HashMap<String, OnError>,
    /// The serving phases some plugin is called at; the others cost nothing.
    listened: [bool; 4],
    /// The plugins' key-value store, shared by every set: what a replica
    /// syncs with the cluster's.
    kv: Arc<KvStore>,
    pub(super) counters: Counters,
}

/// What the request path did, since the replica started.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) blocked: AtomicU64,
    pub(super) stopped: AtomicU64,
    pub(super) failed_closed: AtomicU64,
    pub(super) failed_open: AtomicU64,
    pub(super) bad_requests: AtomicU64,
}

/// The counters and every plugin's totals, for metrics and reports.
#[derive(Debug, Clone, Serialize)]
pub struct ServingStats {
    /// Requests begun.
    pub requests: u64,
    /// Requests a plugin refused (`block`).
    pub blocked: u64,
    /// Streams a plugin ended (`stop`).
    pub stopped: u64,
    /// Requests failed with 503 because a plugin under `fail` failed.
    pub failed_closed: u64,
    /// Plugin failures under `skip` or `disable` the requests went on past.
    pub failed_open: u64,
    /// Requests refused before any plugin saw them (a body the host could
    /// not read).
    pub bad_requests: u64,
    /// Per plugin, over all its instances.
    pub plugins: Vec<PluginStats>,
}

/// The four phases, in the order of [`Pool::listened`].
const PHASES: [&str; 4] = [
    phase::ON_REQUEST,
    phase::ON_RESPONSE_CHUNK,
    phase::ON_RESPONSE,
    phase::ON_REQUEST_END,
];

impl Pool {
    /// Loads and starts the plugins under `policy`, each call's deadline
    /// capped by its `[serving] timeout_ms`. With `cache_dir`, compiled
    /// plugins are kept there. A plugin that cannot start fails here,
    /// before the replica takes a request.
    pub fn start(
        policy: &Policy,
        plugins: Plugins<'_>,
        cache_dir: Option<&Path>,
    ) -> Result<Pool, LifecycleError> {
        let config = ServingConfig::of(policy)
            .map_err(|m| LifecycleError::Config(format!("operator config: {m}")))?
            .clone();
        let mut capped = policy.clone();
        capped.cap_phase_timeouts(config.timeout);
        let on_error = capped
            .plugins()
            .iter()
            .map(|p| (p.name.clone(), p.on_error))
            .collect();
        let host = match cache_dir {
            Some(dir) => Host::with_compile_cache(capped, dir)?,
            None => Host::new(capped)?,
        };
        let (loaded, job_config): (Vec<(Plugin, Value)>, Value) = match plugins {
            Plugins::Job(job) => (job.plugins(&host)?, job.config.clone()),
            Plugins::Files {
                plugins,
                job_config,
            } => (
                plugins
                    .into_iter()
                    .map(|(file, config)| Ok((host.load_file(file)?, config)))
                    .collect::<Result<_, wasmhooks::Error>>()?,
                job_config,
            ),
        };
        let sets = (0..config.instances)
            .map(|_| {
                let mut builder = Hooks::builder(job_config.clone());
                for (plugin, config) in &loaded {
                    builder = builder.plugin(plugin.clone(), config.clone());
                }
                builder.start().map(Mutex::new)
            })
            .collect::<Result<Box<[_]>, _>>()?;
        let mut listened = [false; 4];
        {
            let mut first = sets[0].lock().unwrap_or_else(PoisonError::into_inner);
            for (heard, name) in listened.iter_mut().zip(PHASES) {
                *heard = !first.subscribers(name).is_empty();
            }
        }
        Ok(Pool {
            sets,
            next: AtomicUsize::new(0),
            config,
            on_error,
            listened,
            kv: host.kv().clone(),
            counters: Counters::default(),
        })
    }

    /// The `[serving]` settings it runs under.
    pub fn config(&self) -> &ServingConfig {
        &self.config
    }

    /// The plugins' key-value store (`kv`, contract 0.3.0): one per
    /// replica, which a cluster syncs ([`KvStore::take_changes`],
    /// [`KvStore::apply_snapshot`]).
    pub fn kv(&self) -> &Arc<KvStore> {
        &self.kv
    }

    /// Whether some plugin is called at `phase`.
    pub fn listens(&self, phase: &str) -> bool {
        PHASES
            .iter()
            .position(|p| *p == phase)
            .is_some_and(|i| self.listened[i])
    }

    /// The error policy of plugin `name` (`fail` for one it does not know).
    pub(super) fn on_error(&self, name: &str) -> OnError {
        self.on_error.get(name).copied().unwrap_or(OnError::Fail)
    }

    /// Runs `f` on a free set of instances, waiting for one if all are in
    /// calls.
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut Hooks) -> R) -> R {
        let n = self.sets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            match self.sets[(start + i) % n].try_lock() {
                Ok(mut hooks) => return f(&mut hooks),
                Err(TryLockError::Poisoned(p)) => return f(&mut p.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        f(&mut lock(&self.sets[start]))
    }

    /// Waits up to `bound` for background observers (the meter's last
    /// lines, say); returns how many observations were dropped.
    pub fn flush(&self, bound: Duration) -> u64 {
        self.sets.iter().map(|set| lock(set).flush(bound)).sum()
    }

    /// The counters, and each plugin's totals over its instances.
    pub fn stats(&self) -> ServingStats {
        let mut plugins: Vec<PluginStats> = Vec::new();
        for set in self.sets.iter() {
            for stats in lock(set).stats() {
                match plugins.iter_mut().find(|p| p.plugin == stats.plugin) {
                    Some(total) => add(total, stats),
                    None => plugins.push(stats),
                }
            }
        }
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServingStats {
            requests: get(&c.requests),
            blocked: get(&c.blocked),
            stopped: get(&c.stopped),
            failed_closed: get(&c.failed_closed),
            failed_open: get(&c.failed_open),
            bad_requests: get(&c.bad_requests),
            plugins,
        }
    }
}

fn lock(set: &Mutex<Hooks>) -> MutexGuard<'_, Hooks> {
    set.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One instance's totals added to the others'.
fn add(total: &mut PluginStats, one: PluginStats) {
    total.calls += one.calls;
    total.failures += one.failures;
    total.fuel += one.fuel;
    total.time += one.time;
    total.memory += one.memory;
    total.peak_memory = total.peak_memory.max(one.peak_memory);
    total.bytes_written += one.bytes_written;
    total.keys_changed.extend(one.keys_changed);
    total.more_keys_changed |= one.more_keys_changed;
    total.dropped += one.dropped;
    total.disabled = total.disabled.take().or(one.disabled);
}
