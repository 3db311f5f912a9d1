//! Asks for an evaluation every N steps. Config: `{"every_steps": 25}`.

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value};

#[derive(Default)]
struct ValidateEvery {
    every: u64,
}

impl Plugin for ValidateEvery {
    fn manifest() -> Manifest {
        Manifest::new("validate-every", env!("CARGO_PKG_VERSION"))
            .phases(["on_step_end"])
            .reads(["step"])
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        self.every = config["every_steps"]
            .as_u64()
            .filter(|&n| n > 0)
            .ok_or("config needs `every_steps`, a whole number above 0")?;
        Ok(())
    }

    fn on_phase(&mut self, _phase: &str, data: &Data) -> Result<Updates, Error> {
        let step = data.u64("step").unwrap_or(0);
        Ok(if step > 0 && step.is_multiple_of(self.every) {
            Updates::new().set("should_evaluate", true)
        } else {
            Updates::new()
        })
    }
}

wasmhooks_sdk::export_plugin!(ValidateEvery);
