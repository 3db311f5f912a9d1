//! The driver of a lifecycle: it fires phases over the data map and keeps
//! the time spent in each.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::LifecycleError;
use wasmhooks::{DataMap, Hooks};

/// One phase's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PhaseTime {
    /// Times the phase fired.
    pub count: u64,
    /// Time in plugin calls, microseconds.
    pub plugins_us: u64,
}

/// Totals for every phase, in first-fired order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseTimings {
    phases: Vec<(String, PhaseTime)>,
    index: BTreeMap<String, usize>,
}

impl Serialize for PhaseTimings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.phases.iter().map(|(phase, t)| {
            serde_json::json!({"phase": phase, "count": t.count, "plugins_us": t.plugins_us})
        }))
    }
}

impl PhaseTimings {
    /// Adds one firing of `phase` that took `elapsed`.
    pub fn record(&mut self, phase: &str, elapsed: Duration) {
        let i = *self.index.entry(phase.to_owned()).or_insert_with(|| {
            self.phases.push((phase.to_owned(), PhaseTime::default()));
            self.phases.len() - 1
        });
        let t = &mut self.phases[i].1;
        t.count += 1;
        t.plugins_us += u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    }

    /// The phases in the order they first fired.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &PhaseTime)> {
        self.phases.iter().map(|(p, t)| (p.as_str(), t))
    }

    /// The totals for one phase.
    pub fn get(&self, phase: &str) -> Option<&PhaseTime> {
        self.index.get(phase).map(|&i| &self.phases[i].1)
    }
}

/// The hooks, the data map and the timings of one lifecycle run.
pub(crate) struct Driver<'h> {
    pub(crate) hooks: &'h mut Hooks,
    pub(crate) data: DataMap,
    pub(crate) timings: PhaseTimings,
}

impl<'h> Driver<'h> {
    pub(crate) fn new(hooks: &'h mut Hooks, data: DataMap) -> Self {
        Driver {
            hooks,
            data,
            timings: PhaseTimings::default(),
        }
    }

    /// Fires `phase` at the plugins and records its time.
    pub(crate) fn fire(&mut self, phase: &str) -> Result<(), LifecycleError> {
        let start = Instant::now();
        let result = self.hooks.fire(phase, &mut self.data);
        self.timings.record(phase, start.elapsed());
        result?;
        Ok(())
    }

    /// Whether a plugin set `key` to `true`.
    pub(crate) fn flag(&self, key: &str) -> bool {
        self.data.get(key).and_then(serde_json::Value::as_bool) == Some(true)
    }

    /// Sets a host-owned key.
    pub(crate) fn set(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.data.insert(key.to_owned(), value.into());
    }
}
