//! Replaces the placement group after the default one is planned: the
//! seeds' "custom placement group" callback. The plan comes from the
//! plugin's config: `{"strategy": "SPREAD", "bundles": [{"CPU": 1}, ...]}`,
//! or, without config, one bundle per tensor-parallel rank of the job's
//! node, spread. Each such bundle is the job's own `[node] bundle`, so a
//! job that asks for CPUs runs on a machine without a GPU, and one that
//! asks for GPUs gets them; only a job that names no bundle gets the
//! seeds' `{CPU: 1, GPU: 1}`.

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, json};

const STRATEGIES: [&str; 4] = ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"];

#[derive(Default)]
struct CustomPlacementGroup {
    plan: Value,
}

impl Plugin for CustomPlacementGroup {
    fn manifest() -> Manifest {
        Manifest::new("custom-placement-group", env!("CARGO_PKG_VERSION"))
            .phases(["post_placement_group"])
            .reads(["placement_group"])
    }

    fn init(&mut self, job: &Value, config: &Value) -> Result<(), Error> {
        self.plan = if config.is_null() {
            let tp = job["node"]["tensor_parallel_size"]
                .as_u64()
                .or(job["tensor_parallel_size"].as_u64())
                .unwrap_or(1);
            let bundle = match &job["node"]["bundle"] {
                Value::Object(b) if !b.is_empty() => Value::Object(b.clone()),
                _ => json!({"CPU": 1, "GPU": 1}),
            };
            let bundles: Vec<Value> = (0..tp).map(|_| bundle.clone()).collect();
            json!({"strategy": "SPREAD", "bundles": bundles})
        } else {
            config.clone()
        };
        let strategy = self.plan["strategy"].as_str().unwrap_or_default();
        if !STRATEGIES.contains(&strategy) {
            return Err(Error::new(format!(
                "strategy {strategy:?} is not one of {STRATEGIES:?}"
            )));
        }
        match self.plan["bundles"].as_array() {
            Some(b) if !b.is_empty() => Ok(()),
            _ => Err("config needs a non-empty `bundles` list".into()),
        }
    }

    fn on_phase(&mut self, _phase: &str, data: &Data) -> Result<Updates, Error> {
        let mut plan = self.plan.clone();
        plan["replaced"] = data.get("placement_group").cloned().unwrap_or(Value::Null);
        plan["source"] = json!("custom-placement-group");
        Ok(Updates::new().set("placement_group", plan))
    }
}

wasmhooks_sdk::export_plugin!(CustomPlacementGroup);
