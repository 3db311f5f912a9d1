//! Dispatch: the live plugins of one job, called phase by phase in `order`,
//! their updates checked against the grants and merged only when the whole
//! call succeeded, and the operator's error policy applied.

mod updates;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::Error;
use crate::bindings::types::Entry;
use crate::error::{CallError, Cause};
use crate::instance::{Instance, Usage};
use crate::loading::Plugin;
use crate::manifest::Manifest;
use crate::policy::OnError;

pub use updates::Change;

/// The job's shared data: string keys to JSON values.
pub type DataMap = serde_json::Map<String, Value>;

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
        let job = self.job_config.to_string();
        let mut names = BTreeSet::new();
        let mut slots = Vec::with_capacity(self.plugins.len());
        for (plugin, config) in self.plugins {
            if !names.insert(plugin.name().to_owned()) {
                return Err(Error::Duplicate(plugin.name().to_owned()));
            }
            let config = config.to_string();
            let mut slot = Slot {
                stats: PluginStats::new(plugin.name()),
                manifest: None,
                plugin,
                config,
                instance: None,
                disabled: None,
            };
            match Instance::start(&slot.plugin, &job, &slot.config) {
                Ok(instance) => {
                    slot.manifest = Some(instance.manifest.clone());
                    slot.instance = Some(instance);
                }
                Err(Error::Call(err)) if slot.plugin.policy().on_error != OnError::Fail => {
                    tracing::warn!("{err}; plugin disabled");
                    slot.disable(err);
                }
                Err(err) => return Err(err),
            }
            slots.push(slot);
        }
        Ok(Hooks {
            job,
            rank: self.rank,
            slots,
            routes: HashMap::new(),
        })
    }
}

/// The live plugins of one job. Each keeps its own store, so its state
/// persists from phase to phase.
pub struct Hooks {
    job: String,
    rank: u32,
    slots: Vec<Slot>,
    routes: HashMap<String, Vec<usize>>,
}

struct Slot {
    plugin: Plugin,
    config: String,
    /// Read when the plugin started; routes are built from it, so a plugin
    /// between instances (after a trap) or disabled keeps its place.
    manifest: Option<Manifest>,
    /// `None` when disabled, or when a trap threw the instance away and it
    /// is to be started afresh at its next call.
    instance: Option<Instance>,
    disabled: Option<CallError>,
    stats: PluginStats,
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
            Outcome::Failed(e) => Some(e),
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
    Failed(#[serde(serialize_with = "display")] CallError),
    /// The plugin is disabled after an earlier failure and was not called.
    Disabled,
}

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
    /// Bytes of linear memory its instance held after its last call.
    pub memory: usize,
    /// Keys it set or removed at least once.
    pub keys_changed: BTreeSet<String>,
    /// Why it is disabled, if it is.
    pub disabled: Option<String>,
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
            keys_changed: BTreeSet::new(),
            disabled: None,
        }
    }

    fn add(&mut self, usage: Usage) {
        self.calls += 1;
        self.fuel += usage.fuel;
        self.time += usage.elapsed;
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

    /// The manifests of the plugins that are running.
    pub fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        self.slots.iter().filter_map(|s| s.manifest.as_ref())
    }

    /// The plugins that will be called at `phase`, in call order.
    pub fn subscribers(&mut self, phase: &str) -> Vec<&str> {
        let route = self.route(phase).to_vec();
        route.iter().map(|&i| self.slots[i].plugin.name()).collect()
    }

    /// Totals per plugin, in job order.
    pub fn stats(&self) -> Vec<PluginStats> {
        self.slots.iter().map(|s| s.stats.clone()).collect()
    }

    /// Calls every plugin subscribed to `phase`, lowest `order` first, each
    /// seeing the updates of those before it. A failed call changes nothing
    /// in `data`; whether the phase goes on is the plugin's error policy.
    /// Returns `Err` only for a failure under the `fail` policy; the hooks
    /// stay usable after it (to fire a final phase, say).
    pub fn fire(&mut self, phase: &str, data: &mut DataMap) -> Result<PhaseReport, Error> {
        let route = self.route(phase).to_vec();
        let mut report = PhaseReport {
            phase: phase.to_owned(),
            calls: Vec::with_capacity(route.len()),
        };
        for i in route {
            let call = self.slots[i].call(&self.job, phase, data);
            let slot = &mut self.slots[i];
            match call {
                Ok(call) => report.calls.push(call),
                Err(err) => {
                    slot.stats.failures += 1;
                    let call_report = CallReport {
                        plugin: slot.plugin.name().to_owned(),
                        outcome: Outcome::Failed(err.clone()),
                        fuel: 0,
                        elapsed: Duration::ZERO,
                    };
                    match slot.plugin.policy().on_error {
                        OnError::Fail => return Err(Error::Call(err)),
                        OnError::Skip => tracing::warn!("{err}; skipped"),
                        OnError::Disable => {
                            tracing::warn!("{err}; plugin disabled for the rest of the job");
                            slot.disable(err);
                        }
                    }
                    report.calls.push(call_report);
                }
            }
        }
        Ok(report)
    }

    /// Each stateful plugin's state, by plugin name, to save in a checkpoint.
    pub fn save_states(&mut self) -> Result<BTreeMap<String, Value>, Error> {
        let mut states = BTreeMap::new();
        for slot in &mut self.slots {
            let name = slot.plugin.name().to_owned();
            let Some(instance) = slot.live(&self.job)? else {
                continue;
            };
            match instance.save_state() {
                Ok(Some(state)) => {
                    states.insert(name, state);
                }
                Ok(None) => {}
                Err(cause) => return Err(slot.fail("save-state", cause)),
            }
        }
        Ok(states)
    }

    /// Gives each plugin the state it saved, when a job resumes.
    pub fn load_states(&mut self, states: &BTreeMap<String, Value>) -> Result<(), Error> {
        for slot in &mut self.slots {
            let Some(state) = states.get(slot.plugin.name()) else {
                continue;
            };
            let Some(instance) = slot.live(&self.job)? else {
                continue;
            };
            if let Err(cause) = instance.load_state(state) {
                return Err(slot.fail("load-state", cause));
            }
        }
        Ok(())
    }

    fn route(&mut self, phase: &str) -> &[usize] {
        if !self.routes.contains_key(phase) {
            let mut route: Vec<usize> = (0..self.slots.len())
                .filter(|&i| {
                    let slot = &self.slots[i];
                    slot.manifest.as_ref().is_some_and(|m| {
                        m.subscribes(phase) && !(m.rank_zero_only && self.rank != 0)
                    })
                })
                .collect();
            // A stable sort keeps job order among equal `order`s.
            route.sort_by_key(|&i| self.slots[i].manifest.as_ref().map_or(0, |m| m.order));
            self.routes.insert(phase.to_owned(), route);
        }
        &self.routes[phase]
    }
}

