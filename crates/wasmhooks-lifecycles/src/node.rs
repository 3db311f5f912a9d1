//! The node-initialization lifecycle of the seeds (Ray Serve LLM's
//! `initialize_node`): download the model, plan the placement group, start
//! the engine, with the plugins called before and after each step. A plugin
//! that sets `skip_default` at `pre_initialization` replaces all three: the
//! host then fires `custom_initialization` instead.
//!
//! The data map at the end is the node's initialization output.
//!
//! A key plugins may set gets the host's default before the first phase a
//! plugin may set it at (`worker_node_download_model` before
//! `pre_initialization`, as Ray's `CallbackCtx` has it from the start), and
//! a later step puts a default only where no plugin set the key: what a
//! plugin chose at an earlier phase is what the host acts on.

pub mod download;
pub mod engine;
pub mod placement;
pub mod plan;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use download::ModelFile;
pub use engine::{Engine, EngineConfig, EngineTemplate};
pub use placement::{Node, Plan, Request, Resources, Strategy};
pub use plan::{DownloadPlan, Step};

use super::{Driver, LifecycleError, PhaseTimings};
use wasmhooks::files::{self, Root};
use wasmhooks::schema::phases::node as phase;
use wasmhooks::{DataMap, Hooks, Policy};

/// Bundles a placement group may have.
const MAX_BUNDLES: usize = 1024;
/// Nodes a job may describe, and files a model may have.
const MAX_NODES: usize = 10_000;
const MAX_FILES: usize = 100_000;
const MAX_RETRIES: u32 = 100;
const MAX_STALL_S: u64 = 3_600;

/// The phases, in order (`custom_initialization` only with `skip_default`).
pub const PHASES: [&str; 9] = [
    phase::PRE_INITIALIZATION,
    phase::PRE_DOWNLOAD,
    phase::POST_DOWNLOAD,
    phase::PRE_PLACEMENT_GROUP,
    phase::POST_PLACEMENT_GROUP,
    phase::PRE_ENGINE_INIT,
    phase::POST_ENGINE_INIT,
    phase::POST_INITIALIZATION,
    phase::CUSTOM_INITIALIZATION,
];

/// What to download: the seeds' download modes.
const MODES: [&str; 3] = ["NONE", "TOKENIZER_ONLY", "MODEL_AND_TOKENIZER"];
/// Both download modes start here, as Ray's `CallbackCtx` does.
const DEFAULT_MODE: &str = "MODEL_AND_TOKENIZER";

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
    /// Checks the table, whose every value the job chose, and places it in
    /// the job's folder `base`: paths must stay below it, and numbers within
    /// the ranges the host can act on.
    pub fn resolve(mut self, base: &Path) -> Result<Self, LifecycleError> {
        let bad = |m: String| LifecycleError::Config(format!("[node] {m}"));
        self.cache_dir = files::relative("cache_dir", &self.cache_dir).map_err(bad)?;
        self.output = files::relative("output", &self.output).map_err(bad)?;
        let model_ok = self.model_id.len() <= 256
            && self
                .model_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        if !model_ok {
            return Err(bad(format!(
                "model_id = {:?} must be up to 256 of a-z, A-Z, 0-9, '.', '_', '-' and '/'",
                wasmhooks::clean_text(&self.model_id, 80)
            )));
        }
        files::relative("model_id", Path::new(&self.model_id)).map_err(bad)?;
        self.source =
            confine_source(&self.source, base).map_err(|m| bad(format!("source: {m}")))?;
        if !(1..=MAX_BUNDLES).contains(&self.tensor_parallel_size) {
            return Err(bad(format!(
                "tensor_parallel_size = {} must be from 1 to {MAX_BUNDLES}",
                self.tensor_parallel_size
            )));
        }
        if self.retries > MAX_RETRIES {
            return Err(bad(format!(
                "retries = {} is over {MAX_RETRIES}",
                self.retries
            )));
        }
        if !(1..=MAX_STALL_S).contains(&self.stall_timeout_s) {
            return Err(bad(format!(
                "stall_timeout_s = {} must be from 1 to {MAX_STALL_S}",
                self.stall_timeout_s
            )));
        }
        for (i, file) in self.files.iter_mut().enumerate() {
            file.check(i).map_err(bad)?;
        }
        if self.nodes.len() > MAX_NODES || self.files.len() > MAX_FILES {
            return Err(bad(format!(
                "at most {MAX_NODES} nodes and {MAX_FILES} files"
            )));
        }
        let resources =
            std::iter::once(&self.bundle).chain(self.nodes.iter().map(|n| &n.resources));
        for r in resources {
            if let Some((k, v)) = r.iter().find(|(_, v)| !v.is_finite() || **v < 0.0) {
                return Err(bad(format!(
                    "resource {k} = {v} must be a finite number >= 0"
                )));
            }
        }
        // Past the finite, non-negative check above, which names the
        // resource: the bounds Ray can place.
        plan::check_resources(&self.bundle, "bundle").map_err(bad)?;
        self.job_dir = base.to_owned();
        Ok(self)
    }
}

