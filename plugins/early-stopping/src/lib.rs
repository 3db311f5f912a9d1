//! Stops training when a metric has not improved for `patience`
//! evaluations. Config: `{"monitor": "eval_loss", "mode": "min",
//! "patience": 3, "min_delta": 0.0}` (these are the defaults). Its state
//! (best value, evaluations without improvement) survives a resume.

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, json, log};

struct EarlyStopping {
    monitor: String,
    minimize: bool,
    patience: u64,
    min_delta: f64,
    best: Option<f64>,
    waited: u64,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        EarlyStopping {
            monitor: "eval_loss".into(),
            minimize: true,
            patience: 3,
            min_delta: 0.0,
            best: None,
            waited: 0,
        }
    }
}

impl Plugin for EarlyStopping {
    fn manifest() -> Manifest {
        // The monitored key is configurable: `reads` names it after init.
        Manifest::new("early-stopping", env!("CARGO_PKG_VERSION")).phases(["on_evaluate"])
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        if let Some(m) = config["monitor"].as_str() {
            self.monitor = m.to_owned();
        }
        self.minimize = match config["mode"].as_str().unwrap_or("min") {
            "min" => true,
            "max" => false,
            other => {
                return Err(Error::new(format!(
                    "mode must be min or max, not {other:?}"
                )));
            }
        };
        if let Some(p) = config["patience"].as_u64() {
            self.patience = p;
        }
        if let Some(d) = config["min_delta"].as_f64() {
            self.min_delta = d.abs();
        }
        Ok(())
    }

    fn reads(&self) -> Option<Vec<String>> {
        Some(vec![self.monitor.clone()])
    }

    fn on_phase(&mut self, _phase: &str, data: &Data) -> Result<Updates, Error> {
        let value = data
            .f64(&self.monitor)
            .ok_or_else(|| Error::new(format!("no number under '{}' to monitor", self.monitor)))?;
        let improved = match self.best {
            None => true,
            Some(best) if self.minimize => value < best - self.min_delta,
            Some(best) => value > best + self.min_delta,
        };
        if improved {
            self.best = Some(value);
            self.waited = 0;
        } else {
            self.waited += 1;
        }
        let status = json!({"best": self.best, "waited": self.waited, "patience": self.patience});
        let updates = Updates::new().set("early_stopping", status);
        if self.waited >= self.patience {
            log::info(format!(
                "{} has not improved for {} evaluations (best {:?}); stopping",
                self.monitor, self.waited, self.best
            ));
            return Ok(updates.set("should_training_stop", true));
        }
        Ok(updates)
    }

    fn save_state(&self) -> Option<Value> {
        Some(json!({"best": self.best, "waited": self.waited}))
    }

    fn load_state(&mut self, state: Value) -> Result<(), Error> {
        self.best = state["best"].as_f64();
        self.waited = state["waited"].as_u64().unwrap_or(0);
        Ok(())
    }
}

wasmhooks_sdk::export_plugin!(EarlyStopping);
