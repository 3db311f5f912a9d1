//! Dispatch: the live plugins of one job, called phase by phase in `order`,
//! their updates checked against the grants and merged only when the whole
//! call succeeded, and the operator's error policy applied. Plugins that
//! declare observe-only phases run on a background worker.

mod observer;
mod place;
mod slot;
mod updates;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::Error;
use crate::bindings::Input;
use crate::error::{Call, CallError};
use crate::instance::Cost;
use crate::loading::Plugin;
use crate::manifest::Manifest;

use observer::Observer;
use place::Place;
use slot::{Failed, Slot, Succeeded};
pub use updates::Change;

/// The job's shared data: string keys to JSON values.
pub type DataMap = serde_json::Map<String, Value>;

/// How long `on_train_end` and the end of a job wait for observers, unless
/// told otherwise.
pub const DEFAULT_FLUSH: Duration = Duration::from_secs(10);

/// Collects the plugins of one job with their configs, then starts them.
pub struct HooksBuilder {
    job_config: Value,
    rank: u32,
    plugins: Vec<(Plugin, Value)>,
}

impl HooksBuilder {
    /// The rank of this process in a multi-process job (default 0);
    /// `rank-zero-only` plugins are not called elsewhere.
    pub fn rank(mut self, rank: u32) -> Self {
        self.rank = rank;
        self
    }

    /// Adds a plugin with its own config (`null` for none). Plugins with
    /// equal `order` run in the order they are added.
    pub fn plugin(mut self, plugin: Plugin, config: Value) -> Self {
        self.plugins.push((plugin, config));
        self
    }

    /// Instantiates every plugin and runs its `init`. A plugin whose policy
    /// is `fail` fails the whole start; others are logged and disabled.
    pub fn start(self) -> Result<Hooks, Error> {
        let job: Arc<str> = Arc::from(self.job_config.to_string());
        let job_limits = self
            .plugins
            .first()
            .map(|(p, _)| p.inner.shared.policy.job_limits().clone())
            .unwrap_or_default();
        let mut names = BTreeSet::new();
        let mut entries = Vec::with_capacity(self.plugins.len());
        let mut observed = Vec::new();
        for (plugin, config) in self.plugins {
            let name = plugin.name().to_owned();
            if !names.insert(name.clone()) {
                return Err(Error::Duplicate(name));
            }
            let (slot, manifest) = Slot::start(plugin, &job, config.to_string())?;
            let place = if manifest.as_ref().is_some_and(|m| !m.observe.is_empty()) {
                observed.push(slot);
                Place::Observer(observed.len() - 1)
            } else {
                Place::Here(Box::new(slot))
            };
            entries.push(Member {
                name,
                manifest,
                place,
            });
        }
        let observer = if observed.is_empty() {
            None
        } else {
            let observer = Observer::start(job.clone(), observed, job_limits.observer_queue_bytes)
                .map_err(|source| Error::Thread {
                    what: "observer",
                    source,
                })?;
            Some(observer)
        };
        Ok(Hooks {
            job,
            rank: self.rank,
            members: entries,
            routes: HashMap::new(),
            observer,
            data_bytes: DataBudget::new(job_limits.max_data_bytes),
        })
    }
}

/// The live plugins of one job. Each keeps its own store, so its state
/// persists from phase to phase.
pub struct Hooks {
    job: Arc<str>,
    rank: u32,
    members: Vec<Member>,
    /// Call order per phase, computed once; shared so firing copies none.
    routes: HashMap<String, Arc<[usize]>>,
    observer: Option<Observer>,
    data_bytes: DataBudget,
}

/// Bytes of the keys plugins set in one data map, as they set them: what a
/// `prefix.*` grant could otherwise grow without end. The hooks keep one
/// for the job's map; a host that keeps a map per unit of work (a served
/// request) keeps one with each map and fires with [`Hooks::fire_in`].
#[derive(Debug, Default, Clone)]
pub struct DataBudget {
    limit: usize,
    total: usize,
    by_key: HashMap<String, usize>,
}

