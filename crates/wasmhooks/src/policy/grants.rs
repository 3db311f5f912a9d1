//! What the operator lets one plugin do: the keys it may write, the folders
//! it may read or write, the environment it may see, what a failure of it
//! does, and its limits ([`PluginPolicy`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Limits;

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
    /// The sha256 of the `.wasm` file, lowercase hex; empty when the
    /// operator allows the plugin by its `publisher` instead.
    pub sha256: String,
    /// The publisher (a `[[publisher]]` of the config) whose signature
    /// allows any version of this plugin, instead of a pinned sha256.
    pub publisher: Option<String>,
    /// Where the operator keeps the file, if the config says; `check` loads
    /// it from there. Jobs ship their own files, matched by digest.
    pub file: Option<PathBuf>,
    /// Where the host fetches the plugin when a job names it instead of
    /// shipping it: an OCI reference (`oci://HOST/REPO:TAG` or
    /// `oci://HOST/REPO@sha256:…`). The `sha256` pin stays the trust anchor:
    /// whatever the registry serves must hash to it.
    pub source: Option<String>,
    /// Its limits.
    pub limits: Limits,
    /// What to do when a call fails.
    pub on_error: OnError,
    /// What it may touch.
    pub grants: Grants,
    /// A deadline for its phase calls shorter than `limits.timeout`, where
    /// a host serving requests sets one ([`Policy::cap_phase_timeouts`]):
    /// its start (`init`) keeps `limits.timeout`, since a plugin that
    /// compiles its rules there would otherwise fail a replica's start.
    ///
    /// [`Policy::cap_phase_timeouts`]: crate::Policy::cap_phase_timeouts
    pub phase_timeout: Option<std::time::Duration>,
}

impl PluginPolicy {
    /// A policy with default limits, `fail` on error and no grants; for
    /// embedding hosts that build their allowlist in code.
    pub fn new(name: impl Into<String>, sha256: impl Into<String>) -> Self {
        PluginPolicy {
            name: name.into(),
            sha256: sha256.into().to_ascii_lowercase(),
            file: None,
            source: None,
            publisher: None,
            limits: Limits::default(),
            on_error: OnError::default(),
            grants: Grants::default(),
            phase_timeout: None,
        }
    }

    /// The deadline of one call at a phase.
    pub fn phase_deadline(&self) -> std::time::Duration {
        self.phase_timeout.unwrap_or(self.limits.timeout)
    }

    /// Grants writes to the keys the patterns cover.
    ///
    /// # Panics
    /// If a pattern is empty or has `*` before its end: a programming error
    /// in the embedding host (configs from files go through
    /// [`Policy::from_file`](super::Policy::from_file), which reports it as an
    /// error instead).
    pub fn allow_write<'a>(mut self, patterns: impl IntoIterator<Item = &'a str>) -> Self {
        for p in patterns {
            self.grants
                .write
                .push(KeyPattern::new(p).expect("valid key pattern"));
        }
        self
    }
}

/// A publisher the operator trusts: plugins that name it are allowed when a
/// signature embedded in their bytes (the wasm-signatures format that
/// `wasmsign2` writes) verifies under one of its keys, checked offline
/// before the bytes reach the compiler.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Publisher {
    /// Its name, which `[[plugin]] publisher = ...` refers to.
    pub name: String,
    /// Its public keys (ed25519).
    pub keys: Vec<PublisherKey>,
}

/// One public key of a publisher.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct PublisherKey {
    /// The file it was read from.
    pub file: PathBuf,
    /// The key.
    #[serde(skip)]
    pub key: wasmsign2::PublicKey,
    /// The first 16 hex digits of the sha256 of its 32 bytes: how
    /// messages name it.
    pub fingerprint: String,
}

impl std::fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PublisherKey({} from {})",
            self.fingerprint,
            self.file.display()
        )
    }
}

impl PublisherKey {
    /// Reads a public key file: PEM, DER or the raw 32 bytes.
    pub fn from_file(file: PathBuf) -> Result<Self, String> {
        let bytes = crate::files::read_regular(&file, 64 << 10)
            .map_err(|e| format!("cannot read key {}: {e}", file.display()))?;
        let key = wasmsign2::PublicKey::from_any(&bytes)
            .map_err(|e| format!("{} is not an ed25519 public key: {e}", file.display()))?;
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.to_bytes());
        let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(PublisherKey {
            file,
            key,
            fingerprint,
        })
    }
}
