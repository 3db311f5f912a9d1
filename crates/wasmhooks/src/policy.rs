//! The operator's allowlist: which plugins may run, pinned by sha256, with
//! their limits, error policy and grants. Read from TOML:
//!
//! ```toml
//! [defaults]            # optional; applies to every plugin below
//! fuel = 2_000_000_000  # per call
//! memory_mib = 64
//! timeout_ms = 5000     # wall clock, per call
//! max_update_kib = 1024 # bytes of updates one call may return
//! max_state_kib = 1024  # bytes of state one save-state may return
//! max_handles = 256     # WASI handles (files, folders, streams) open at once
//! readwrite_quota_mib = 256  # bytes each read-write folder may hold
//! on_error = "fail"     # fail | skip | disable
//!
//! [job]                 # bounds on what a job and its plugins bring
//! max_data_kib = 16384  # bytes plugins may keep in the data map
//! observer_queue_kib = 16384
//! max_download_mib = 262144
//! max_file_mib = 256    # a data set or checkpoint the host reads
//! max_plugin_mib = 128  # a plugin's .wasm
//!
//! [engine.sim]          # an engine a job may start, by name
//! command = ["python3", "engine.py", "--port", "{port}"]
//! health_url = "http://127.0.0.1:{port}/health"
//!
//! [[plugin]]
//! name = "force-download"
//! sha256 = "3f5a..."
//! file = "plugins/force_download.wasm"  # optional, for `wasmhooks check`
//! write = ["local_node_download_model", "worker_node_download_model"]
//! read = ["models", { host = "/data/tokenizers", guest = "/tok" }]
//! readwrite = [{ host = "logs", guest = "/logs" }]
//! env = ["HF_HOME"]
//! on_error = "skip"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Fuel per call when the operator sets none: about a second of compute.
pub const DEFAULT_FUEL: u64 = 2_000_000_000;
/// Memory per plugin instance when the operator sets none, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 64;
/// Wall-clock time per call when the operator sets none, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Bytes of updates one call may return when the operator sets none, in KiB.
pub const DEFAULT_MAX_UPDATE_KIB: u64 = 1_024;
/// Bytes of state one `save-state` may return when the operator sets none, in KiB.
pub const DEFAULT_MAX_STATE_KIB: u64 = 1_024;
/// WASI handles (open files, folders, streams, pollables) a plugin may hold
/// at once when the operator sets none. The process's descriptors are shared
/// by the host and every plugin: one plugin must not be able to take them all.
pub const DEFAULT_MAX_HANDLES: u64 = 256;
/// Bytes a read-write folder may hold when the operator sets none, in MiB.
pub const DEFAULT_READWRITE_QUOTA_MIB: u64 = 256;

/// The largest value each numeric operator field takes. Past these a number
/// is a typo, and some (a timeout of `u64::MAX` ms) would overflow a clock.
const MAX_FUEL: u64 = 1 << 60;
const MAX_MEMORY_MIB: u64 = 1 << 20;
const MAX_TIMEOUT_MS: u64 = 24 * 3_600_000;
const MAX_KIB: u64 = 1 << 30;
const MAX_MIB: u64 = 1 << 30;
const MAX_HANDLES: u64 = 1 << 20;
const MAX_ENGINE_TIMEOUT_S: u64 = 24 * 3_600;

/// What the host does when a call into a plugin fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Abort the job with an error naming the plugin and phase.
    #[default]
    Fail,
    /// Log the failure and go on; call the plugin again at later phases.
    Skip,
    /// Log the failure and never call the plugin again in this job.
    Disable,
}

/// Resource limits for one plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Fuel (roughly, wasm instructions) per call.
    pub fuel: u64,
    /// Bytes of linear memory (all memories of the instance together).
    pub memory_bytes: usize,
    /// Wall-clock time per call.
    pub timeout: Duration,
    /// Bytes of keys and values one call may return as updates.
    pub max_update_bytes: usize,
    /// Bytes of state one `save-state` may return.
    pub max_state_bytes: usize,
    /// WASI handles the instance may hold at once.
    pub max_handles: usize,
    /// Bytes each read-write folder may hold, checked after every call.
    pub readwrite_quota_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: DEFAULT_FUEL,
            memory_bytes: mib(DEFAULT_MEMORY_MIB),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            max_update_bytes: kib(DEFAULT_MAX_UPDATE_KIB),
            max_state_bytes: kib(DEFAULT_MAX_STATE_KIB),
            max_handles: DEFAULT_MAX_HANDLES as usize,
            readwrite_quota_bytes: DEFAULT_READWRITE_QUOTA_MIB << 20,
        }
    }
}

