//! Job bundles and running them. A bundle is a folder: `job.toml` (the
//! job's config: which plugins with which plugin config, the node to
//! initialize, the training to run) and the `.wasm` plugins it ships. The
//! same bundle runs unchanged in every process and rank, which is how
//! callbacks cross a process boundary: as files, not as pickled code.
//!
//! ```toml
//! name = "iris"
//!
//! [[plugin]]
//! file = "plugins/early_stopping.wasm"
//! config = { monitor = "eval_loss", patience = 3 }
//!
//! [[plugin]]
//! name = "metrics-collector"   # not shipped: the operator's `source` names it
//!
//! [node]
//! model_id = "tiny-llm"
//! source = "file://model"
//! files = [{ path = "config.json", sha256 = "..." }]
//!
//! [training]
//! dataset = "data/iris.csv"
//! epochs = 30
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::LifecycleError;
use crate::node::{self, NodeConfig, NodeOutcome};
use crate::training::{self, Collective, Solo, Tcp, TrainingConfig, TrainingOutcome};
use wasmhooks::files::{self, Root};
use wasmhooks::{DataMap, Hooks, Host, Plugin, PluginStats};

/// `job.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job's name, for reports.
    pub name: String,
    /// Plugins, in job order.
    #[serde(default)]
    pub plugin: Vec<JobPlugin>,
    /// The node to initialize (model download, placement, engine).
    pub node: Option<NodeConfig>,
    /// Training to run.
    pub training: Option<TrainingConfig>,
    /// A data pipeline's DAG (`[pipeline]`): read by the Python package's
    /// pipeline runner, the one lifecycle that runs it, and passed over here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Value>,
}

/// One plugin of a job: a file the bundle ships, or the name of a plugin
/// the operator allows from a registry (its `[[plugin]] source`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobPlugin {
    /// The `.wasm`, relative to the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The operator's name for a plugin it fetches from a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The plugin's own config, given to its `init`.
    #[serde(default)]
    pub config: Value,
}

/// A job bundle, read and checked.
#[derive(Debug, Clone)]
pub struct JobBundle {
    /// The bundle's folder.
    pub dir: PathBuf,
    /// What `job.toml` says, paths resolved against the folder.
    pub spec: JobSpec,
    /// `job.toml` as JSON: what every plugin's `init` gets.
    pub config: Value,
}

/// Bytes of `job.toml`, at most.
const MAX_JOB_TOML: u64 = 1 << 20;
/// Plugins one job may list.
const MAX_PLUGINS: usize = 256;

