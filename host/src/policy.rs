//! The operator's allowlist: which plugins may run, pinned by sha256, with
//! their limits, error policy and grants. Read from TOML:
//!
//! ```toml
//! [defaults]            # optional; applies to every plugin below
//! fuel = 2_000_000_000  # per call
//! memory_mib = 64
//! timeout_ms = 5000     # wall clock, per call
//! max_update_kib = 1024 # bytes of updates one call may return
//! on_error = "fail"     # fail | skip | disable
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: DEFAULT_FUEL,
            memory_bytes: mib(DEFAULT_MEMORY_MIB),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            max_update_bytes: kib(DEFAULT_MAX_UPDATE_KIB),
        }
    }
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

    fn from_toml(text: &str, base: &Path) -> Result<Self, String> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| e.to_string())?;
        let defaults = raw.defaults;
        let plugins = raw
            .plugin
            .into_iter()
            .map(|p| p.resolve(&defaults, base))
            .collect::<Result<Vec<_>, _>>()?;
        let policy = Policy { plugins };
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
            if p.limits.fuel == 0 || p.limits.memory_bytes == 0 || p.limits.timeout.is_zero() {
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
    plugin: Vec<RawPlugin>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    fuel: Option<u64>,
    memory_mib: Option<u64>,
    timeout_ms: Option<u64>,
    max_update_kib: Option<u64>,
    on_error: Option<OnError>,
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
