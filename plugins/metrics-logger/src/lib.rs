//! Appends training metrics to a JSON-lines file: one line per log and per
//! evaluation, and a summary at the end. Config: `{"path":
//! "/logs/metrics.jsonl"}`, a path in a folder the operator granted
//! read-write. It only observes, so the host may run it in the background.

use std::fs::{File, OpenOptions};
use std::io::Write;

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, json};

#[derive(Default)]
struct MetricsLogger {
    path: String,
    file: Option<File>,
    lines: u64,
}

impl Plugin for MetricsLogger {
    fn manifest() -> Manifest {
        Manifest::new("metrics-logger", env!("CARGO_PKG_VERSION"))
            .phases(["on_log", "on_evaluate", "on_train_end"])
            .observe(["on_log", "on_evaluate"])
            .reads([
                "logs",
                "step",
                "epoch",
                "eval_loss",
                "eval_accuracy",
                "train_end_reason",
            ])
            .rank_zero_only()
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        self.path = config["path"]
            .as_str()
            .ok_or("config needs `path`")?
            .to_owned();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.file = Some(file);
        Ok(())
    }

    fn on_phase(&mut self, phase: &str, data: &Data) -> Result<Updates, Error> {
        let line = match phase {
            "on_log" => json!({"event": "log", "logs": data.get("logs")}),
            "on_evaluate" => json!({
                "event": "evaluate",
                "step": data.get("step"),
                "eval_loss": data.get("eval_loss"),
                "eval_accuracy": data.get("eval_accuracy"),
            }),
            _ => json!({
                "event": "train_end",
                "reason": data.get("train_end_reason"),
                "lines": self.lines,
            }),
        };
        let file = self.file.as_mut().ok_or("not initialized")?;
        writeln!(file, "{line}")?;
        file.flush()?;
        self.lines += 1;
        Ok(Updates::new())
    }
}

wasmhooks_sdk::export_plugin!(MetricsLogger);