impl JobBundle {
    /// Reads and checks `DIR/job.toml`. Everything in it is the job's to
    /// choose, so every path must stay inside `DIR` and every number within
    /// the range the host can act on; the error names the field.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, LifecycleError> {
        let dir = std::path::absolute(dir.as_ref()).map_err(LifecycleError::io(dir.as_ref()))?;
        let path = dir.join("job.toml");
        let root = Root::open(&dir).map_err(LifecycleError::io(&dir))?;
        let bytes = root
            .read(Path::new("job.toml"), MAX_JOB_TOML)
            .map_err(LifecycleError::io(&path))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| LifecycleError::Config(format!("{}: {e}", path.display())))?;
        let spec: JobSpec = toml::from_str(&text).map_err(|e| {
            // The parser quotes the line at fault, which the job chose (a
            // line may be a MiB): each line of the message is cut.
            let said: Vec<String> = e
                .to_string()
                .lines()
                .take(20)
                .map(|l| wasmhooks::clean_text(l, 300))
                .collect();
            LifecycleError::Config(format!("{}: {}", path.display(), said.join("\n")))
        })?;
        let config = serde_json::to_value(&spec)
            .map_err(|e| LifecycleError::Config(format!("{}: {e}", path.display())))?;
        let in_file =
            |e: LifecycleError| LifecycleError::Config(format!("{}: {e}", path.display()));
        let mut spec = spec;
        if spec.plugin.len() > MAX_PLUGINS {
            return Err(in_file(LifecycleError::Config(format!(
                "it lists {} plugins; at most {MAX_PLUGINS}",
                spec.plugin.len()
            ))));
        }
        spec.training = spec
            .training
            .map(|t| t.resolve(&dir))
            .transpose()
            .map_err(in_file)?;
        spec.node = spec
            .node
            .map(|n| n.resolve(&dir))
            .transpose()
            .map_err(in_file)?;
        for (i, p) in spec.plugin.iter_mut().enumerate() {
            let at = |m: String| {
                in_file(LifecycleError::Config(format!(
                    "[[plugin]] #{}: {m}",
                    i + 1
                )))
            };
            match (&p.file, &p.name) {
                (Some(file), None) => {
                    p.file = Some(files::relative("[[plugin]] file", file).map_err(at)?);
                }
                (None, Some(name)) => {
                    if name.is_empty() || name.len() > 128 {
                        return Err(at("name must be 1 to 128 bytes".into()));
                    }
                }
                _ => {
                    return Err(at(
                        "give `file` (a plugin the job ships) or `name` (one the operator \
                         fetches from a registry), not both or neither"
                            .into(),
                    ));
                }
            }
        }
        Ok(JobBundle { dir, spec, config })
    }

    /// Loads the job's plugins under the operator's policy (a plugin the
    /// operator has not allowed is refused here) and starts them. Plugin
    /// files are read from inside the bundle, regular files only, within
    /// the operator's `max_plugin_mib`.
    pub fn hooks(&self, host: &Host, rank: usize) -> Result<Hooks, LifecycleError> {
        let mut builder =
            Hooks::builder(self.config.clone()).rank(u32::try_from(rank).unwrap_or(u32::MAX));
        for (plugin, config) in self.plugins(host)? {
            builder = builder.plugin(plugin, config);
        }
        Ok(builder.start()?)
    }

    /// The job's plugins, loaded under the operator's policy (a plugin the
    /// operator has not allowed is refused here), each with its config, in
    /// job order. Plugin files are read from inside the bundle, regular
    /// files only, within the operator's `max_plugin_mib`.
    pub fn plugins(&self, host: &Host) -> Result<Vec<(Plugin, Value)>, LifecycleError> {
        let root = Root::open(&self.dir).map_err(LifecycleError::io(&self.dir))?;
        let max = host.policy().job_limits().max_plugin_bytes;
        let mut plugins = Vec::with_capacity(self.spec.plugin.len());
        for p in &self.spec.plugin {
            let plugin = match (&p.file, &p.name) {
                (Some(file), _) => {
                    let path = self.dir.join(file);
                    let bytes = root
                        .read(file, max)
                        .map_err(|source| wasmhooks::Error::Read {
                            path: path.clone(),
                            source,
                        })?;
                    host.load_bytes(&path.display().to_string(), &bytes)?
                }
                (None, Some(name)) => fetched(host, name)?,
                (None, None) => {
                    return Err(LifecycleError::Config(
                        "a [[plugin]] names neither a file nor a plugin".into(),
                    ));
                }
            };
            plugins.push((plugin, p.config.clone()));
        }
        Ok(plugins)
    }
}

/// A plugin the job names and the operator fetches from a registry: by its
/// `source`, verified against its pin, through the compile cache's folder.
fn fetched(host: &Host, name: &str) -> Result<Plugin, LifecycleError> {
    let policy = host.policy();
    let shown = wasmhooks::clean_text(name, 128);
    let Some(allowed) = policy.by_name(name) else {
        return Err(LifecycleError::Config(format!(
            "the job names plugin '{shown}', which the operator does not allow"
        )));
    };
    let Some(source) = &allowed.source else {
        return Err(LifecycleError::Config(format!(
            "the job names plugin '{shown}' without shipping it, and the operator gives \
             no `source` to fetch it from: ship the file (`file = ...`)"
        )));
    };
    let registries = wasmhooks_oci::Registries::of(policy).map_err(LifecycleError::Config)?;
    let bytes = wasmhooks_oci::fetch_allowed(
        allowed,
        &registries,
        host.cache_dir(),
        policy.job_limits().max_plugin_bytes,
    )
    .map_err(|e| LifecycleError::Config(format!("plugin '{shown}': {e}")))?;
    Ok(host.load_bytes(source, &bytes)?)
}

/// Where this process stands in a multi-process job.
#[derive(Debug, Clone, Copy)]
pub struct WorkerRole {
    /// This process's rank (not 0: rank 0 is the process that spawns).
    pub rank: usize,
    /// Ranks in all.
    pub world_size: usize,
    /// Rank 0's rendezvous address.
    pub rendezvous: SocketAddr,
}