/// Bounds on what one job may bring or make, whatever its plugins do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobLimits {
    /// Bytes of keys and values plugins may keep in the data map at once.
    pub max_data_bytes: usize,
    /// Bytes of snapshots waiting for the observer worker at once.
    pub observer_queue_bytes: usize,
    /// Bytes a job's node may download in all.
    pub max_download_bytes: u64,
    /// Bytes of one file the host reads for a job: a data set, a checkpoint,
    /// a model file from a `file://` source.
    pub max_file_bytes: u64,
    /// Bytes of one plugin file.
    pub max_plugin_bytes: u64,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_data_bytes: kib(16 << 10),
            observer_queue_bytes: kib(16 << 10),
            max_download_bytes: 256 << 30,
            max_file_bytes: 256 << 20,
            max_plugin_bytes: 128 << 20,
        }
    }
}

/// An engine the operator lets jobs start: a command template, never a
/// shell. A job names it and may add arguments only where `job_args` is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineTemplate {
    /// Program and arguments; `{port}` and `{model_dir}` are filled in, and
    /// each engine keyword argument is appended as `--key=value`.
    pub command: Vec<String>,
    /// A line the engine prints on stdout once it serves.
    pub ready_line: Option<String>,
    /// A URL that answers 200 once it serves (`{port}` is filled in).
    pub health_url: Option<String>,
    /// Seconds to wait for readiness.
    #[serde(default = "default_engine_timeout")]
    pub timeout_s: u64,
    /// Whether a job may append arguments of its own (as argv entries).
    #[serde(default)]
    pub job_args: bool,
}

fn default_engine_timeout() -> u64 {
    30
}

/// A data key a plugin may write: an exact key, a prefix ending in `*`
/// (`metrics.*`), or `*` for every key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct KeyPattern(String);

impl KeyPattern {
    /// Parses a pattern; `*` may only stand at the end.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("an empty key pattern".into());
        }
        if pattern[..pattern.len() - 1].contains('*') {
            return Err(format!("key pattern {pattern:?} has `*` before its end"));
        }
        Ok(KeyPattern(pattern.to_owned()))
    }

    /// Whether the pattern covers `key`.
    pub fn matches(&self, key: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => self.0 == key,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A host folder the plugin may read, and where it sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirGrant {
    /// The folder on the host (relative paths in the TOML are resolved against
    /// the operator config's folder).
    pub host: PathBuf,
    /// The path the plugin opens it under.
    pub guest: String,
}

/// What a plugin may touch beyond its own memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Grants {
    /// Data keys it may set or remove. Empty: it may change nothing.
    pub write: Vec<KeyPattern>,
    /// Folders it may read (never write).
    pub read: Vec<DirGrant>,
    /// Folders it may read and write (a metrics log, say).
    pub read_write: Vec<DirGrant>,
    /// Names of host environment variables it may see.
    pub env: Vec<String>,
}

impl Grants {
    /// Whether the plugin may set or remove `key`.
    pub fn may_write(&self, key: &str) -> bool {
        self.write.iter().any(|p| p.matches(key))
    }

    /// Whether a write grant names `key` exactly (not by `*` or a prefix):
    /// what a key only the host provides needs.
    pub fn names(&self, key: &str) -> bool {
        self.write.iter().any(|p| p.as_str() == key)
    }

    /// The write grants, for messages.
    pub fn describe_write(&self) -> String {
        if self.write.is_empty() {
            return "nothing".into();
        }
        let names: Vec<&str> = self.write.iter().map(KeyPattern::as_str).collect();
        names.join(", ")
    }
}

