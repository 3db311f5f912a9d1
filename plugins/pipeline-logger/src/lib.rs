//! Appends a pipeline's events to a JSON-lines file: one line per node
//! begin and end, cache outcome, error, and batch, and the pipeline's begin
//! and end. Config: `{"path": "/logs/pipeline.jsonl"}`, a path in a folder
//! the operator granted read-write. It only observes, so the host runs it
//! in the background and the pipeline never waits for the disk.

use std::fs::{File, OpenOptions};
use std::io::Write;

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, serde_json};

/// Every pipeline phase; all of them only observed.
const PHASES: [&str; 12] = [
    "on_pipeline_begin",
    "on_pipeline_end",
    "on_pipeline_error",
    "on_node_begin",
    "on_node_end",
    "on_node_error",
    "on_cache_hit",
    "on_cache_miss",
    "on_cache_store",
    "on_batch_begin",
    "on_batch_end",
    "on_query_end",
];

#[derive(Default)]
struct PipelineLogger {
    file: Option<File>,
}

impl Plugin for PipelineLogger {
    fn manifest() -> Manifest {
        Manifest::new("pipeline-logger", env!("CARGO_PKG_VERSION"))
            .phases(PHASES)
            .observe(PHASES)
            .order(10)
            .reads([
                "pipeline",
                "nodes",
                "node",
                "batch",
                "cache_hit",
                "outputs",
                "error",
                "elapsed_ms",
                "status",
                "query",
            ])
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        let path = config["path"].as_str().ok_or("config needs `path`")?;
        self.file = Some(OpenOptions::new().create(true).append(true).open(path)?);
        Ok(())
    }

    fn on_phase(&mut self, phase: &str, data: &Data) -> Result<Updates, Error> {
        // Written straight into one buffer, in key order after `event`: no
        // map built and no value copied, since it runs at every batch.
        let mut line = Vec::with_capacity(256);
        line.extend_from_slice(b"{\"event\":");
        serde_json::to_writer(&mut line, phase)?;
        for (key, value) in data.iter() {
            line.push(b',');
            serde_json::to_writer(&mut line, key)?;
            line.push(b':');
            serde_json::to_writer(&mut line, value)?;
        }
        line.extend_from_slice(b"}\n");
        // One write per line: with O_APPEND the line lands whole even when
        // another instance (a worker's) appends to the same file.
        let file = self.file.as_mut().ok_or("not initialized")?;
        file.write_all(&line)?;
        Ok(Updates::new())
    }
}

wasmhooks_sdk::export_plugin!(PipelineLogger);
