//! Inspection of a plugin file for authors and operators: its digest, what
//! it imports and exports, and its manifest, whether or not the operator
//! allows it yet. A file nobody allowed is as untrusted as any plugin: its
//! code is checked against the compiler's bounds before it is compiled
//! (once), and its `describe` runs with no grants under strict limits.

use std::path::Path;

use serde::Serialize;

use crate::Error;
use crate::host::Host;
use crate::instance::Instance;
use crate::loading::{self, CodeCheck, Plugin, PluginInner, check_code, sha256_hex};
use crate::manifest::Manifest;
use crate::policy::{Limits, PluginPolicy};

/// The limits `describe` of a file nobody allowed runs under: enough for a
/// pre-initialized interpreter (Python, JavaScript) to answer, little
/// enough that a hostile file costs a moment.
fn describe_limits() -> Limits {
    Limits {
        fuel: 500_000_000,
        memory_bytes: 64 << 20,
        timeout: std::time::Duration::from_secs(2),
        max_update_bytes: 64 << 10,
        max_state_bytes: 64 << 10,
        max_handles: 64,
        readwrite_quota_bytes: 0,
        kv_quota_bytes: 0,
    }
}

/// What `inspect` finds in a plugin file.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The file.
    pub file: String,
    /// Its size in bytes.
    pub size: usize,
    /// Its sha256, lowercase hex.
    pub sha256: String,
    /// The operator's name for it, if the policy lists this digest.
    pub allowed_as: Option<String>,
    /// The version of the `wasmhooks:plugin` package it was built against
    /// (the version of the hooks it exports), if it exports them.
    pub wit_version: Option<String>,
    /// The versioned interfaces it exports.
    pub exports: Vec<String>,
    /// The versioned interfaces it imports.
    pub imports: Vec<String>,
    /// Its manifest, if it implements the world.
    pub manifest: Option<Manifest>,
    /// Why it cannot run as a plugin, if it cannot.
    pub problem: Option<String>,
}

impl Host {
    /// Inspects a plugin file. Fails only if the file cannot be read or is
    /// not a component; a component that does not fit the world is
    /// reported in [`Inspection::problem`].
    pub fn inspect(&self, path: impl AsRef<Path>) -> Result<Inspection, Error> {
        self.shared.here()?;
        let path = path.as_ref();
        let file = path.display().to_string();
        let max = self.policy().job_limits().max_plugin_bytes;
        let bytes = crate::files::read_regular(path, max).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let sha256 = sha256_hex(&bytes);
        let allowed = self.policy().by_digest(&sha256).cloned();
        let policy = allowed.clone().unwrap_or_else(|| {
            let mut p = PluginPolicy::new("unlisted", sha256.clone());
            p.limits = describe_limits();
            p
        });
        let depth = if allowed.is_some() {
            CodeCheck::Counts
        } else {
            CodeCheck::Bodies
        };
        check_code(&bytes, depth).map_err(|reason| Error::Invalid {
            name: policy.name.clone(),
            file: file.clone(),
            reason,
        })?;
        // An allowed file compiles as it will run (and into the compile
        // cache); any other only for one `describe`, with the fast compiler.
        let shared = match &allowed {
            Some(_) => self.shared.clone(),
            None => std::sync::Arc::new(crate::host::Shared::new(
                self.policy().clone(),
                None,
                wasmtime::Strategy::Winch,
            )?),
        };
        let component = loading::compile_component(&shared, &policy.name, &file, &bytes, &sha256)?;
        let ty = component.component_type();
        let engine = &shared.engine;
        let exports = ty
            .exports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let imports = ty
            .imports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let (manifest, problem) = match describe(&shared, &policy, &file, &component) {
            Ok(manifest) => (Some(manifest), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(Inspection {
            file,
            size: bytes.len(),
            sha256,
            allowed_as: allowed.map(|p| p.name),
            wit_version: crate::bindings::targeted_version(&component, engine),
            exports,
            imports,
            manifest,
            problem,
        })
    }
}

/// Runs `describe` of the `component` compiled for `shared`'s engine, with
/// no grants.
fn describe(
    shared: &std::sync::Arc<crate::host::Shared>,
    policy: &PluginPolicy,
    file: &str,
    component: &wasmtime::component::Component,
) -> Result<Manifest, Error> {
    let pre = loading::pre(shared, &policy.name, file, component)?;
    let plugin = Plugin {
        inner: std::sync::Arc::new(PluginInner {
            policy: PluginPolicy {
                grants: Default::default(),
                ..policy.clone()
            },
            file: file.to_owned(),
            pre,
            shared: shared.clone(),
        }),
    };
    Instance::instantiate(&plugin).map(|instance| instance.manifest)
}