/// What a run produced. Holds the node's engine, if one was started: it
/// stops when the report drops.
#[derive(Debug, Serialize)]
pub struct JobReport {
    /// The job's name.
    pub job: String,
    /// This process's rank.
    pub rank: usize,
    /// The node's initialization, if the job has a node (rank 0 only).
    pub node: Option<NodeOutcome>,
    /// The training, if the job trains.
    pub training: Option<TrainingOutcome>,
    /// Per plugin: calls, failures, fuel, time, what it changed.
    pub plugins: Vec<PluginStats>,
}

/// Runs a job in this process. With `role`, this is a worker rank joining
/// rank 0; without, this is rank 0, and `spawn_worker` makes the command
/// that starts each other rank (the same program, with the role flags).
pub fn run(
    bundle: &JobBundle,
    host: &Host,
    role: Option<WorkerRole>,
    spawn_worker: &dyn Fn(WorkerRole) -> Command,
) -> Result<JobReport, LifecycleError> {
    let rank = role.map_or(0, |r| r.rank);
    let mut hooks = bundle.hooks(host, rank)?;
    // The node is initialized once, by rank 0; its engine serves until the
    // job ends.
    let node = match (&bundle.spec.node, role) {
        (Some(config), None) => Some(node::initialize(config, host.policy(), &mut hooks)?),
        _ => None,
    };
    // Training starts from what initialization left (the engine, the
    // placement group, the model's files), so its plugins see it.
    let start = node.as_ref().map(|n| n.data.clone()).unwrap_or_default();
    let training = match &bundle.spec.training {
        None => None,
        Some(config) => Some(run_training(
            config,
            host,
            &mut hooks,
            role,
            spawn_worker,
            start,
        )?),
    };
    Ok(JobReport {
        job: bundle.spec.name.clone(),
        rank,
        node,
        training,
        plugins: hooks.stats(),
    })
}

fn run_training(
    config: &TrainingConfig,
    host: &Host,
    hooks: &mut Hooks,
    role: Option<WorkerRole>,
    spawn_worker: &dyn Fn(WorkerRole) -> Command,
    start: DataMap,
) -> Result<TrainingOutcome, LifecycleError> {
    let limits = host.policy().job_limits();
    if let Some(role) = role {
        let mut collective = Tcp::join(role.rendezvous, role.rank, role.world_size)?;
        return training::train(config, limits, hooks, &mut collective, start);
    }
    if config.world_size == 1 {
        return training::train(config, limits, hooks, &mut Solo, start);
    }
    let (listener, rendezvous) = Tcp::listen()?;
    let mut workers = Workers::default();
    for rank in 1..config.world_size {
        let role = WorkerRole {
            rank,
            world_size: config.world_size,
            rendezvous,
        };
        let child = spawn_worker(role)
            .spawn()
            .map_err(|e| LifecycleError::Config(format!("cannot start rank {rank}: {e}")))?;
        workers.0.push((rank, child));
    }
    let mut collective: Box<dyn Collective> =
        Box::new(Tcp::accept_while(listener, config.world_size, || {
            workers.exited()
        })?);
    let outcome = training::train(config, limits, hooks, collective.as_mut(), start);
    drop(collective);
    let waited = workers.wait();
    let outcome = outcome?;
    waited?;
    Ok(outcome)
}

/// Worker processes; any still running when this drops are killed, so an
/// error on rank 0 leaves no orphans.
#[derive(Default)]
struct Workers(Vec<(usize, std::process::Child)>);

impl Workers {
    /// Whether a worker has exited already (before joining, it failed).
    fn exited(&mut self) -> Result<(), String> {
        for (rank, child) in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("rank {rank} exited with {status} before it joined"));
            }
        }
        Ok(())
    }

    fn wait(&mut self) -> Result<(), LifecycleError> {
        let mut failed = None;
        for (rank, mut child) in self.0.drain(..) {
            match child.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => failed = failed.or(Some(format!("rank {rank} exited with {status}"))),
                Err(e) => failed = failed.or(Some(format!("rank {rank}: {e}"))),
            }
        }
        match failed {
            Some(message) => Err(LifecycleError::Config(message)),
            None => Ok(()),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