impl DataBudget {
    /// An empty map's budget: plugins may set at most `limit` bytes of keys
    /// and values in it.
    pub fn new(limit: usize) -> Self {
        DataBudget {
            limit,
            ..DataBudget::default()
        }
    }

    /// Bytes plugins have set in the map so far.
    pub fn used(&self) -> usize {
        self.total
    }

    /// The total after `changes`, without applying them.
    fn after(&self, changes: &[Change], sizes: &[usize]) -> usize {
        let mut total = self.total;
        for (i, (change, &size)) in changes.iter().zip(sizes).enumerate() {
            let key = change.key();
            // What the key takes now: as an earlier change of this call
            // left it (calls change a few keys, so a scan beats a map),
            // else as the map holds it.
            let old = changes[..i]
                .iter()
                .zip(sizes)
                .rev()
                .find(|(c, _)| c.key() == key)
                .map_or_else(|| self.by_key.get(key).copied().unwrap_or(0), |(_, &s)| s);
            total = total.saturating_sub(old).saturating_add(size);
        }
        total
    }

    fn apply(&mut self, changes: &[Change], sizes: &[usize], total: usize) {
        for (change, &size) in changes.iter().zip(sizes) {
            match change {
                Change::Set(key, _) => match self.by_key.get_mut(key.as_str()) {
                    Some(old) => *old = size,
                    None => {
                        self.by_key.insert(key.clone(), size);
                    }
                },
                Change::Remove(key) => {
                    self.by_key.remove(key);
                }
            }
        }
        self.total = total;
    }
}

/// A plugin as the hooks see it: its manifest (read when it started, so a
/// plugin between instances or disabled keeps its place in the routes) and
/// where its instance lives.
struct Member {
    name: String,
    manifest: Option<Manifest>,
    place: Place,
}

/// What happened at one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// The phase.
    pub phase: String,
    /// One entry per plugin called (or passed over), in call order.
    pub calls: Vec<CallReport>,
}

impl PhaseReport {
    /// The failures of this phase that the policy let pass.
    pub fn failures(&self) -> impl Iterator<Item = &CallError> {
        self.calls.iter().filter_map(|c| match &c.outcome {
            Outcome::Failed { error } => Some(error),
            _ => None,
        })
    }
}

/// One plugin's call at one phase.
#[derive(Debug, Clone, Serialize)]
pub struct CallReport {
    /// The plugin.
    pub plugin: String,
    /// What came of it.
    pub outcome: Outcome,
    /// Fuel used.
    pub fuel: u64,
    /// Wall-clock time of the call.
    #[serde(with = "micros")]
    pub elapsed: Duration,
}

/// What came of one call.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Outcome {
    /// The call succeeded and its updates were merged.
    Applied {
        /// Keys set.
        set: Vec<String>,
        /// Keys removed.
        removed: Vec<String>,
    },
    /// The call failed; nothing was merged. The policy let the job go on.
    Failed {
        /// What went wrong, with the plugin and the call.
        #[serde(serialize_with = "display")]
        error: CallError,
    },
    /// The plugin is disabled after an earlier failure and was not called.
    Disabled,
    /// The plugin observes this phase: a snapshot was queued for it to see
    /// in the background; its updates are not used.
    Queued,
}

/// Keys a plugin's stats list as changed, at most: enough for a report,
/// and 256 keys of at most 256 bytes each (64 KiB) at worst.
pub const MAX_KEYS_LISTED: usize = 256;

