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
//! kv_quota_kib = 1024   # bytes of keys and values in its key-value namespace
//! on_error = "fail"     # fail | skip | disable
//!
//! [job]                 # bounds on what a job and its plugins bring
//! max_data_kib = 16384  # bytes plugins may keep in the data map
//! observer_queue_kib = 16384
//! max_download_mib = 262144
//! max_file_mib = 256    # a data set or checkpoint the host reads
//! max_plugin_mib = 128  # a plugin's .wasm
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
//!
//! Top-level tables the core does not read are refused, unless the loader
//! names them as claimed ([`Policy::from_toml_str_claiming`]): those are kept
//! as [`Section`]s for the crate that reads them. The lifecycles crate claims
//! `[engine.NAME]`, the engines node initialization may start, and checks
//! them when it loads the config.
//!
//! This file has the [`Policy`] and its lookups; `limits.rs` the numeric
//! limits (each defined once), `grants.rs` what one plugin may do, `toml.rs`
//! the TOML layer.

mod grants;
mod limits;
mod toml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::Error;

pub use grants::{DirGrant, Grants, KeyPattern, OnError, PluginPolicy, Publisher, PublisherKey};
pub use limits::{
    DEFAULT_FUEL, DEFAULT_KV_QUOTA_KIB, DEFAULT_MAX_HANDLES, DEFAULT_MAX_STATE_KIB,
    DEFAULT_MAX_UPDATE_KIB, DEFAULT_MEMORY_MIB, DEFAULT_READWRITE_QUOTA_MIB, DEFAULT_TIMEOUT_MS,
    JobLimits, Limits,
};
pub use toml::Section;

/// The operator's allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    plugins: Vec<PluginPolicy>,
    publishers: Vec<Publisher>,
    job: JobLimits,
    /// The top-level tables other crates claimed, by name.
    sections: BTreeMap<String, Section>,
}

