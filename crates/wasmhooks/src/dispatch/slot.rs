//! One plugin of a job: its instance (restarted after a trap), its stats,
//! and its error bookkeeping. A slot lives either with the hooks or on the
//! observer worker; the code is the same.

use std::time::Duration;

use serde_json::Value;

use super::updates::{self, Change};
use super::{CallReport, Outcome, PluginStats};
use crate::Error;
use crate::bindings::Input;
use crate::error::{Call, CallError, Cause};
use crate::instance::Instance;
use crate::loading::Plugin;
use crate::manifest::Manifest;
use crate::policy::OnError;

pub(super) struct Slot {
    pub(super) plugin: Plugin,
    config: String,
    /// `None` when disabled, or when a trap threw the instance away and it
    /// is to be started afresh at its next call.
    instance: Option<Instance>,
    /// The manifest the first instance gave (with the keys its `init`
    /// named), which the hooks route and pass values by: a restarted
    /// instance must give the same.
    manifest: Option<Manifest>,
    /// What its read-write folders held when the first instance started:
    /// a restarted one's quotas go on from there.
    folder_baseline: Vec<u64>,
    disabled: Option<CallError>,
    pub(super) stats: PluginStats,
}

/// A failed call with what the operator's error policy made of it.
#[derive(Debug)]
pub(super) struct Failed {
    /// Boxed: a failure is rare, and results stay small.
    pub(super) error: Box<CallError>,
    /// Whether the job stops (`fail`); else it goes on without this call.
    pub(super) stops: bool,
}

/// Why a slot has no instance to call.
enum NotLive {
    /// A restart failed; the operator's policy has been applied to it.
    Failed(Failed),
    /// The host could not start one.
    Host(Error),
}

impl NotLive {
    fn into_error(self) -> Error {
        match self {
            NotLive::Failed(failed) => Error::Call(*failed.error),
            NotLive::Host(error) => error,
        }
    }
}

/// A successful call: its report and the checked changes to merge, with
/// the bytes each takes.
pub(super) struct Succeeded {
    pub(super) report: CallReport,
    pub(super) changes: Vec<Change>,
    pub(super) sizes: Vec<usize>,
}

impl Slot {
    /// Starts the plugin. A failing start under `skip` or `disable` leaves
    /// a disabled slot; under `fail` it is an error.
    pub(super) fn start(
        plugin: Plugin,
        job: &str,
        config: String,
    ) -> Result<(Self, Option<Manifest>), Error> {
        let mut slot = Slot {
            stats: PluginStats::new(plugin.name()),
            plugin,
            config,
            instance: None,
            manifest: None,
            folder_baseline: Vec::new(),
            disabled: None,
        };
        let manifest = match Instance::start(&slot.plugin, job, &slot.config, None) {
            Ok(instance) => {
                let manifest = instance.manifest.clone();
                slot.folder_baseline = instance.folder_baseline();
                slot.instance = Some(instance);
                slot.manifest = Some(manifest.clone());
                Some(manifest)
            }
            Err(Error::Call(err)) => match slot.failed(err, true) {
                Failed { error, stops: true } => return Err(Error::Call(*error)),
                Failed { .. } => None,
            },
            Err(err) => return Err(err),
        };
        Ok((slot, manifest))
    }

    /// The instance, started afresh if a trap threw the last one away; a
    /// restart that fails is a failed start under the operator's policy.
    fn live(&mut self, job: &str) -> Result<Option<&mut Instance>, NotLive> {
        if self.disabled.is_some() {
            return Ok(None);
        }
        if self.instance.is_none() {
            let baseline = Some(self.folder_baseline.as_slice());
            let started =
                Instance::start(&self.plugin, job, &self.config, baseline).and_then(|instance| {
                    if self
                        .manifest
                        .as_ref()
                        .is_some_and(|m| *m != instance.manifest)
                    {
                        return Err(instance.error(Call::Init, Cause::ChangedManifest));
                    }
                    Ok(instance)
                });
            match started {
                Ok(instance) => {
                    tracing::info!(
                        plugin = self.plugin.name(),
                        "plugin restarted with fresh state after a trap"
                    );
                    self.instance = Some(instance);
                }
                Err(Error::Call(err)) => return Err(NotLive::Failed(self.failed(err, true))),
                Err(other) => return Err(NotLive::Host(other)),
            }
        }
        Ok(self.instance.as_mut())
    }

