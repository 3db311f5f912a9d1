//! Plugins from OCI registries, as Istio's `WasmPlugin` and Kubewarden take
//! them: the Wasm artifact layout of the CNCF's guidance (an image manifest
//! whose config is `application/vnd.wasm.config.v0+json` and whose one
//! layer is the `application/wasm` component), spoken through `oci-client`
//! and written through the Bytecode Alliance's `oci-wasm`.
//!
//! The operator's `sha256` pin stays the trust anchor. A `[[plugin]]` may
//! name `source = "oci://HOST/REPO:TAG"` (or `@sha256:` a manifest digest)
//! instead of the job shipping the file; the host then fetches it
//! ([`fetch_pinned`]), and whatever the registry serves must be a layer
//! whose digest is the pin, so a tag moved to other bytes is refused, not
//! run. A pulled plugin is verified before it is written to the compile
//! cache's folder (`oci/<sha256>.wasm`), and served from there afterwards
//! with no registry reachable (Istio's `IfNotPresent` for pinned digests);
//! on Ray each node pulls once, not each task.
//!
//! The registry's own server is as trusted as the operator's config that
//! names it; what was pushed to it is not. So the layer's size is checked
//! against the operator's `max_plugin_mib` before a byte of it is read, a
//! stream is cut at the size its manifest gave, a whole pull has a
//! deadline, and nothing reaches the cache (or the compiler) unverified.
//! Credentials come from the operator's config (`[registry."HOST"]`) or the
//! standard Docker config file, never from a job.

mod auth;
mod transfer;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use wasmhooks::Policy;

pub use oci_wasm::{WASM_LAYER_MEDIA_TYPE, WASM_MANIFEST_CONFIG_MEDIA_TYPE};

/// The operator config's table of registries: `[registry."HOST[:PORT]"]`.
pub const SECTION: &str = "registry";

/// How long one pull or push may take, unless the registry's table says.
const DEFAULT_TIMEOUT_S: u64 = 120;
/// The longest a table may allow.
const MAX_TIMEOUT_S: u64 = 3600;

/// A registry failed, refused, or served what the pin does not allow.
#[derive(Debug, thiserror::Error)]
#[error("{reference}: {message}")]
pub struct OciError {
    /// The reference, as the config or the command line gave it.
    pub reference: String,
    /// What went wrong.
    pub message: String,
}

impl OciError {
    fn new(reference: &str, message: impl Into<String>) -> Self {
        OciError {
            reference: reference.to_owned(),
            message: message.into(),
        }
    }
}

/// One registry's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Plain HTTP instead of HTTPS (a registry on 127.0.0.1, a lab).
    #[serde(default)]
    pub insecure: bool,
    /// Basic credentials; without them, the Docker config file's, if any.
    pub username: Option<String>,
    /// The password for `username`.
    pub password: Option<String>,
    /// How long one pull or push may take, in seconds.
    pub timeout_s: Option<u64>,
}

/// The registries the operator configured, by host.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    by_host: std::collections::BTreeMap<String, RegistryConfig>,
}

impl Registries {
    /// The `[registry."HOST"]` tables of `policy` (none: every registry
    /// over HTTPS, with the Docker config's credentials).
    pub fn of(policy: &Policy) -> Result<Registries, String> {
        let Some(section) = policy.section(SECTION) else {
            return Ok(Registries::default());
        };
        section
            .get_or_parse(|s| {
                let by_host: std::collections::BTreeMap<String, RegistryConfig> =
                    s.deserialize()?;
                for (host, config) in &by_host {
                    let t = config.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S);
                    if !(1..=MAX_TIMEOUT_S).contains(&t) {
                        return Err(format!(
                            "[registry.\"{host}\"] timeout_s must be 1 to {MAX_TIMEOUT_S}, not {t}"
                        ));
                    }
                    if config.password.is_some() != config.username.is_some() {
                        return Err(format!(
                            "[registry.\"{host}\"] give username and password together"
                        ));
                    }
                }
                Ok(Registries { by_host })
            })
            .cloned()
    }

    /// Settings for one registry; ones no table names get the defaults.
    pub fn with(mut self, host: &str, config: RegistryConfig) -> Self {
        self.by_host.insert(host.to_owned(), config);
        self
    }

    fn get(&self, host: &str) -> RegistryConfig {
        self.by_host.get(host).cloned().unwrap_or_default()
    }
}

/// An `oci://` reference, parsed.
#[derive(Debug, Clone)]
pub struct OciRef {
    text: String,
    reference: oci_client::Reference,
}

impl OciRef {
    /// Parses `oci://HOST/REPO:TAG` or `oci://HOST/REPO@sha256:HEX`. The
    /// host is never implied: `oci://library/x:1` is refused rather than
    /// read as Docker Hub's.
    pub fn parse(text: &str) -> Result<OciRef, OciError> {
        let Some(rest) = text.strip_prefix("oci://") else {
            return Err(OciError::new(text, "an OCI reference starts with oci://"));
        };
        let host = rest.split('/').next().unwrap_or_default();
        let reference = oci_client::Reference::from_str(rest)
            .map_err(|e| OciError::new(text, format!("not an OCI reference: {e}")))?;
        if reference.registry() != host || !rest.contains('/') {
            return Err(OciError::new(
                text,
                "name the registry's host first: oci://HOST[:PORT]/REPO:TAG",
            ));
        }
        let last = rest.rsplit('/').next().unwrap_or_default();
        if !last.contains(':') && !rest.contains('@') {
            return Err(OciError::new(
                text,
                "name a tag or a digest: oci://HOST/REPO:TAG or …@sha256:HEX",
            ));
        }
        Ok(OciRef {
            text: text.to_owned(),
            reference,
        })
    }

