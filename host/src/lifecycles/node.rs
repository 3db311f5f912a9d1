//! The node-initialization lifecycle of the seeds (Ray Serve LLM's
//! `initialize_node`): download the model, plan the placement group, start
//! the engine, with the plugins called before and after each step. A plugin
//! that sets `skip_default` at `pre_initialization` replaces all three: the
//! host then fires `custom_initialization` instead.
//!
//! The data map at the end is the node's initialization output.

pub mod download;
pub mod engine;
pub mod placement;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use download::ModelFile;
pub use engine::{Engine, EngineConfig};
pub use placement::{Node, Plan, Request, Resources, Strategy};

use super::{Driver, LifecycleError, PhaseTimings};
use crate::{DataMap, Hooks};

/// The phases, in order (`custom_initialization` only with `skip_default`).
pub const PHASES: [&str; 9] = [
    "pre_initialization",
    "pre_download",
    "post_download",
    "pre_placement_group",
    "post_placement_group",
    "pre_engine_init",
    "post_engine_init",
    "post_initialization",
    "custom_initialization",
];

/// What to download: the seeds' download modes.
const MODES: [&str; 3] = ["NONE", "TOKENIZER_ONLY", "MODEL_AND_TOKENIZER"];

/// The `[node]` table of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The model's name.
    pub model_id: String,
    /// Where its files are: a `file://` or `http(s)://` base. A relative
    /// `file://` path resolves against the job folder.
    pub source: String,
    /// Its files, with their digests.
    pub files: Vec<ModelFile>,
    /// The download cache (relative to the job folder).
    #[serde(default = "default_cache")]
    pub cache_dir: PathBuf,
    /// Retries per file.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Seconds a download may stall (no bytes arriving) before it is
    /// retried.
    #[serde(default = "default_stall")]
    pub stall_timeout_s: u64,
    /// Bundles in the placement group.
    #[serde(default = "one")]
    pub tensor_parallel_size: usize,
    /// Resources of one bundle.
    #[serde(default = "default_bundle")]
    pub bundle: Resources,
    /// How bundles spread.
    #[serde(default)]
    pub strategy: Strategy,
    /// The cluster; empty: this machine.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// The engine to start.
    pub engine: Option<EngineConfig>,
    /// Where the initialization output is written (relative to the job folder).
    #[serde(default = "default_output")]
    pub output: PathBuf,
    /// The job folder: where the engine starts.
    #[serde(skip)]
    pub job_dir: PathBuf,
}

fn default_cache() -> PathBuf {
    PathBuf::from("cache")
}
fn default_retries() -> u32 {
    3
}
fn default_stall() -> u64 {
    30
}
fn one() -> usize {
    1
}
fn default_bundle() -> Resources {
    [("CPU".to_owned(), 1.0)].into_iter().collect()
}
fn default_output() -> PathBuf {
    PathBuf::from("output/node.json")
}

impl NodeConfig {
    /// Resolves relative paths against the job's folder.
    pub fn resolve(mut self, base: &Path) -> Self {
        if let Some(rel) = self.source.strip_prefix("file://")
            && !rel.starts_with('/')
        {
            self.source = format!("file://{}", base.join(rel).display());
        }
        self.cache_dir = base.join(&self.cache_dir);
        self.output = base.join(&self.output);
        self.job_dir = base.to_owned();
        self
    }
}

/// What node initialization produced.
#[derive(Debug, Serialize)]
pub struct NodeOutcome {
    /// The initialization output: the data map at the end.
    pub data: DataMap,
    /// Whether a plugin replaced the default steps.
    pub skipped_default: bool,
    /// Time per phase.
    pub timings: PhaseTimings,
    /// The running engine, stopped when this drops.
    #[serde(skip)]
    pub engine: Option<Engine>,
}

/// Initializes this node, calling `hooks` at every phase.
pub fn initialize(config: &NodeConfig, hooks: &mut Hooks) -> Result<NodeOutcome, LifecycleError> {
    let mut d = Driver::new(hooks, DataMap::new());
    d.set("model_id", config.model_id.as_str());
    d.fire("pre_initialization")?;
    let skipped = d.flag("skip_default");
    let mut engine = None;
    if skipped {
        d.fire("custom_initialization")?;
    } else {
        download(config, &mut d)?;
        place(config, &mut d)?;
        engine = start_engine(config, &mut d)?;
    }
    d.fire("post_initialization")?;
    let outcome = NodeOutcome {
        data: d.data,
        skipped_default: skipped,
        timings: d.timings,
        engine,
    };
    if let Some(dir) = config.output.parent() {
        std::fs::create_dir_all(dir).map_err(LifecycleError::io(dir))?;
    }
    let text = serde_json::to_vec_pretty(&outcome.data)
        .map_err(|e| LifecycleError::Config(e.to_string()))?;
    std::fs::write(&config.output, text).map_err(LifecycleError::io(&config.output))?;
    Ok(outcome)
}