/// One allowed plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginPolicy {
    /// The name the plugin must give in its manifest.
    pub name: String,
    /// The sha256 of the `.wasm` file, lowercase hex.
    pub sha256: String,
    /// Where the operator keeps the file, if the config says; `check` loads
    /// it from there. Jobs ship their own files, matched by digest.
    pub file: Option<PathBuf>,
    /// Its limits.
    pub limits: Limits,
    /// What to do when a call fails.
    pub on_error: OnError,
    /// What it may touch.
    pub grants: Grants,
}

impl PluginPolicy {
    /// A policy with default limits, `fail` on error and no grants; for
    /// embedding hosts that build their allowlist in code.
    pub fn new(name: impl Into<String>, sha256: impl Into<String>) -> Self {
        PluginPolicy {
            name: name.into(),
            sha256: sha256.into().to_ascii_lowercase(),
            file: None,
            limits: Limits::default(),
            on_error: OnError::default(),
            grants: Grants::default(),
        }
    }

    /// Grants writes to the keys the patterns cover.
    ///
    /// # Panics
    /// If a pattern is empty or has `*` before its end: a programming error
    /// in the embedding host (configs from files go through
    /// [`Policy::from_file`], which reports it as an error instead).
    pub fn allow_write<'a>(mut self, patterns: impl IntoIterator<Item = &'a str>) -> Self {
        for p in patterns {
            self.grants
                .write
                .push(KeyPattern::new(p).expect("valid key pattern"));
        }
        self
    }
}

/// The operator's allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    plugins: Vec<PluginPolicy>,
    job: JobLimits,
    engines: std::collections::BTreeMap<String, EngineTemplate>,
}

impl Policy {
    /// Reads and validates an operator config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Policy {
            source_name: path.display().to_string(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|message| Error::Policy {
            source_name: path.display().to_string(),
            message,
        })
    }

    /// Parses an operator config; relative folders resolve against `base`.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<Self, Error> {
        Self::from_toml(text, base).map_err(|message| Error::Policy {
            source_name: "<inline>".into(),
            message,
        })
    }

    /// An allowlist built in code.
    pub fn from_plugins(plugins: impl IntoIterator<Item = PluginPolicy>) -> Result<Self, Error> {
        let policy = Policy {
            plugins: plugins.into_iter().collect(),
            ..Policy::default()
        };
        policy.validate().map_err(|message| Error::Policy {
            source_name: "<code>".into(),
            message,
        })?;
        Ok(policy)
    }

    /// Every allowed plugin, in the config's order.
    pub fn plugins(&self) -> &[PluginPolicy] {
        &self.plugins
    }

    /// The plugin pinned to this digest.
    pub fn by_digest(&self, sha256: &str) -> Option<&PluginPolicy> {
        self.plugins.iter().find(|p| p.sha256 == sha256)
    }

    /// The plugin allowed under this name.
    pub fn by_name(&self, name: &str) -> Option<&PluginPolicy> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// The bounds every job runs under.
    pub fn job_limits(&self) -> &JobLimits {
        &self.job
    }

    /// Sets the bounds every job runs under (for hosts that build their
    /// policy in code).
    pub fn with_job_limits(mut self, job: JobLimits) -> Self {
        self.job = job;
        self
    }

    /// The engine a job may start under this name.
    pub fn engine(&self, name: &str) -> Option<&EngineTemplate> {
        self.engines.get(name)
    }

    /// The names of the engines jobs may start.
    pub fn engine_names(&self) -> impl Iterator<Item = &str> {
        self.engines.keys().map(String::as_str)
    }

    fn from_toml(text: &str, base: &Path) -> Result<Self, String> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| e.to_string())?;
        let defaults = raw.defaults;
        defaults.check("[defaults]")?;
        let plugins = raw
            .plugin
            .into_iter()
            .map(|p| p.resolve(&defaults, base))
            .collect::<Result<Vec<_>, _>>()?;
        let job = raw.job.resolve()?;
        for (name, engine) in &raw.engine {
            check_engine(name, engine)?;
        }
        let policy = Policy {
            plugins,
            job,
            engines: raw.engine,
        };
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        let mut digests = std::collections::BTreeMap::new();
        for p in &self.plugins {
            validate_name(&p.name)?;
            if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "plugin '{}': sha256 must be 64 hex digits, got {:?}",
                    p.name, p.sha256
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(format!("plugin '{}' is listed twice", p.name));
            }
            if let Some(other) = digests.insert(p.sha256.as_str(), p.name.as_str()) {
                return Err(format!(
                    "plugins '{other}' and '{}' pin the same sha256; one file cannot be two plugins",
                    p.name
                ));
            }
            if p.limits.fuel == 0
                || p.limits.memory_bytes == 0
                || p.limits.timeout.is_zero()
                || p.limits.max_handles == 0
            {
                return Err(format!("plugin '{}': limits must be above zero", p.name));
            }
            for d in p.grants.read.iter().chain(&p.grants.read_write) {
                if !d.guest.starts_with('/') {
                    return Err(format!(
                        "plugin '{}': the guest path of a read grant must be absolute, got {:?}",
                        p.name, d.guest
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A plugin name: lowercase letters, digits, `-` and `_`, 1 to 64 of them.
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "plugin name {name:?} must be 1 to 64 of a-z, 0-9, '-' and '_'"
        ))
    }
}