    /// The registry's host (and port).
    pub fn host(&self) -> &str {
        self.reference.registry()
    }

    /// The same repository, by a manifest digest.
    pub fn by_digest(&self, digest: &str) -> String {
        format!(
            "oci://{}/{}@{digest}",
            self.reference.registry(),
            self.reference.repository()
        )
    }
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a pull brought.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The component's bytes, verified against the layer's digest.
    pub bytes: Vec<u8>,
    /// The manifest's digest (`sha256:…`), to pin a reference by.
    pub manifest_digest: String,
    /// The component's sha256, lowercase hex: what an operator pins.
    pub sha256: String,
}

/// What a push made.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The manifest's digest (`sha256:…`).
    pub manifest_digest: String,
    /// The component's sha256, lowercase hex.
    pub sha256: String,
}

/// Pulls the component `reference` names, at most `max_bytes` of it. With
/// `pin` (a sha256, hex), the artifact's layer must be those bytes.
pub fn pull(
    reference: &str,
    registries: &Registries,
    pin: Option<&str>,
    max_bytes: u64,
) -> Result<Pulled, OciError> {
    let oci = OciRef::parse(reference)?;
    let config = registries.get(oci.host());
    transfer::run(&oci, &config, |client, auth| {
        transfer::pull(client, auth, &oci, pin, max_bytes)
    })
}

/// Pushes the component `bytes` to `reference` in the Wasm artifact
/// layout (its config describes the component's world, as `oci-wasm`
/// writes it).
pub fn push(bytes: &[u8], reference: &str, registries: &Registries) -> Result<Pushed, OciError> {
    let oci = OciRef::parse(reference)?;
    let config = registries.get(oci.host());
    transfer::run(&oci, &config, |client, auth| {
        transfer::push(client, auth, &oci, bytes)
    })
}

/// The plugin the operator allowed as `pin` (sha256, hex) from `source`:
/// from the cache folder if it holds those bytes, else pulled, verified,
/// then cached there. With no cache folder it is pulled every time.
pub fn fetch_pinned(
    source: &str,
    pin: &str,
    registries: &Registries,
    cache_dir: Option<&Path>,
    max_bytes: u64,
) -> Result<Vec<u8>, OciError> {
    let pin = pin.to_ascii_lowercase();
    if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(OciError::new(
            source,
            "the pin is not a sha256 (64 hex digits)",
        ));
    }
    let cached = cache_dir.map(|dir| dir.join("oci").join(format!("{pin}.wasm")));
    if let Some(path) = &cached
        && let Ok(bytes) = wasmhooks::read_regular(path, max_bytes)
    {
        if wasmhooks::sha256_hex(&bytes) == pin {
            tracing::debug!(source, path = %path.display(), "plugin served from the cache");
            return Ok(bytes);
        }
        // Not what its name says (a torn write, a tamper): pulled again.
        let _ = std::fs::remove_file(path);
    }
    let pulled = pull(source, registries, Some(&pin), max_bytes)?;
    if let Some(path) = &cached
        && let Err(e) = store(path, &pulled.bytes)
    {
        tracing::warn!(source, path = %path.display(), "could not cache the pulled plugin: {e}");
    }
    Ok(pulled.bytes)
}

/// The bytes of the plugin the operator allows as `allowed` from its
/// `source`: by its pin through the cache ([`fetch_pinned`]), or, for one
/// allowed by its publisher, pulled afresh (a tag has no pin to cache it
/// by); the host verifies the publisher's signature before it compiles.
pub fn fetch_allowed(
    allowed: &wasmhooks::PluginPolicy,
    registries: &Registries,
    cache_dir: Option<&Path>,
    max_bytes: u64,
) -> Result<Vec<u8>, OciError> {
    let Some(source) = &allowed.source else {
        return Err(OciError::new(
            &allowed.name,
            "the operator gives no `source` for it",
        ));
    };
    if allowed.sha256.is_empty() {
        return pull(source, registries, None, max_bytes).map(|p| p.bytes);
    }
    fetch_pinned(source, &allowed.sha256, registries, cache_dir, max_bytes)
}

/// Writes `bytes` to `path` whole or not at all: a temporary file in the
/// same folder, renamed over it, so two processes pulling the same plugin
/// on one node never see half a file.
fn store(path: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The deadline of one operation with these settings.
fn deadline(config: &RegistryConfig) -> Duration {
    Duration::from_secs(config.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_their_host_and_a_tag_or_digest() {
        let r = OciRef::parse("oci://127.0.0.1:5000/plugins/stop:1.0").unwrap();
        assert_eq!(r.host(), "127.0.0.1:5000");
        assert_eq!(
            r.by_digest("sha256:ab"),
            "oci://127.0.0.1:5000/plugins/stop@sha256:ab"
        );
        for bad in [
            "127.0.0.1:5000/x:1",
            "oci://plugins:1",
            "oci://library/x:1",
            "oci://127.0.0.1:5000/x",
            "oci://127.0.0.1:5000/X:1",
        ] {
            assert!(OciRef::parse(bad).is_err(), "{bad}");
        }
        let d = format!("oci://reg.example:443/a/b@sha256:{}", "0".repeat(64));
        assert!(OciRef::parse(&d).is_ok());
    }
}
