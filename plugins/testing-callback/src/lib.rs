//! Ray Serve LLM's own callback test, `TestingCallback` of
//! `python/ray/llm/tests/common/utils/test_callback_base.py`, as a plugin:
//! what it checks of Ray's `CallbackCtx` it checks of the data map, which
//! the host keeps in step with that ctx. A driver that loses a value on the
//! way (re-sets a download mode it provided before, or drops a
//! `runtime_env`) makes this plugin fail the phase, naming what it found.
//!
//! - `pre_initialization` (Ray's `on_before_node_init`): the worker nodes'
//!   download mode must be Ray's default, `MODEL_AND_TOKENIZER`; it sets it
//!   to `NONE`, puts `ctx_test_key` in `custom_data` and, like Ray's test,
//!   sets `skip_default` (config `skip_default`, default true), and
//!   `runtime_env` if config `runtime_env_at` is `pre_initialization`.
//! - `custom_initialization`: `runtime_env` from config `runtime_env`, if
//!   config `runtime_env_at` is `custom_initialization` (the default).
//! - every later phase it is called at: the mode must still be `NONE`, and
//!   what it saw is kept under `testing-callback.seen`.
//! - `post_initialization` (Ray's `on_after_node_init`): `custom_data` must
//!   still hold `ctx_test_key`; then `testing-callback.after_init_called`.
//!
//! Config `kwargs_test_key` must be `"kwargs_test_value"`, as Ray's test
//! asserts of the callback's kwargs.

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, json, serde_json};

const MODE: &str = "worker_node_download_model";

#[derive(Default)]
struct TestingCallback {
    skip_default: bool,
    runtime_env: Value,
    runtime_env_at: String,
    /// What each phase showed it: the mode and `runtime_env`.
    seen: serde_json::Map<String, Value>,
}

impl TestingCallback {
    fn mode(data: &Data) -> Value {
        data.get(MODE).cloned().unwrap_or(Value::Null)
    }

    fn expect_mode(phase: &str, data: &Data, want: &str) -> Result<(), Error> {
        let got = Self::mode(data);
        if got != json!(want) {
            return Err(Error::new(format!(
                "{MODE} is {got} at {phase}; it must be \"{want}\" here"
            )));
        }
        Ok(())
    }
}

impl Plugin for TestingCallback {
    fn manifest() -> Manifest {
        Manifest::new("testing-callback", env!("CARGO_PKG_VERSION"))
            .phases([
                "pre_initialization",
                "custom_initialization",
                "pre_download",
                "post_download",
                "pre_engine_init",
                "post_initialization",
            ])
            .reads([MODE, "custom_data", "runtime_env"])
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        if config["kwargs_test_key"] != json!("kwargs_test_value") {
            return Err(Error::new(format!(
                "config kwargs_test_key must be \"kwargs_test_value\", not {}",
                config["kwargs_test_key"]
            )));
        }
        self.skip_default = match &config["skip_default"] {
            Value::Null => true,
            Value::Bool(b) => *b,
            other => {
                return Err(Error::new(format!(
                    "config skip_default must be a bool, not {other}"
                )));
            }
        };
        self.runtime_env = config["runtime_env"].clone();
        if !(self.runtime_env.is_null() || self.runtime_env.is_object()) {
            return Err("config runtime_env must be a map".into());
        }
        self.runtime_env_at = match &config["runtime_env_at"] {
            Value::Null => "custom_initialization".to_owned(),
            Value::String(s) if s == "pre_initialization" || s == "custom_initialization" => {
                s.clone()
            }
            other => {
                return Err(Error::new(format!(
                    "config runtime_env_at must be \"pre_initialization\" or \"custom_initialization\", not {other}"
                )));
            }
        };
        Ok(())
    }

    fn on_phase(&mut self, phase: &str, data: &Data) -> Result<Updates, Error> {
        let mut updates = Updates::new();
        if phase == "pre_initialization" {
            Self::expect_mode(phase, data, "MODEL_AND_TOKENIZER")?;
            let mut custom = match data.get("custom_data") {
                Some(Value::Object(map)) => map.clone(),
                _ => Default::default(),
            };
            custom.insert("ctx_test_key".into(), json!("ctx_test_value"));
            updates = updates
                .set(MODE, "NONE")
                .set("custom_data", Value::Object(custom))
                .set("skip_default", self.skip_default)
                .set("testing-callback.before_init_called", true);
        } else {
            Self::expect_mode(phase, data, "NONE")?;
        }
        if phase == self.runtime_env_at && !self.runtime_env.is_null() {
            updates = updates.set("runtime_env", self.runtime_env.clone());
        }
        if phase == "post_initialization" {
            let key = data.get("custom_data").map(|c| c["ctx_test_key"].clone());
            if key != Some(json!("ctx_test_value")) {
                return Err(Error::new(format!(
                    "custom_data.ctx_test_key is {} at post_initialization; it was set at pre_initialization",
                    key.unwrap_or(Value::Null)
                )));
            }
            updates = updates.set("testing-callback.after_init_called", true);
        }
        self.seen.insert(
            phase.to_owned(),
            json!({"mode": Self::mode(data), "runtime_env": data.get("runtime_env")}),
        );
        Ok(updates.set("testing-callback.seen", Value::Object(self.seen.clone())))
    }
}

wasmhooks_sdk::export_plugin!(TestingCallback);