fn mib(n: u64) -> usize {
    usize::try_from(n.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
}

fn kib(n: u64) -> usize {
    usize::try_from(n.saturating_mul(1 << 10)).unwrap_or(usize::MAX)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    defaults: RawLimits,
    #[serde(default)]
    job: RawJobLimits,
    #[serde(default)]
    engine: std::collections::BTreeMap<String, EngineTemplate>,
    #[serde(default)]
    plugin: Vec<RawPlugin>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    fuel: Option<u64>,
    memory_mib: Option<u64>,
    timeout_ms: Option<u64>,
    max_update_kib: Option<u64>,
    max_state_kib: Option<u64>,
    max_handles: Option<u64>,
    readwrite_quota_mib: Option<u64>,
    on_error: Option<OnError>,
}

/// `value` if it is at most `max`; the error names the field.
fn in_range(place: &str, field: &str, value: Option<u64>, max: u64) -> Result<(), String> {
    match value {
        Some(v) if v > max => Err(format!(
            "{place} {field} = {v} is out of range (at most {max})"
        )),
        _ => Ok(()),
    }
}

impl RawLimits {
    fn check(&self, place: &str) -> Result<(), String> {
        in_range(place, "fuel", self.fuel, MAX_FUEL)?;
        in_range(place, "memory_mib", self.memory_mib, MAX_MEMORY_MIB)?;
        in_range(place, "timeout_ms", self.timeout_ms, MAX_TIMEOUT_MS)?;
        in_range(place, "max_update_kib", self.max_update_kib, MAX_KIB)?;
        in_range(place, "max_state_kib", self.max_state_kib, MAX_KIB)?;
        in_range(place, "max_handles", self.max_handles, MAX_HANDLES)?;
        in_range(
            place,
            "readwrite_quota_mib",
            self.readwrite_quota_mib,
            MAX_MIB,
        )
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJobLimits {
    max_data_kib: Option<u64>,
    observer_queue_kib: Option<u64>,
    max_download_mib: Option<u64>,
    max_file_mib: Option<u64>,
    max_plugin_mib: Option<u64>,
}

impl RawJobLimits {
    fn resolve(self) -> Result<JobLimits, String> {
        let d = JobLimits::default();
        for (field, value) in [
            ("max_data_kib", self.max_data_kib),
            ("observer_queue_kib", self.observer_queue_kib),
        ] {
            in_range("[job]", field, value, MAX_KIB)?;
        }
        for (field, value) in [
            ("max_download_mib", self.max_download_mib),
            ("max_file_mib", self.max_file_mib),
            ("max_plugin_mib", self.max_plugin_mib),
        ] {
            in_range("[job]", field, value, MAX_MIB)?;
        }
        let mib_bytes = |v: Option<u64>, default: u64| v.map_or(default, |v| v << 20);
        Ok(JobLimits {
            max_data_bytes: self.max_data_kib.map_or(d.max_data_bytes, kib),
            observer_queue_bytes: self.observer_queue_kib.map_or(d.observer_queue_bytes, kib),
            max_download_bytes: mib_bytes(self.max_download_mib, d.max_download_bytes),
            max_file_bytes: mib_bytes(self.max_file_mib, d.max_file_bytes),
            max_plugin_bytes: mib_bytes(self.max_plugin_mib, d.max_plugin_bytes),
        })
    }
}

fn check_engine(name: &str, engine: &EngineTemplate) -> Result<(), String> {
    let place = format!("[engine.{name}]");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(format!(
            "{place}: engine names are letters, digits, '-' and '_'"
        ));
    }
    if engine.command.is_empty() {
        return Err(format!("{place}: command is empty"));
    }
    if engine.ready_line.is_none() && engine.health_url.is_none() {
        return Err(format!(
            "{place}: set ready_line or health_url, so readiness can be seen"
        ));
    }
    if engine.timeout_s == 0 {
        return Err(format!("{place}: timeout_s must be above zero"));
    }
    in_range(
        &place,
        "timeout_s",
        Some(engine.timeout_s),
        MAX_ENGINE_TIMEOUT_S,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: String,
    sha256: String,
    file: Option<PathBuf>,
    fuel: Option<u64>,
    memory_mib: Option<u64>,
    timeout_ms: Option<u64>,
    max_update_kib: Option<u64>,
    max_state_kib: Option<u64>,
    max_handles: Option<u64>,
    readwrite_quota_mib: Option<u64>,
    on_error: Option<OnError>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    read: Vec<RawDir>,
    #[serde(default)]
    readwrite: Vec<RawDir>,
    #[serde(default)]
    env: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDir {
    Same(PathBuf),
    Mapped { host: PathBuf, guest: String },
}

impl RawDir {
    /// A plain path is seen at the same path (made absolute) in the guest.
    fn resolve(self, base: &Path) -> DirGrant {
        let (host, guest) = match self {
            RawDir::Same(p) => {
                let guest = p.to_string_lossy().into_owned();
                let guest = if guest.starts_with('/') {
                    guest
                } else {
                    format!("/{guest}")
                };
                (p, guest)
            }
            RawDir::Mapped { host, guest } => (host, guest),
        };
        DirGrant {
            host: base.join(host),
            guest,
        }
    }
}

impl RawPlugin {
    fn resolve(self, d: &RawLimits, base: &Path) -> Result<PluginPolicy, String> {
        RawLimits {
            fuel: self.fuel,
            memory_mib: self.memory_mib,
            timeout_ms: self.timeout_ms,
            max_update_kib: self.max_update_kib,
            max_state_kib: self.max_state_kib,
            max_handles: self.max_handles,
            readwrite_quota_mib: self.readwrite_quota_mib,
            on_error: None,
        }
        .check(&format!("plugin '{}':", self.name))?;
        let limits = Limits {
            fuel: self.fuel.or(d.fuel).unwrap_or(DEFAULT_FUEL),
            memory_bytes: mib(self
                .memory_mib
                .or(d.memory_mib)
                .unwrap_or(DEFAULT_MEMORY_MIB)),
            timeout: Duration::from_millis(
                self.timeout_ms
                    .or(d.timeout_ms)
                    .unwrap_or(DEFAULT_TIMEOUT_MS),
            ),
            max_update_bytes: kib(self
                .max_update_kib
                .or(d.max_update_kib)
                .unwrap_or(DEFAULT_MAX_UPDATE_KIB)),
            max_state_bytes: kib(self
                .max_state_kib
                .or(d.max_state_kib)
                .unwrap_or(DEFAULT_MAX_STATE_KIB)),
            max_handles: usize::try_from(
                self.max_handles
                    .or(d.max_handles)
                    .unwrap_or(DEFAULT_MAX_HANDLES),
            )
            .unwrap_or(usize::MAX),
            readwrite_quota_bytes: self
                .readwrite_quota_mib
                .or(d.readwrite_quota_mib)
                .unwrap_or(DEFAULT_READWRITE_QUOTA_MIB)
                << 20,
        };
        let write = self
            .write
            .iter()
            .map(|w| KeyPattern::new(w))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("plugin '{}': {e}", self.name))?;
        let dirs = |list: Vec<RawDir>| -> Vec<DirGrant> {
            list.into_iter().map(|r| r.resolve(base)).collect()
        };
        let read = dirs(self.read);
        let read_write = dirs(self.readwrite);
        Ok(PluginPolicy {
            sha256: self.sha256.to_ascii_lowercase(),
            file: self.file.map(|f| base.join(f)),
            name: self.name,
            limits,
            on_error: self.on_error.or(d.on_error).unwrap_or_default(),
            grants: Grants {
                write,
                read,
                read_write,
                env: self.env,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "00000000000000000000000000000000000000000000000000000000000000ff";

    #[test]
    fn defaults_apply_and_plugin_values_win() {
        let text = format!(
            r#"
            [defaults]
            fuel = 10
            timeout_ms = 250
            on_error = "skip"

            [[plugin]]
            name = "a"
            sha256 = "{DIGEST}"
            fuel = 99
            write = ["metrics.*", "skip_default"]
            read = ["models", {{ host = "/abs", guest = "/x" }}]
            "#
        );
        let policy = Policy::from_toml_str(&text, Path::new("/etc/op")).unwrap();
        let p = policy.by_name("a").unwrap();
        assert_eq!(p.limits.fuel, 99);
        assert_eq!(p.limits.timeout, Duration::from_millis(250));
        assert_eq!(p.limits.memory_bytes, 64 << 20);
        assert_eq!(p.on_error, OnError::Skip);
        assert!(p.grants.may_write("metrics.step"));
        assert!(p.grants.may_write("skip_default"));
        assert!(!p.grants.may_write("skip_default_x"));
        assert!(!p.grants.may_write("placement_group"));
        assert_eq!(p.grants.read[0].host, Path::new("/etc/op/models"));
        assert_eq!(p.grants.read[0].guest, "/models");
        assert_eq!(p.grants.read[1].host, Path::new("/abs"));
        assert!(policy.by_digest(DIGEST).is_some());
    }

    #[test]
    fn rejects_bad_configs_with_reasons() {
        let cases = [
            (
                "[[plugin]]\nname = \"a\"\nsha256 = \"abc\"".to_owned(),
                "64 hex",
            ),
            (
                format!("[[plugin]]\nname = \"A b\"\nsha256 = \"{DIGEST}\""),
                "plugin name",
            ),
            (
                format!(
                    "[[plugin]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\n[[plugin]]\nname = \"a\"\nsha256 = \"{}\"",
                    DIGEST.replace("ff", "ee")
                ),
                "listed twice",
            ),
            (
                format!(
                    "[[plugin]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\n[[plugin]]\nname = \"b\"\nsha256 = \"{DIGEST}\""
                ),
                "same sha256",
            ),
            (
                format!("[[plugin]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\nwrite = [\"a*b\"]"),
                "before its end",
            ),
            (
                format!("[[plugin]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\nfuel = 0"),
                "above zero",
            ),
            (
                format!("[[plugin]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\nfule = 3"),
                "unknown field",
            ),
            (
                format!("[[plugin]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\non_error = \"retry\""),
                "unknown variant",
            ),
            (
                format!(
                    "[[plugin]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\ntimeout_ms = 18446744073709551615"
                ),
                "timeout_ms = 18446744073709551615 is out of range",
            ),
            (
                "[defaults]\nmemory_mib = 99999999999".to_owned(),
                "[defaults] memory_mib",
            ),
            (
                "[job]\nmax_file_mib = 18446744073709551615".to_owned(),
                "[job] max_file_mib",
            ),
            (
                "[engine.x]\ncommand = []\nready_line = \"R\"".to_owned(),
                "command is empty",
            ),
            (
                "[engine.x]\ncommand = [\"e\"]".to_owned(),
                "set ready_line or health_url",
            ),
            (
                "[engine.x]\ncommand = [\"e\"]\nready_line = \"R\"\ntimeout_s = 99999999"
                    .to_owned(),
                "timeout_s = 99999999 is out of range",
            ),
        ];
        for (text, want) in cases {
            let err = Policy::from_toml_str(&text, Path::new(".")).unwrap_err();
            assert!(
                err.to_string().contains(want),
                "{err} should mention {want}"
            );
        }
    }
}
