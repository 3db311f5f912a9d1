//! The plan of node initialization: what each step decides from the job's
//! `[node]` table and from the keys the plugins left, apart from how the
//! step is carried out. The CLI carries a plan out on one machine (HTTP or
//! a copy, a planned group, a child process); the Ray driver carries the
//! same plan out on a cluster (a real placement group, one download task
//! per node, the engine in an actor). Both take every decision here, so a
//! key a plugin leaves is checked once, the same way, wherever it runs.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::placement::{Request, Resources, Strategy};
use super::{DEFAULT_MODE, MAX_BUNDLES, MODES, ModelFile, NodeConfig, confine_source};
use crate::LifecycleError;
use wasmhooks::files;

/// A default step of node initialization (the ones a plugin's
/// `skip_default` replaces with `custom_initialization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `pre_download`, the model's files fetched, `post_download`.
    Download,
    /// `pre_placement_group`, the group, `post_placement_group`.
    Place,
    /// `pre_engine_init`, the engine started, `post_engine_init`.
    Engine,
}

impl Step {
    /// Its name, as the Python driver asks for the order.
    pub fn name(self) -> &'static str {
        match self {
            Step::Download => "download",
            Step::Place => "place",
            Step::Engine => "engine",
        }
    }
}

/// The order of the steps on one machine: the files first (as Ray Serve
/// LLM's `initialize_node` downloads before it makes the group), then the
/// group planned on this machine's inventory, then the engine.
pub const ON_ONE_MACHINE: [Step; 3] = [Step::Download, Step::Place, Step::Engine];

/// The order on a Ray cluster: the group first, because the downloads run
/// on its nodes (one task per node the group landed on, each into that
/// machine's cache); then the engine, in bundle 0, reading node 0's files.
/// This is the only difference between the two lifecycles.
pub const ON_RAY: [Step; 3] = [Step::Place, Step::Download, Step::Engine];

/// Resource names and values a bundle may ask for.
const MAX_RESOURCES: usize = 64;
const MAX_RESOURCE_NAME: usize = 128;
const MAX_RESOURCE_VALUE: f64 = 1e9;

/// Checks one bundle's resources: 1 to 64 names of 1 to 128 bytes, each a
/// number from 0 to 1e9. `place` names it in the error.
pub fn check_resources(resources: &Resources, place: &str) -> Result<(), String> {
    let ok = (1..=MAX_RESOURCES).contains(&resources.len())
        && resources.iter().all(|(k, v)| {
            (1..=MAX_RESOURCE_NAME).contains(&k.len())
                && !k.chars().any(char::is_control)
                && v.is_finite()
                && (0.0..MAX_RESOURCE_VALUE).contains(v)
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{place} must map 1 to {MAX_RESOURCES} resource names (printable) to numbers from 0 to 1e9"
        ))
    }
}

impl NodeConfig {
    /// The placement request the job's table asks for: `bundle` times
    /// `tensor_parallel_size`, with its strategy.
    pub fn placement_request(&self) -> Request {
        Request {
            bundles: vec![self.bundle.clone(); self.tensor_parallel_size.max(1)],
            strategy: self.strategy,
        }
    }

    /// The engine's keyword arguments before `pre_engine_init`.
    pub fn engine_kwargs(&self) -> Value {
        json!({"model": self.model_id, "tensor_parallel_size": self.tensor_parallel_size})
    }
}

/// A placement request or group as the plugins left it under `key`: a map
/// with 1 to 1024 `bundles` (each a resource map, or a placed bundle's
/// `{"resources": {...}, ...}`) and a `strategy` Ray knows (`PACK` if
/// absent).
pub fn request_from(value: Option<&Value>, key: &str) -> Result<Request, LifecycleError> {
    let bad = |m: String| LifecycleError::Config(format!("{key}, as the plugins left it, {m}"));
    let Some(value) = value else {
        return Err(LifecycleError::Config(format!(
            "{key} is missing after the plugins' phase: a plugin removed it"
        )));
    };
    let Value::Object(map) = value else {
        return Err(bad(format!(
            "must be a map, not {}",
            wasmhooks::clean_text(&value.to_string(), 200)
        )));
    };
    let strategy = match map.get("strategy") {
        None => Strategy::Pack,
        Some(s) => serde_json::from_value(s.clone()).map_err(|_| {
            bad(format!(
                "has strategy {}; it must be one of PACK, SPREAD, STRICT_PACK, STRICT_SPREAD",
                wasmhooks::clean_text(&s.to_string(), 80)
            ))
        })?,
    };
    let bundles = match map.get("bundles") {
        Some(Value::Array(b)) if !b.is_empty() && b.len() <= MAX_BUNDLES => b,
        Some(Value::Array(b)) if b.len() > MAX_BUNDLES => {
            return Err(bad(format!(
                "has {} bundles; at most {MAX_BUNDLES}",
                b.len()
            )));
        }
        _ => {
            return Err(bad(format!(
                "must have bundles: a list of 1 to {MAX_BUNDLES} resource maps"
            )));
        }
    };
    let mut out = Vec::with_capacity(bundles.len());
    for (i, bundle) in bundles.iter().enumerate() {
        let place = format!("{key}.bundles[{i}]");
        let bundle = match bundle.get("resources") {
            Some(inner @ Value::Object(_)) => inner,
            _ => bundle,
        };
        let resources: Resources = serde_json::from_value(bundle.clone()).map_err(|_| {
            LifecycleError::Config(format!(
                "{place} must map 1 to {MAX_RESOURCES} resource names to numbers from 0 to 1e9"
            ))
        })?;
        check_resources(&resources, &place).map_err(LifecycleError::Config)?;
        out.push(resources);
    }
    Ok(Request {
        bundles: out,
        strategy,
    })
}