impl Policy {
    /// Reads and validates an operator config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::from_file_claiming(path, &[])
    }

    /// Reads and validates an operator config file whose top-level tables
    /// named in `claimed` another crate reads (see [`Policy::section`]).
    pub fn from_file_claiming(path: impl AsRef<Path>, claimed: &[&str]) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Policy {
            source_name: path.display().to_string(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base, claimed).map_err(|message| Error::Policy {
            source_name: path.display().to_string(),
            message,
        })
    }

    /// Parses an operator config; relative folders resolve against `base`.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<Self, Error> {
        Self::from_toml_str_claiming(text, base, &[])
    }

    /// Parses an operator config whose top-level tables named in `claimed`
    /// another crate reads (see [`Policy::section`]).
    pub fn from_toml_str_claiming(
        text: &str,
        base: &Path,
        claimed: &[&str],
    ) -> Result<Self, Error> {
        Self::from_toml(text, base, claimed).map_err(|message| Error::Policy {
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

    /// The publishers whose signatures allow plugins.
    pub fn publishers(&self) -> &[Publisher] {
        &self.publishers
    }

    /// The plugin pinned to this digest.
    pub fn by_digest(&self, sha256: &str) -> Option<&PluginPolicy> {
        self.plugins
            .iter()
            .find(|p| !p.sha256.is_empty() && p.sha256 == sha256)
    }

    /// The plugin allowed under this name.
    pub fn by_name(&self, name: &str) -> Option<&PluginPolicy> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// Lowers every plugin's deadline for a phase call to at most `cap`: a
    /// request path counts in milliseconds where a job's phases count in
    /// seconds, so a host serving requests caps what the operator wrote for
    /// jobs. A plugin's start (`init`) keeps its `timeout_ms`.
    pub fn cap_phase_timeouts(&mut self, cap: std::time::Duration) {
        for plugin in &mut self.plugins {
            plugin.phase_timeout = Some(plugin.limits.timeout.min(cap));
        }
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

    /// The claimed top-level table `name`, if the config has it; the crate
    /// that claimed it reads it.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.get(name)
    }

    fn from_toml(text: &str, base: &Path, claimed: &[&str]) -> Result<Self, String> {
        let policy = toml::parse(text, base, claimed)?;
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        let mut digests = BTreeMap::new();
        let mut publishers = BTreeSet::new();
        for p in &self.publishers {
            validate_name(&p.name).map_err(|e| format!("publisher: {e}"))?;
            if !publishers.insert(p.name.as_str()) {
                return Err(format!("publisher '{}' is listed twice", p.name));
            }
        }
        for p in &self.plugins {
            validate_name(&p.name)?;
            if let Some(publisher) = &p.publisher {
                if !p.sha256.is_empty() {
                    return Err(format!(
                        "plugin '{}': give `sha256` or `publisher`, not both",
                        p.name
                    ));
                }
                if !publishers.contains(publisher.as_str()) {
                    return Err(format!(
                        "plugin '{}': no [[publisher]] is named '{publisher}'",
                        p.name
                    ));
                }
                if !names.insert(p.name.as_str()) {
                    return Err(format!("plugin '{}' is listed twice", p.name));
                }
                continue;
            }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        ];
        for (text, want) in cases {
            let err = Policy::from_toml_str(&text, Path::new(".")).unwrap_err();
            assert!(
                err.to_string().contains(want),
                "{err} should mention {want}"
            );
        }
    }

    #[test]
    fn unknown_tables_are_refused_and_claimed_ones_kept_for_their_crate() {
        let text = "[engine.x]\ncommand = [\"e\"]\n";
        let err = Policy::from_toml_str(text, Path::new(".")).unwrap_err();
        assert!(
            err.to_string().contains(
                "line 1, column 2\n  |\n1 | [engine.x]\n  |  ^^^^^^\n\
                 unknown field `engine`, expected one of `defaults`, `job`, `publisher`, `plugin`"
            ),
            "{err}"
        );
        let policy = Policy::from_toml_str_claiming(text, Path::new("."), &["engine"]).unwrap();
        let section = policy.section("engine").unwrap();
        let value: BTreeMap<String, BTreeMap<String, Vec<String>>> = section.deserialize().unwrap();
        assert_eq!(value["x"]["command"], ["e"]);
        // A typo is still refused, with the claimed tables listed.
        let err = Policy::from_toml_str_claiming("[defualts]\n", Path::new("."), &["engine"])
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "unknown field `defualts`, expected one of `defaults`, `job`, `publisher`, `engine`, `plugin`"
            ),
            "{err}"
        );
        // The claiming crate's errors quote the line, as the core's do.
        let err = section.deserialize::<BTreeMap<String, u64>>().unwrap_err();
        assert!(err.contains("TOML parse error at line 1"), "{err}");
        // What the claiming crate made is kept, and parsed once.
        let mut runs = 0;
        for _ in 0..2 {
            let names = section
                .get_or_parse(|s| {
                    runs += 1;
                    s.deserialize::<BTreeMap<String, ::toml::Value>>()
                })
                .unwrap();
            assert!(names.contains_key("x"));
        }
        assert_eq!(runs, 1);
    }

    #[test]
    fn limits_default_as_documented() {
        let limits = Limits::default();
        assert_eq!(limits.fuel, DEFAULT_FUEL);
        assert_eq!(limits.memory_bytes, 64 << 20);
        assert_eq!(limits.timeout, Duration::from_millis(5_000));
        assert_eq!(limits.max_update_bytes, 1 << 20);
        assert_eq!(limits.max_handles, 256);
        assert_eq!(limits.readwrite_quota_bytes, 256 << 20);
        let job = JobLimits::default();
        assert_eq!(job.max_data_bytes, 16 << 20);
        assert_eq!(job.max_download_bytes, 256 << 30);
        assert_eq!(job.max_file_bytes, 256 << 20);
        assert_eq!(job.max_plugin_bytes, 128 << 20);
    }
}
