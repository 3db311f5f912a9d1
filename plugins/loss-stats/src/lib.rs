//! Publishes the loss's trend as tracker metrics: an exponential moving
//! average and the best value so far of `loss`, and the best `eval_loss`.
//! The adapters log what it sets under `metrics.` to the run's trackers
//! (W&B, TensorBoard, MLflow, ...) at the step it was set, so the operator
//! must grant it `metrics.*`.
//!
//! Config: `{"phase": "on_log", "alpha": 0.1}` (the defaults): the phase
//! whose `loss` it reads (`on_log` for HF and InstructLab, `on_step_end`
//! for Lightning and the reference trainer), and the EMA's weight of the
//! newest value. A step it has already counted is not counted again: the
//! map keeps the last `loss` while the trainer logs other things at the same
//! step (HF's end-of-training summary). Its state survives a resume.

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, json, serde_json};

struct LossStats {
    phase: String,
    alpha: f64,
    ema: Option<f64>,
    best: Option<f64>,
    best_eval: Option<f64>,
    last_step: Option<i64>,
}

impl Default for LossStats {
    fn default() -> Self {
        LossStats {
            phase: "on_log".into(),
            alpha: 0.1,
            ema: None,
            best: None,
            best_eval: None,
            last_step: None,
        }
    }
}

fn lower(best: Option<f64>, value: f64) -> f64 {
    best.map_or(value, |b| b.min(value))
}

impl Plugin for LossStats {
    fn manifest() -> Manifest {
        Manifest::new("loss-stats", env!("CARGO_PKG_VERSION"))
            .phases(["on_step_end", "on_log", "on_evaluate"])
            .reads(["loss", "eval_loss", "step"])
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        if let Some(phase) = config["phase"].as_str() {
            if phase != "on_log" && phase != "on_step_end" {
                return Err(Error::new(format!(
                    "phase must be on_log or on_step_end, not {phase:?}"
                )));
            }
            self.phase = phase.to_owned();
        }
        if let Some(alpha) = config["alpha"].as_f64() {
            if !(alpha > 0.0 && alpha <= 1.0) {
                return Err(Error::new(format!("alpha must be in (0, 1], not {alpha}")));
            }
            self.alpha = alpha;
        }
        Ok(())
    }

    fn on_phase(&mut self, phase: &str, data: &Data) -> Result<Updates, Error> {
        if phase == "on_evaluate" {
            let Some(eval) = data.f64("eval_loss") else {
                return Ok(Updates::new());
            };
            let best = lower(self.best_eval, eval);
            self.best_eval = Some(best);
            return Ok(Updates::new().set("metrics.eval_loss_best", best));
        }
        if phase != self.phase {
            return Ok(Updates::new());
        }
        let Some(loss) = data.f64("loss").filter(|l| l.is_finite()) else {
            return Ok(Updates::new());
        };
        let step = data.get("step").and_then(Value::as_i64);
        if step.is_some() && step == self.last_step {
            return Ok(Updates::new());
        }
        self.last_step = step;
        let ema = self
            .ema
            .map_or(loss, |e| (1.0 - self.alpha) * e + self.alpha * loss);
        let best = lower(self.best, loss);
        self.ema = Some(ema);
        self.best = Some(best);
        Ok(Updates::new()
            .set("metrics.loss_ema", ema)
            .set("metrics.loss_best", best))
    }

    fn save_state(&self) -> Option<Value> {
        Some(json!({
            "ema": self.ema,
            "best": self.best,
            "best_eval": self.best_eval,
            "last_step": self.last_step,
        }))
    }

    fn load_state(&mut self, state: Value) -> Result<(), Error> {
        self.ema = serde_json::from_value(state["ema"].clone())?;
        self.best = serde_json::from_value(state["best"].clone())?;
        self.best_eval = serde_json::from_value(state["best_eval"].clone())?;
        self.last_step = serde_json::from_value(state["last_step"].clone())?;
        Ok(())
    }
}

wasmhooks_sdk::export_plugin!(LossStats);