/// What one node fetches, as decided from the keys the plugins left at
/// `pre_download`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DownloadPlan {
    /// The download mode (`NONE`, `TOKENIZER_ONLY`, `MODEL_AND_TOKENIZER`).
    pub mode: String,
    /// `file://` below the job's folder, or `http(s)://`.
    pub source: String,
    /// The model's folder, below the cache folder the caller gives.
    pub folder: PathBuf,
    /// The files the mode selects, with their digests.
    pub files: Vec<ModelFile>,
}

impl DownloadPlan {
    /// The plan from the data map after `pre_download`: the mode under
    /// `mode_key` (a node's own, or the workers'), `model_source` confined
    /// to the job's folder `job_dir`, and `download_dir` below `cache` (an
    /// absolute path under it made relative). Every value is the plugins'
    /// to leave, so each is checked and the error names the key.
    pub fn from_data(
        config: &NodeConfig,
        data: &Map<String, Value>,
        mode_key: &str,
        job_dir: &Path,
        cache: &Path,
    ) -> Result<Self, LifecycleError> {
        let mode = left_string(data, mode_key)?;
        if !MODES.contains(&mode.as_str()) {
            return Err(LifecycleError::Config(format!(
                "{mode_key} is {:?}; it must be one of {MODES:?}",
                wasmhooks::clean_text(&mode, 80)
            )));
        }
        let bad = |key: &str, m: String| {
            LifecycleError::Config(format!("{key}, as the plugins left it: {m}"))
        };
        let source = left_string(data, "model_source")?;
        let source = confine_source(&source, job_dir).map_err(|m| bad("model_source", m))?;
        let dir = PathBuf::from(left_string(data, "download_dir")?);
        let rel = match dir.strip_prefix(cache) {
            Ok(rel) if dir.is_absolute() => rel.to_owned(),
            _ => dir.clone(),
        };
        let folder = files::relative("download_dir", &rel).map_err(|m| bad("download_dir", m))?;
        let files = config
            .files
            .iter()
            .filter(|f| match mode.as_str() {
                "NONE" => false,
                "TOKENIZER_ONLY" => f.kind == "tokenizer",
                _ => true,
            })
            .cloned()
            .collect();
        Ok(DownloadPlan {
            mode,
            source,
            folder,
            files,
        })
    }
}

/// The download modes before a plugin chose: both start at
/// `MODEL_AND_TOKENIZER`, as Ray's `CallbackCtx` does.
pub fn default_mode() -> &'static str {
    DEFAULT_MODE
}

/// A key the host reads back after the plugins had their turn; a plugin
/// may have removed it or left it of another type.
fn left_string(data: &Map<String, Value>, key: &str) -> Result<String, LifecycleError> {
    match data.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(LifecycleError::Config(format!(
            "{key} must be a string after pre_download; the plugins left {}",
            wasmhooks::clean_text(&other.to_string(), 200)
        ))),
        None => Err(LifecycleError::Config(format!(
            "{key} is missing after pre_download: a plugin removed it"
        ))),
    }
}

/// The engine's keyword arguments as the plugins left them at
/// `pre_engine_init`: a map whose every key becomes `--key=value`.
pub fn engine_kwargs_from(value: Option<&Value>) -> Result<Map<String, Value>, LifecycleError> {
    match value {
        Some(Value::Object(map)) => {
            super::engine::check_kwargs(map)?;
            Ok(map.clone())
        }
        other => Err(LifecycleError::Config(format!(
            "engine_kwargs must stay a map; the plugins left {}",
            wasmhooks::clean_text(&other.map_or("nothing".into(), Value::to_string), 200)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_from_plugins_are_checked() {
        let ok = request_from(
            Some(&json!({"bundles": [{"CPU": 1}, {"resources": {"GPU": 1}, "node_id": "n"}]})),
            "placement_request",
        )
        .unwrap();
        assert_eq!(ok.bundles.len(), 2);
        assert_eq!(ok.strategy, Strategy::Pack);
        for (bad, says) in [
            (json!(3), "must be a map"),
            (json!({"bundles": []}), "1 to 1024"),
            (json!({"bundles": [{"CPU": -1}]}), "bundles[0] must map"),
            (json!({"bundles": [{}]}), "bundles[0] must map"),
            (
                json!({"bundles": [{"CPU": 1}], "strategy": "ANY"}),
                "strategy",
            ),
        ] {
            let err = request_from(Some(&bad), "placement_request")
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{err}");
        }
        let many: Vec<Value> = (0..1025).map(|_| json!({"CPU": 0})).collect();
        let err = request_from(Some(&json!({"bundles": many})), "k")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 1024"), "{err}");
        let err = request_from(None, "placement_request")
            .unwrap_err()
            .to_string();
        assert!(err.contains("placement_request is missing"), "{err}");
    }
}