/// A plugin's totals over the job, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStats {
    /// The plugin.
    pub plugin: String,
    /// Calls made (phases, not counting init).
    pub calls: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Fuel used in all.
    pub fuel: u64,
    /// Time spent in the plugin.
    #[serde(with = "micros")]
    pub time: Duration,
    /// Bytes of linear memory and tables its instance held after its last call.
    pub memory: usize,
    /// The most bytes of linear memory and tables it held.
    pub peak_memory: usize,
    /// Bytes its read-write folders grew by.
    pub bytes_written: u64,
    /// Keys it set or removed at least once: the first
    /// [`MAX_KEYS_LISTED`] of them, so a plugin changing ever new keys
    /// (removing ones that never existed costs it nothing) cannot grow the
    /// host's bookkeeping without bound.
    pub keys_changed: BTreeSet<String>,
    /// It changed more keys than `keys_changed` lists.
    pub more_keys_changed: bool,
    /// Observations dropped because the observer queue was full.
    pub dropped: u64,
    /// Why it is disabled, if it is.
    pub disabled: Option<String>,
}

impl Outcome {
    fn applied(changes: &[Change]) -> Self {
        let (mut set, mut removed) = (Vec::new(), Vec::new());
        for change in changes {
            match change {
                Change::Set(key, _) => set.push(key.clone()),
                Change::Remove(key) => removed.push(key.clone()),
            }
        }
        Outcome::Applied { set, removed }
    }
}

impl PluginStats {
    fn new(plugin: &str) -> Self {
        PluginStats {
            plugin: plugin.to_owned(),
            calls: 0,
            failures: 0,
            fuel: 0,
            time: Duration::ZERO,
            memory: 0,
            peak_memory: 0,
            bytes_written: 0,
            keys_changed: BTreeSet::new(),
            more_keys_changed: false,
            dropped: 0,
            disabled: None,
        }
    }

    /// Notes a key it changed, up to [`MAX_KEYS_LISTED`] keys.
    fn note_changed(&mut self, key: &str) {
        if self.keys_changed.contains(key) {
            return;
        }
        if self.keys_changed.len() < MAX_KEYS_LISTED {
            self.keys_changed.insert(key.to_owned());
        } else {
            self.more_keys_changed = true;
        }
    }

    fn add(&mut self, cost: Cost) {
        self.calls += 1;
        self.fuel += cost.fuel;
        self.time += cost.elapsed;
    }
}

impl Hooks {
    /// Starts collecting the plugins of a job with this (read-only) config.
    pub fn builder(job_config: Value) -> HooksBuilder {
        HooksBuilder {
            job_config,
            rank: 0,
            plugins: Vec::new(),
        }
    }