/// A model source as a job or plugin gave it: `http(s)://` as it is, and
/// `file://` only below the job's folder `base` (absolute paths in it are
/// made relative), so the host copies no file the job does not own.
fn confine_source(source: &str, base: &Path) -> Result<String, String> {
    if source.starts_with("http://") || source.starts_with("https://") {
        return Ok(source.to_owned());
    }
    let Some(path) = source.strip_prefix("file://") else {
        return Err(format!(
            "{:?} must start with file://, http:// or https://",
            wasmhooks::clean_text(source, 200)
        ));
    };
    let path = Path::new(path);
    let rel = match path.strip_prefix(base) {
        Ok(rel) if path.is_absolute() => rel,
        _ => path,
    };
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let ok = rel.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if !ok {
        return Err(format!(
            "{:?}: a file:// source must be a folder inside the job's folder",
            wasmhooks::clean_text(source, 200)
        ));
    }
    Ok(format!("file://{}", rel.display()))
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

/// Initializes this node, calling `hooks` at every phase. The operator's
/// `policy` names the engines a job may start and bounds its downloads.
pub fn initialize(
    config: &NodeConfig,
    policy: &Policy,
    hooks: &mut Hooks,
) -> Result<NodeOutcome, LifecycleError> {
    // Refused before anything starts: an engine the operator never allowed.
    let engine_template = match &config.engine {
        Some(job) => Some((engine::allowed(job, policy)?, job.args.as_slice())),
        None => None,
    };
    let job = Root::open(&config.job_dir).map_err(LifecycleError::io(&config.job_dir))?;
    let mut d = Driver::new(hooks, DataMap::new());
    d.set("model_id", config.model_id.as_str());
    // A plugin may set the workers' download mode at `pre_initialization`
    // (Ray's `on_before_node_init` may): its default is in the map before
    // that phase, so the plugin sees it and what it leaves stands.
    d.set("worker_node_download_model", DEFAULT_MODE);
    d.fire(phase::PRE_INITIALIZATION)?;
    let skipped = d.flag("skip_default");
    let mut engine = None;
    if skipped {
        d.fire(phase::CUSTOM_INITIALIZATION)?;
    } else {
        for step in plan::ON_ONE_MACHINE {
            match step {
                Step::Download => {
                    let limits = policy.job_limits();
                    download(config, &job, limits, &mut d)?;
                }
                Step::Place => place(config, &mut d)?,
                Step::Engine => {
                    if let Some((template, args)) = engine_template {
                        engine = Some(start_engine(config, template, args, &mut d)?);
                    }
                }
            }
        }
    }
    d.fire(phase::POST_INITIALIZATION)?;
    let outcome = NodeOutcome {
        data: d.data,
        skipped_default: skipped,
        timings: d.timings,
        engine,
    };
    let text = serde_json::to_vec_pretty(&outcome.data)
        .map_err(|e| LifecycleError::Config(e.to_string()))?;
    let output = config.job_dir.join(&config.output);
    job.write_atomic(&config.output, &text)
        .map_err(LifecycleError::io(output))?;
    Ok(outcome)
}

/// Puts the host's default for a key plugins may set, unless a plugin set
/// it at an earlier phase: a default is never put back over a value a
/// plugin chose (a granted plugin may write a key before the phase the
/// schema names for it, and what it wrote is what the host acts on).
fn default(d: &mut Driver<'_>, key: &str, value: impl Into<Value>) {
    d.data.entry(key).or_insert_with(|| value.into());
}

fn download(
    config: &NodeConfig,
    job: &Root,
    limits: &wasmhooks::JobLimits,
    d: &mut Driver<'_>,
) -> Result<(), LifecycleError> {
    default(d, "local_node_download_model", DEFAULT_MODE);
    default(d, "model_source", config.source.as_str());
    default(
        d,
        "download_dir",
        config
            .job_dir
            .join(&config.cache_dir)
            .join(&config.model_id)
            .display()
            .to_string(),
    );
    d.fire(phase::PRE_DOWNLOAD)?;
    // The download folder is the job's: below its folder, however given.
    let plan = DownloadPlan::from_data(
        config,
        &d.data,
        "local_node_download_model",
        &config.job_dir,
        &config.job_dir,
    )?;
    let cache = job
        .dir(&plan.folder, true)
        .map_err(LifecycleError::io(config.job_dir.join(&plan.folder)))?;
    let fetch = download::Fetch {
        dir: &cache,
        job,
        retries: config.retries,
        stall: std::time::Duration::from_secs(config.stall_timeout_s),
        max_bytes: limits.max_download_bytes,
        max_file_bytes: limits.max_file_bytes,
    };
    let fetched = download::fetch_all(&plan.source, &plan.files, &fetch)?;
    let dir = config.job_dir.join(&plan.folder);
    d.set(
        "download_result",
        download::result(&plan.mode, &dir, &fetched),
    );
    d.fire(phase::POST_DOWNLOAD)
}

fn place(config: &NodeConfig, d: &mut Driver<'_>) -> Result<(), LifecycleError> {
    default(
        d,
        "placement_request",
        to_value(&config.placement_request())?,
    );
    d.fire(phase::PRE_PLACEMENT_GROUP)?;
    let request = plan::request_from(d.data.get("placement_request"), "placement_request")?;
    let nodes = if config.nodes.is_empty() {
        vec![placement::this_machine()]
    } else {
        config.nodes.clone()
    };
    let plan = placement::plan(&request, &nodes)
        .map_err(|e| LifecycleError::Config(format!("placement group is infeasible: {e}")))?;
    d.set("placement_group", to_value(&plan)?);
    d.fire(phase::POST_PLACEMENT_GROUP)
}

fn start_engine(
    config: &NodeConfig,
    template: &EngineTemplate,
    job_args: &[String],
    d: &mut Driver<'_>,
) -> Result<Engine, LifecycleError> {
    default(d, "engine_kwargs", config.engine_kwargs());
    d.fire(phase::PRE_ENGINE_INIT)?;
    let kwargs = plan::engine_kwargs_from(d.data.get("engine_kwargs"))?;
    // Where the files are, as `download_result` says (or where the host
    // puts them, if a plugin removed it); it reaches the engine as argv.
    let model_dir = config
        .job_dir
        .join(&config.cache_dir)
        .join(&config.model_id);
    // A plugin may have rewritten `download_result`: its folder, as any
    // path a plugin leaves, must stay inside the job's folder.
    let model_dir = match d
        .data
        .get("download_result")
        .and_then(|r| r.get("dir"))
        .and_then(Value::as_str)
    {
        None => model_dir,
        Some(dir) => {
            let dir = Path::new(dir);
            let rel = match dir.strip_prefix(&config.job_dir) {
                Ok(rel) if dir.is_absolute() => rel,
                _ => dir,
            };
            let rel = files::relative("download_result.dir", rel)
                .map_err(|m| LifecycleError::Config(format!("{m}, as the plugins left it")))?;
            config.job_dir.join(rel)
        }
    };
    let engine = engine::start(
        template,
        job_args,
        &config.job_dir,
        &model_dir.display().to_string(),
        &kwargs,
    )?;
    d.set("engine", to_value(&engine.info)?);
    d.fire(phase::POST_ENGINE_INIT)?;
    Ok(engine)
}

fn to_value(v: &impl Serialize) -> Result<Value, LifecycleError> {
    serde_json::to_value(v).map_err(|e| LifecycleError::Config(e.to_string()))
}
