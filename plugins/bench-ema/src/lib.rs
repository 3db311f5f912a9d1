//! The benchmarks' plugin: keeps an exponential moving average of `loss`
//! and publishes it as `loss_ema`, the same work the benchmarks' native
//! closure and Python callback do.
//!
//! The benchmarks run up to 16 of it at once. Each copy needs its own name
//! and digest, so they patch the name's last two digits in the file's
//! bytes; `NAME` must therefore appear in the binary exactly once.

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates};

const NAME: &str = "bench-ema-00";

#[derive(Default)]
struct BenchEma {
    ema: Option<f64>,
}

impl Plugin for BenchEma {
    fn manifest() -> Manifest {
        Manifest::new(NAME, env!("CARGO_PKG_VERSION"))
            .phases(["on_step_end"])
            .reads(["loss"])
    }

    fn on_phase(&mut self, _phase: &str, data: &Data) -> Result<Updates, Error> {
        let loss = data.f64("loss").ok_or("no loss")?;
        let ema = match self.ema {
            Some(prev) => 0.9 * prev + 0.1 * loss,
            None => loss,
        };
        self.ema = Some(ema);
        Ok(Updates::new().set("loss_ema", ema))
    }
}

wasmhooks_sdk::export_plugin!(BenchEma);
