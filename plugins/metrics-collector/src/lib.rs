//! Counts and times the phases of a job, keeping its figures across phases
//! (and, through save/load state, across a resume): the seeds' stateful
//! metrics collector. At `post_initialization` and `on_train_end` it
//! publishes its figures under `metrics`.
//!
//! Time comes from the WASI monotonic clock, which every plugin has.

use std::collections::BTreeMap;
use std::time::Instant;

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, json, serde_json};

#[derive(Default)]
struct MetricsCollector {
    started: Option<Instant>,
    calls: BTreeMap<String, u64>,
    /// Milliseconds from the first phase to the last call of each phase.
    at_ms: BTreeMap<String, f64>,
    /// The last value of every numeric key it reads (e.g. `loss`).
    last: BTreeMap<String, f64>,
}

impl MetricsCollector {
    fn figures(&self) -> Value {
        let total: u64 = self.calls.values().sum();
        json!({"calls": self.calls, "at_ms": self.at_ms, "last": self.last, "total_calls": total})
    }
}

impl Plugin for MetricsCollector {
    fn manifest() -> Manifest {
        Manifest::new("metrics-collector", env!("CARGO_PKG_VERSION"))
            .all_phases()
            .order(100)
            .reads(["loss", "eval_loss", "learning_rate", "step"])
    }

    fn on_phase(&mut self, phase: &str, data: &Data) -> Result<Updates, Error> {
        let started = *self.started.get_or_insert_with(Instant::now);
        *self.calls.entry(phase.to_owned()).or_default() += 1;
        self.at_ms
            .insert(phase.to_owned(), started.elapsed().as_secs_f64() * 1e3);
        for (key, value) in data.iter() {
            if let Some(v) = value.as_f64() {
                self.last.insert(key.to_owned(), v);
            }
        }
        if phase == "post_initialization" || phase == "on_train_end" {
            return Ok(Updates::new().set("metrics", self.figures()));
        }
        Ok(Updates::new())
    }

    fn save_state(&self) -> Option<Value> {
        Some(json!({"calls": self.calls, "last": self.last}))
    }

    fn load_state(&mut self, state: Value) -> Result<(), Error> {
        self.calls = serde_json::from_value(state["calls"].clone())?;
        self.last = serde_json::from_value(state["last"].clone())?;
        Ok(())
    }
}

wasmhooks_sdk::export_plugin!(MetricsCollector);
