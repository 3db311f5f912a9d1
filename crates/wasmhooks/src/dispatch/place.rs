//! Where a plugin's instance lives: with the hooks, called on the caller's
//! thread, or on the observer worker. Every operation on a plugin decides
//! between the two here, so the hooks never match on it.

use serde_json::Value;

use super::observer::Observer;
use super::slot::{Failed, Slot, Succeeded};
use super::{PluginStats, worker_gone};
use crate::Error;
use crate::bindings::Input;
use crate::error::CallError;
use crate::manifest::Manifest;

pub(super) enum Place {
    /// With the hooks: called in line.
    Here(Box<Slot>),
    /// On the observer worker, as its slot at this index.
    Observer(usize),
}

impl Place {
    /// Whether it runs on the observer worker.
    pub(super) fn observed(&self) -> bool {
        matches!(self, Place::Observer(_))
    }

    /// Its totals; `observed` is the worker's, read once for all plugins.
    pub(super) fn stats(
        &self,
        name: &str,
        observed: &[PluginStats],
        observer: Option<&Observer>,
    ) -> PluginStats {
        match self {
            Place::Here(slot) => slot.stats.clone(),
            Place::Observer(i) => {
                let mut stats = observed
                    .get(*i)
                    .cloned()
                    .unwrap_or_else(|| PluginStats::new(name));
                stats.dropped = observer.map_or(0, |o| o.dropped(*i));
                stats
            }
        }
    }

    /// Calls the plugin `name` at `phase`. `None`: it only observes the
    /// phase, and the snapshot was queued for the worker.
    #[inline]
    pub(super) fn call(
        &mut self,
        observer: Option<&mut Observer>,
        job: &str,
        name: &str,
        manifest: &Manifest,
        phase: &str,
        input: Input,
    ) -> Option<Result<Succeeded, Failed>> {
        match self {
            Place::Here(slot) => Some(slot.call(job, phase, &input, false)),
            Place::Observer(i) => {
                let observer = observer.expect("observed plugins have a worker");
                if manifest.observes(phase) {
                    observer.observe(*i, phase, input);
                    return None;
                }
                Some(
                    observer
                        .call(*i, phase, input)
                        .unwrap_or_else(|| Err(worker_gone(name, phase))),
                )
            }
        }
    }

    /// Applies the operator's policy to a call of the plugin `name` that
    /// the hooks failed after it returned (it would overfill the data map).
    pub(super) fn failed(
        &mut self,
        observer: Option<&Observer>,
        name: &str,
        error: CallError,
        phase: &str,
    ) -> Failed {
        match self {
            Place::Here(slot) => slot.failed(error, false),
            Place::Observer(i) => observer
                .and_then(|o| o.failed(*i, error))
                .unwrap_or_else(|| worker_gone(name, phase)),
        }
    }

    /// The plugin's state to save, if it keeps one.
    pub(super) fn save_state(
        &mut self,
        observer: Option<&Observer>,
        job: &str,
    ) -> Result<Option<Value>, Error> {
        match self {
            Place::Here(slot) => slot.save_state(job),
            Place::Observer(i) => match observer {
                Some(o) => o.save_state(*i),
                None => Ok(None),
            },
        }
    }

    /// Gives the plugin the state it saved.
    pub(super) fn load_state(
        &mut self,
        observer: Option<&Observer>,
        job: &str,
        state: &Value,
    ) -> Result<(), Error> {
        match self {
            Place::Here(slot) => slot.load_state(job, state),
            Place::Observer(i) => match observer {
                Some(o) => o.load_state(*i, state),
                None => Ok(()),
            },
        }
    }
}