fn download(config: &NodeConfig, d: &mut Driver<'_>) -> Result<(), LifecycleError> {
    d.set("local_node_download_model", "MODEL_AND_TOKENIZER");
    d.set("worker_node_download_model", "MODEL_AND_TOKENIZER");
    d.set("model_source", config.source.as_str());
    d.set(
        "download_dir",
        config
            .cache_dir
            .join(&config.model_id)
            .display()
            .to_string(),
    );
    d.fire("pre_download")?;
    let mode = d.data["local_node_download_model"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !MODES.contains(&mode.as_str()) {
        return Err(LifecycleError::Config(format!(
            "local_node_download_model is {mode:?}; it must be one of {MODES:?}"
        )));
    }
    let files: Vec<ModelFile> = config
        .files
        .iter()
        .filter(|f| match mode.as_str() {
            "NONE" => false,
            "TOKENIZER_ONLY" => f.kind == "tokenizer",
            _ => true,
        })
        .cloned()
        .collect();
    let source = d.data["model_source"]
        .as_str()
        .unwrap_or(&config.source)
        .to_owned();
    let dir = PathBuf::from(d.data["download_dir"].as_str().unwrap_or_default());
    let stall = std::time::Duration::from_secs(config.stall_timeout_s);
    let fetched = download::fetch_all(&source, &files, &dir, config.retries, stall)?;
    let downloaded: u64 = fetched.iter().filter(|f| !f.cached).map(|f| f.bytes).sum();
    d.set(
        "download_result",
        json!({
            "mode": mode,
            "dir": dir.display().to_string(),
            "files": fetched,
            "bytes_downloaded": downloaded,
            "cache_hits": fetched.iter().filter(|f| f.cached).count(),
        }),
    );
    d.fire("post_download")
}

fn place(config: &NodeConfig, d: &mut Driver<'_>) -> Result<(), LifecycleError> {
    let request = Request {
        bundles: vec![config.bundle.clone(); config.tensor_parallel_size.max(1)],
        strategy: config.strategy,
    };
    d.set("placement_request", to_value(&request)?);
    d.fire("pre_placement_group")?;
    let request: Request =
        serde_json::from_value(d.data["placement_request"].clone()).map_err(|e| {
            LifecycleError::Config(format!("placement_request, as the plugins left it: {e}"))
        })?;
    let nodes = if config.nodes.is_empty() {
        vec![placement::this_machine()]
    } else {
        config.nodes.clone()
    };
    let plan = placement::plan(&request, &nodes)
        .map_err(|e| LifecycleError::Config(format!("placement group is infeasible: {e}")))?;
    d.set("placement_group", to_value(&plan)?);
    d.fire("post_placement_group")
}

fn start_engine(config: &NodeConfig, d: &mut Driver<'_>) -> Result<Option<Engine>, LifecycleError> {
    let Some(engine_config) = &config.engine else {
        return Ok(None);
    };
    d.set(
        "engine_kwargs",
        json!({"model": config.model_id, "tensor_parallel_size": config.tensor_parallel_size}),
    );
    d.fire("pre_engine_init")?;
    let kwargs = match d.data.get("engine_kwargs") {
        Some(Value::Object(map)) => map.clone(),
        _ => {
            return Err(LifecycleError::Config(
                "engine_kwargs must stay an object".into(),
            ));
        }
    };
    let model_dir = d.data["download_result"]["dir"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let engine = engine::start(engine_config, &config.job_dir, &model_dir, &kwargs)?;
    d.set("engine", to_value(&engine.info)?);
    d.fire("post_engine_init")?;
    Ok(Some(engine))
}

fn to_value(v: &impl Serialize) -> Result<Value, LifecycleError> {
    serde_json::to_value(v).map_err(|e| LifecycleError::Config(e.to_string()))
}
