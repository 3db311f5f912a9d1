//! Downloads the model and tokenizer on every node, local and worker: the
//! seeds' "force download on all nodes" callback.

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates};

const WHAT: &str = "MODEL_AND_TOKENIZER";

#[derive(Default)]
struct ForceDownload;

impl Plugin for ForceDownload {
    fn manifest() -> Manifest {
        Manifest::new("force-download", env!("CARGO_PKG_VERSION"))
            .phases(["pre_download"])
            .reads_nothing()
    }

    fn on_phase(&mut self, _phase: &str, _data: &Data) -> Result<Updates, Error> {
        Ok(Updates::new()
            .set("local_node_download_model", WHAT)
            .set("worker_node_download_model", WHAT))
    }
}

wasmhooks_sdk::export_plugin!(ForceDownload);
