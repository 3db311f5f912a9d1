//! Replaces the default node initialization: at `pre_initialization` it
//! asks the host to skip the default steps, and at `custom_initialization`
//! it supplies what they would have produced. The seeds' "completely
//! replace initialization" callback.

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, json};

#[derive(Default)]
struct ReplaceInit {
    model: String,
}

impl Plugin for ReplaceInit {
    fn manifest() -> Manifest {
        Manifest::new("replace-init", env!("CARGO_PKG_VERSION"))
            .phases(["pre_initialization", "custom_initialization"])
            .reads_nothing()
    }

    fn init(&mut self, job: &Value, _config: &Value) -> Result<(), Error> {
        self.model = job["model_id"].as_str().unwrap_or_default().to_owned();
        Ok(())
    }

    fn on_phase(&mut self, phase: &str, _data: &Data) -> Result<Updates, Error> {
        match phase {
            "pre_initialization" => Ok(Updates::new().set("skip_default", true)),
            "custom_initialization" => Ok(Updates::new()
                .set(
                    "placement_group",
                    json!({"strategy": "STRICT_PACK", "bundles": [{"CPU": 1}], "source": "replace-init"}),
                )
                .set("runtime_env", json!({"env_vars": {"MODEL": self.model}}))
                .set("extra_init_kwargs", json!({"my_param": "value"}))),
            other => Err(Error::new(format!("not subscribed to phase '{other}'"))),
        }
    }
}

wasmhooks_sdk::export_plugin!(ReplaceInit);
