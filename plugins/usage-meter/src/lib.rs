//! Meters an LLM server: one JSON line per request, at `on_request_end`,
//! appended to `config.path` (a file in a folder the operator granted
//! read-write): `{"request_id", "tenant", "model", "route", "stream",
//! "status_code", "end_reason", "usage", "latency_ms", "ttft_ms",
//! "blocked_by"}`, `blocked_by` being the blocking rule or null.
//!
//! It only observes, so the host runs it in the background, off the
//! request's path. A replica keeps a pool of instances, each with its own
//! handle on the same file: the file is opened in append mode and each line
//! goes out in one write (the host appends it whole, at the end of the
//! file, on Linux), so lines from several instances interleave but never
//! mix. Lines are built in memory first for that reason: `writeln!` on a
//! file writes piece by piece.

use std::fs::{File, OpenOptions};
use std::io::Write;

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, keys};

/// The keys a line reports, in its order.
const REPORTED: [&str; 10] = [
    keys::REQUEST_ID,
    keys::TENANT,
    keys::MODEL,
    keys::ROUTE,
    keys::STREAM,
    keys::STATUS_CODE,
    keys::END_REASON,
    keys::USAGE,
    keys::LATENCY_MS,
    keys::TTFT_MS,
];

#[derive(Default)]
struct UsageMeter {
    file: Option<File>,
}

impl Plugin for UsageMeter {
    fn manifest() -> Manifest {
        Manifest::new("usage-meter", env!("CARGO_PKG_VERSION"))
            .phases([keys::phases::ON_REQUEST_END])
            .observe([keys::phases::ON_REQUEST_END])
            .order(1000)
            .reads(REPORTED.into_iter().chain([keys::BLOCK]))
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        let path = config["path"]
            .as_str()
            .ok_or("usage-meter: the config needs `path`, a file in a folder granted read-write")?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::new(format!("usage-meter: cannot open {path:?} to append: {e}")))?;
        self.file = Some(file);
        Ok(())
    }

    fn on_phase(&mut self, _phase: &str, data: &Data) -> Result<Updates, Error> {
        let mut line = reported(data);
        let rule = data
            .get(keys::BLOCK)
            .and_then(|b| b.get("rule"))
            .cloned()
            .unwrap_or(Value::Null);
        line.insert("blocked_by".into(), rule);
        let mut bytes = wasmhooks_sdk::serde_json::to_vec(&Value::Object(line))?;
        bytes.push(b'\n');
        let file = self.file.as_mut().ok_or("usage-meter: not initialized")?;
        file.write_all(&bytes)?;
        Ok(Updates::new())
    }
}

/// The reported keys, null where the host gave none.
fn reported(data: &Data) -> wasmhooks_sdk::serde_json::Map<String, Value> {
    REPORTED
        .iter()
        .map(|&k| ((*k).to_owned(), data.get(k).cloned().unwrap_or(Value::Null)))
        .collect()
}

wasmhooks_sdk::export_plugin!(UsageMeter);