impl Slot {
    /// The instance, started afresh if a trap threw the last one away.
    fn live(&mut self, job: &str) -> Result<Option<&mut Instance>, Error> {
        if self.disabled.is_some() {
            return Ok(None);
        }
        if self.instance.is_none() {
            match Instance::start(&self.plugin, job, &self.config) {
                Ok(instance) => {
                    tracing::info!(
                        plugin = self.plugin.name(),
                        "plugin restarted with fresh state after a trap"
                    );
                    self.instance = Some(instance);
                }
                Err(Error::Call(err)) => {
                    self.disable(err.clone());
                    return Err(Error::Call(err));
                }
                Err(other) => return Err(other),
            }
        }
        Ok(self.instance.as_mut())
    }

    /// Throws the instance away if a trap left it unusable; the next call
    /// starts a fresh one.
    fn drop_if_poisoned(&mut self) {
        if self.instance.as_ref().is_some_and(|i| i.poisoned) {
            self.instance = None;
        }
    }

    fn disable(&mut self, err: CallError) {
        self.stats.disabled = Some(err.to_string());
        self.disabled = Some(err);
        self.instance = None;
    }

    fn fail(&mut self, call: &str, cause: Cause) -> Error {
        self.drop_if_poisoned();
        Error::Call(CallError {
            plugin: self.plugin.name().to_owned(),
            call: call.to_owned(),
            cause,
        })
    }

    /// One guarded call at `phase`: checks and merges its updates.
    fn call(
        &mut self,
        job: &str,
        phase: &str,
        data: &mut DataMap,
    ) -> Result<CallReport, CallError> {
        let name = self.plugin.name().to_owned();
        if self.disabled.is_some() {
            return Ok(CallReport {
                plugin: name,
                outcome: Outcome::Disabled,
                fuel: 0,
                elapsed: Duration::ZERO,
            });
        }
        let as_call_error = |e: Error, phase: &str| match e {
            Error::Call(e) => e,
            other => CallError {
                plugin: name.clone(),
                call: format!("phase '{phase}'"),
                cause: Cause::Trap(other.to_string()),
            },
        };
        let instance = self
            .live(job)
            .map_err(|e| as_call_error(e, phase))?
            .expect("a slot that is not disabled has an instance");
        let entries = entries_for(&instance.manifest, data);
        let (result, usage) = instance.on_phase(phase, &entries);
        self.stats.memory = instance.memory_used();
        self.stats.add(usage);
        let changes = result.and_then(|updates| updates::check(updates, self.plugin.policy()));
        let changes = match changes {
            Ok(changes) => changes,
            Err(cause) => {
                self.drop_if_poisoned();
                return Err(CallError {
                    plugin: name,
                    call: format!("phase '{phase}'"),
                    cause,
                });
            }
        };
        let (mut set, mut removed) = (Vec::new(), Vec::new());
        for change in changes {
            match change {
                Change::Set(key, value) => {
                    self.stats.keys_changed.insert(key.clone());
                    data.insert(key.clone(), value);
                    set.push(key);
                }
                Change::Remove(key) => {
                    self.stats.keys_changed.insert(key.clone());
                    data.remove(&key);
                    removed.push(key);
                }
            }
        }
        Ok(CallReport {
            plugin: name,
            outcome: Outcome::Applied { set, removed },
            fuel: usage.fuel,
            elapsed: usage.elapsed,
        })
    }
}

/// The entries a plugin reads, as JSON text.
fn entries_for(manifest: &Manifest, data: &DataMap) -> Vec<Entry> {
    let entry = |(key, value): (&String, &Value)| Entry {
        key: key.clone(),
        value: value.to_string(),
    };
    match &manifest.reads {
        None => data.iter().map(entry).collect(),
        Some(keys) => keys
            .iter()
            .filter_map(|k| data.get_key_value(k.as_str()))
            .map(entry)
            .collect(),
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
