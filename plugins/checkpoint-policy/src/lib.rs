//! Decides when checkpoints are saved and which are kept. Config:
//! `{"every_steps": 50, "keep_last": 2}` saves every 50 steps and keeps the
//! two newest; `{"best_only": true, "monitor": "eval_loss", "mode": "min"}`
//! saves whenever the metric improves and keeps only that checkpoint. The
//! host writes and deletes the files; this plugin only asks, through
//! `should_save` and `checkpoints_to_delete`.

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, json};

#[derive(Default)]
struct CheckpointPolicy {
    every_steps: u64,
    keep_last: Option<usize>,
    best_only: bool,
    monitor: String,
    minimize: bool,
    best: Option<f64>,
    best_path: Option<String>,
    improved: bool,
}

impl Plugin for CheckpointPolicy {
    fn manifest() -> Manifest {
        Manifest::new("checkpoint-policy", env!("CARGO_PKG_VERSION"))
            .phases(["on_step_end", "on_evaluate", "on_save"])
            .rank_zero_only()
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        self.every_steps = config["every_steps"].as_u64().unwrap_or(0);
        self.keep_last = config["keep_last"].as_u64().map(|k| k.max(1) as usize);
        self.best_only = config["best_only"].as_bool().unwrap_or(false);
        self.monitor = config["monitor"].as_str().unwrap_or("eval_loss").to_owned();
        self.minimize = config["mode"].as_str().unwrap_or("min") == "min";
        if self.every_steps == 0 && !self.best_only {
            return Err("set `every_steps`, or `best_only`, or both".into());
        }
        Ok(())
    }

    /// The step, the monitored metric (from the config), and at `on_save`
    /// the checkpoint saved and the run's checkpoints.
    fn reads(&self) -> Option<Vec<String>> {
        let keys = ["step", self.monitor.as_str(), "checkpoint", "checkpoints"];
        Some(keys.map(str::to_owned).to_vec())
    }

    fn on_phase(&mut self, phase: &str, data: &Data) -> Result<Updates, Error> {
        match phase {
            "on_step_end" => {
                let step = data.u64("step").unwrap_or(0);
                let due = self.every_steps > 0 && step > 0 && step.is_multiple_of(self.every_steps);
                Ok(if due {
                    Updates::new().set("should_save", true)
                } else {
                    Updates::new()
                })
            }
            "on_evaluate" if self.best_only => {
                let Some(value) = data.f64(&self.monitor) else {
                    return Ok(Updates::new());
                };
                self.improved = match self.best {
                    None => true,
                    Some(b) if self.minimize => value < b,
                    Some(b) => value > b,
                };
                if !self.improved {
                    return Ok(Updates::new());
                }
                self.best = Some(value);
                Ok(Updates::new().set("should_save", true))
            }
            "on_save" => Ok(self.rotate(data)),
            _ => Ok(Updates::new()),
        }
    }

    fn save_state(&self) -> Option<Value> {
        Some(json!({"best": self.best, "best_path": self.best_path}))
    }

    fn load_state(&mut self, state: Value) -> Result<(), Error> {
        self.best = state["best"].as_f64();
        self.best_path = state["best_path"].as_str().map(str::to_owned);
        Ok(())
    }
}

impl CheckpointPolicy {
    /// The checkpoints to delete after a save.
    fn rotate(&mut self, data: &Data) -> Updates {
        let all: Vec<String> = data
            .get_as("checkpoints")
            .ok()
            .flatten()
            .unwrap_or_default();
        let saved = data.str("checkpoint").map(str::to_owned);
        if self.best_only && std::mem::take(&mut self.improved) {
            self.best_path = saved;
        }
        let keep: Vec<&String> = if self.best_only {
            all.iter()
                .filter(|p| Some(*p) == self.best_path.as_ref())
                .collect()
        } else {
            let k = self.keep_last.unwrap_or(all.len());
            all.iter().rev().take(k).collect()
        };
        let delete: Vec<&String> = all.iter().filter(|p| !keep.contains(p)).collect();
        if delete.is_empty() {
            Updates::new()
        } else {
            Updates::new().set("checkpoints_to_delete", delete)
        }
    }
}

wasmhooks_sdk::export_plugin!(CheckpointPolicy);