    /// Throws the instance away if a trap left it unusable.
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

    /// The operator's error policy, applied in this one place to every
    /// failed call (at start or restart, at a phase, or found after the
    /// call returned, as updates that would overfill the data map): counts
    /// it, logs it, disables the plugin under `disable` (and under `skip`
    /// when it could not even start: there is no instance to go on with),
    /// and says whether the job stops (`fail`).
    pub(super) fn failed(&mut self, error: CallError, starting: bool) -> Failed {
        self.stats.failures += 1;
        let on_error = self.plugin.policy().on_error;
        match on_error {
            OnError::Fail => {}
            OnError::Skip if !starting => tracing::warn!("{error}; skipped"),
            OnError::Skip | OnError::Disable => {
                tracing::warn!("{error}; plugin disabled for the rest of the job");
                self.disable(error.clone());
            }
        }
        Failed {
            error: Box::new(error),
            stops: on_error == OnError::Fail,
        }
    }

    fn error(&mut self, call: Call, cause: Cause) -> CallError {
        self.drop_if_poisoned();
        CallError {
            plugin: self.plugin.name().to_owned(),
            call,
            cause,
        }
    }

    /// One guarded call at `phase` with the values the plugin reads. A
    /// failure comes back with the policy's verdict ([`Slot::failed`]).
    /// Observing calls return no changes.
    pub(super) fn call(
        &mut self,
        job: &str,
        phase: &str,
        input: &Input,
        observe: bool,
    ) -> Result<Succeeded, Failed> {
        let name = self.plugin.name().to_owned();
        if self.disabled.is_some() {
            return Ok(Succeeded {
                report: CallReport::new(name, Outcome::Disabled),
                changes: Vec::new(),
                sizes: Vec::new(),
            });
        }
        // Only a failure needs the label.
        let call = || Call::Phase(phase.to_owned());
        let result = match self.live(job) {
            Err(NotLive::Failed(failed)) => return Err(failed),
            Ok(Some(instance)) => {
                let (result, cost) = instance.on_phase(phase, input);
                let (memory, peak, written) = (
                    instance.memory_used(),
                    instance.memory_peak(),
                    instance.bytes_written(),
                );
                self.stats.memory = memory;
                self.stats.peak_memory = self.stats.peak_memory.max(peak);
                self.stats.bytes_written = written;
                self.stats.add(cost);
                let policy = self.plugin.policy();
                let max = policy.limits.max_update_bytes;
                result
                    .and_then(|u| updates::check(u, &policy.name, &policy.grants, max))
                    .map(|checked| (checked, cost))
                    .map_err(|cause| self.error(call(), cause))
            }
            Ok(None) => unreachable!("a slot that is not disabled has an instance"),
            Err(NotLive::Host(other)) => Err(self.error(call(), Cause::Host(other.to_string()))),
        };
        match result {
            Ok(((changes, sizes), cost)) => {
                let (changes, sizes) = if observe {
                    (Vec::new(), Vec::new())
                } else {
                    (changes, sizes)
                };
                let mut report = CallReport::new(name, Outcome::applied(&changes));
                report.fuel = cost.fuel;
                report.elapsed = cost.elapsed;
                for change in &changes {
                    self.stats.note_changed(change.key());
                }
                Ok(Succeeded {
                    report,
                    changes,
                    sizes,
                })
            }
            Err(err) => Err(self.failed(err, false)),
        }
    }

    /// The plugin's state for a checkpoint, if it keeps one.
    pub(super) fn save_state(&mut self, job: &str) -> Result<Option<Value>, Error> {
        let Some(instance) = self.live(job).map_err(NotLive::into_error)? else {
            return Ok(None);
        };
        instance
            .save_state()
            .map_err(|cause| Error::Call(self.error(Call::SaveState, cause)))
    }

    /// Restores state a checkpoint held.
    pub(super) fn load_state(&mut self, job: &str, state: &Value) -> Result<(), Error> {
        let Some(instance) = self.live(job).map_err(NotLive::into_error)? else {
            return Ok(());
        };
        instance
            .load_state(state)
            .map_err(|cause| Error::Call(self.error(Call::LoadState, cause)))
    }
}

impl CallReport {
    fn new(plugin: String, outcome: Outcome) -> Self {
        CallReport {
            plugin,
            outcome,
            fuel: 0,
            elapsed: Duration::ZERO,
        }
    }
}
