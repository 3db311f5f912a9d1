//! Logs every phase it is called for, with the job's model: the seeds'
//! "log each phase" callback.

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, log};

#[derive(Default)]
struct LogPhases {
    model: String,
    seen: u64,
}

impl Plugin for LogPhases {
    fn manifest() -> Manifest {
        // Runs first, on rank zero only, and needs no data: the phase name is
        // enough.
        Manifest::new("log-phases", env!("CARGO_PKG_VERSION"))
            .all_phases()
            .order(-100)
            .reads_nothing()
            .rank_zero_only()
    }

    fn init(&mut self, job: &Value, _config: &Value) -> Result<(), Error> {
        self.model = job["model_id"].as_str().unwrap_or("<unnamed>").to_owned();
        Ok(())
    }

    fn on_phase(&mut self, phase: &str, _data: &Data) -> Result<Updates, Error> {
        self.seen += 1;
        log::info(format!(
            "[{phase}] model={} (call {})",
            self.model, self.seen
        ));
        Ok(Updates::new())
    }
}

wasmhooks_sdk::export_plugin!(LogPhases);