    /// The manifests of the plugins that started.
    pub fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        self.members.iter().filter_map(|m| m.manifest.as_ref())
    }

    /// The plugins that will be called at `phase`, in call order.
    pub fn subscribers(&mut self, phase: &str) -> Vec<&str> {
        let route = self.route(phase).to_vec();
        route
            .iter()
            .map(|&i| self.members[i].name.as_str())
            .collect()
    }

    /// The data keys the plugins called at `phase` read, or `None` if one
    /// of them reads the whole map. An embedder whose data lives elsewhere
    /// (a Python dict) needs to hand over only these: the others reach no
    /// plugin at this phase.
    pub fn keys_read(&mut self, phase: &str) -> Option<BTreeSet<String>> {
        let route = self.route(phase);
        let mut keys = BTreeSet::new();
        for &i in route.iter() {
            match self.members[i]
                .manifest
                .as_ref()
                .and_then(|m| m.reads.as_ref())
            {
                Some(reads) => keys.extend(reads.iter().cloned()),
                None => return None,
            }
        }
        Some(keys)
    }

    /// Whether every plugin called at `phase` only observes it. Firing such
    /// a phase runs no plugin code on the caller's thread and waits for
    /// none: it queues snapshots for the observer worker and returns, so
    /// an embedder may fire it without giving up a lock of its own (the
    /// Python package keeps the GIL, which a busy process is slow to get
    /// back).
    pub fn only_observed(&mut self, phase: &str) -> bool {
        let route = self.route(phase);
        route.iter().all(|&i| {
            let member = &self.members[i];
            member.place.observed() && member.manifest.as_ref().is_some_and(|m| m.observes(phase))
        })
    }

    /// Totals per plugin, in job order.
    pub fn stats(&self) -> Vec<PluginStats> {
        let observed = self
            .observer
            .as_ref()
            .map(Observer::stats)
            .unwrap_or_default();
        self.members
            .iter()
            .map(|m| m.place.stats(&m.name, &observed, self.observer.as_ref()))
            .collect()
    }

    /// Calls every plugin subscribed to `phase`, lowest `order` first, each
    /// seeing the updates of those before it. A failed call changes nothing
    /// in `data`; whether the phase goes on is the plugin's error policy.
    /// Plugins that observe `phase` get a snapshot in the background, and
    /// their updates are not used. Returns `Err` only for a failure under
    /// the `fail` policy; the hooks stay usable after it (to fire a final
    /// phase, say).
    pub fn fire(&mut self, phase: &str, data: &mut DataMap) -> Result<PhaseReport, Error> {
        let mut budget = std::mem::take(&mut self.data_bytes);
        let report = self.fire_in(phase, data, &mut budget);
        self.data_bytes = budget;
        report
    }

    /// A budget for a new data map under the job's `max_data_kib`.
    pub fn data_budget(&self) -> DataBudget {
        DataBudget::new(self.data_bytes.limit)
    }

    /// As [`Hooks::fire`], for a map of the caller's (one per request, say)
    /// whose bytes `budget` counts, made by [`Hooks::data_budget`] with the
    /// map and kept with it.
    pub fn fire_in(
        &mut self,
        phase: &str,
        data: &mut DataMap,
        budget: &mut DataBudget,
    ) -> Result<PhaseReport, Error> {
        let route = self.route(phase);
        let mut report = PhaseReport {
            phase: phase.to_owned(),
            calls: Vec::with_capacity(route.len()),
        };
        for &i in route.iter() {
            let Member {
                name,
                manifest,
                place,
            } = &mut self.members[i];
            let manifest = manifest.as_ref().expect("routed plugins have manifests");
            let input = input_for(manifest, data);
            let called = place.call(
                self.observer.as_mut(),
                &self.job,
                name,
                manifest,
                phase,
                input,
            );
            let Some(result) = called else {
                report.calls.push(CallReport {
                    plugin: name.clone(),
                    outcome: Outcome::Queued,
                    fuel: 0,
                    elapsed: Duration::ZERO,
                });
                continue;
            };
            // Updates that would overfill the data map fail the call too.
            let result = result.and_then(|called| {
                let total = budget.after(&called.changes, &called.sizes);
                if total <= budget.limit {
                    return Ok((called, total));
                }
                let member = &mut self.members[i];
                let error = CallError {
                    plugin: member.name.clone(),
                    call: Call::Phase(phase.to_owned()),
                    cause: crate::Cause::DataMapFull {
                        size: total,
                        limit: budget.limit,
                    },
                };
                Err(member
                    .place
                    .failed(self.observer.as_ref(), &member.name, error, phase))
            });
            match result {
                Ok((
                    Succeeded {
                        report: call,
                        changes,
                        sizes,
                    },
                    total,
                )) => {
                    budget.apply(&changes, &sizes, total);
                    for change in changes {
                        match change {
                            Change::Set(key, value) => data.insert(key, value),
                            Change::Remove(key) => data.remove(&key),
                        };
                    }
                    report.calls.push(call);
                }
                // The slot has applied the operator's policy to it.
                Err(Failed { error, stops: true }) => return Err(Error::Call(*error)),
                Err(Failed { error, .. }) => {
                    report.calls.push(CallReport {
                        plugin: error.plugin.clone(),
                        outcome: Outcome::Failed { error: *error },
                        fuel: 0,
                        elapsed: Duration::ZERO,
                    });
                }
            }
        }
        Ok(report)
    }

    /// Waits up to `bound` for queued observations to run; returns how many
    /// were still waiting when it gave up (0: all ran).
    pub fn flush(&mut self, bound: Duration) -> u64 {
        let left = self.observer.as_ref().map_or(0, |o| o.flush(bound));
        if left > 0 {
            tracing::warn!(left, "observers did not finish within {bound:?}");
        }
        left
    }

    /// Each stateful plugin's state, by plugin name, to save in a checkpoint.
    ///
    /// A background observer's state is saved after the observations
    /// queued before it, waited for up to `bound` in all (as [`Hooks::flush`]);
    /// those still queued then are dropped and counted, so a checkpoint
    /// never waits behind a backlog longer than the job's flush bound (and
    /// the one call in progress, bounded by its own deadline).
    pub fn save_states(&mut self, bound: Duration) -> Result<BTreeMap<String, Value>, Error> {
        if let Some(o) = &self.observer {
            o.flush(bound);
        }
        let mut states = BTreeMap::new();
        for member in &mut self.members {
            let state = member.place.save_state(self.observer.as_ref(), &self.job)?;
            if let Some(state) = state {
                states.insert(member.name.clone(), state);
            }
        }
        Ok(states)
    }

    /// Gives each plugin the state it saved, when a job resumes.
    pub fn load_states(&mut self, states: &BTreeMap<String, Value>) -> Result<(), Error> {
        for member in &mut self.members {
            let Some(state) = states.get(&member.name) else {
                continue;
            };
            member
                .place
                .load_state(self.observer.as_ref(), &self.job, state)?;
        }
        Ok(())
    }

    fn route(&mut self, phase: &str) -> Arc<[usize]> {
        if let Some(route) = self.routes.get(phase) {
            return route.clone();
        }
        let mut route: Vec<usize> = (0..self.members.len())
            .filter(|&i| {
                self.members[i]
                    .manifest
                    .as_ref()
                    .is_some_and(|m| m.subscribes(phase) && !(m.rank_zero_only && self.rank != 0))
            })
            .collect();
        // A stable sort keeps job order among equal `order`s.
        route.sort_by_key(|&i| self.members[i].manifest.as_ref().map_or(0, |m| m.order));
        let route: Arc<[usize]> = Arc::from(route);
        self.routes.insert(phase.to_owned(), route.clone());
        route
    }
}

/// The failure of a call the observer worker could not take, because it
/// is gone: the host's fault, and it stops the job.
fn worker_gone(plugin: &str, phase: &str) -> Failed {
    Failed {
        error: Box::new(CallError {
            plugin: plugin.to_owned(),
            call: Call::Phase(phase.to_owned()),
            cause: crate::Cause::Host("the observer worker is gone".into()),
        }),
        stops: true,
    }
}

/// The values a plugin reads: by position when it lists its keys, so no
/// key string crosses; the whole map when it does not.
fn input_for(manifest: &Manifest, data: &DataMap) -> Input {
    match &manifest.reads {
        None => Input::Whole(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        Some(keys) => Input::Listed(keys.iter().map(|k| data.get(k.as_str()).cloned()).collect()),
    }
}

fn display<S: serde::Serializer>(value: &impl std::fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

mod micros {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every outcome serializes: a report of a failed call included (the
    /// CLI's `--json`, the Python package's reports).
    #[test]
    fn every_outcome_serializes() {
        let error = CallError {
            plugin: "p".into(),
            call: Call::Phase("x".into()),
            cause: crate::Cause::Returned("no".into()),
        };
        for outcome in [
            Outcome::Applied {
                set: vec!["a".into()],
                removed: vec![],
            },
            Outcome::Failed { error },
            Outcome::Disabled,
            Outcome::Queued,
        ] {
            let value = serde_json::to_value(&outcome).unwrap();
            assert!(value["kind"].is_string(), "{value}");
        }
    }
}
