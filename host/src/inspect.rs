//! Inspection of a plugin file for authors and operators: its digest, what
//! it imports and exports, and its manifest, read in a sandbox with default
//! limits and no grants, whether or not the operator allows it yet.

use std::path::Path;

use serde::Serialize;

use crate::Error;
use crate::engine::Host;
use crate::instance::Instance;
use crate::loading::{self, Plugin, PluginInner, sha256_hex};
use crate::manifest::Manifest;
use crate::policy::PluginPolicy;

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
        let path = path.as_ref();
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let sha256 = sha256_hex(&bytes);
        let allowed = self.policy().by_digest(&sha256).cloned();
        let policy = allowed.clone().unwrap_or_else(|| {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            PluginPolicy::new(stem.unwrap_or_default(), sha256.clone())
        });
        let component = loading::compile_component(&self.shared, &policy.name, &file, &bytes)?;
        let ty = component.component_type();
        let engine = &self.shared.engine;
        let exports = ty
            .exports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let imports = ty
            .imports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let (manifest, problem) = match self.describe(&policy, &file, &bytes) {
            Ok(manifest) => (Some(manifest), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(Inspection {
            file,
            size: bytes.len(),
            sha256,
            allowed_as: allowed.map(|p| p.name),
            exports,
            imports,
            manifest,
            problem,
        })
    }

    fn describe(&self, policy: &PluginPolicy, file: &str, bytes: &[u8]) -> Result<Manifest, Error> {
        let (_, pre) = loading::compile(&self.shared, &policy.name, file, bytes)?;
        let plugin = Plugin {
            inner: std::sync::Arc::new(PluginInner {
                policy: PluginPolicy {
                    grants: Default::default(),
                    ..policy.clone()
                },
                file: file.to_owned(),
                pre,
                shared: self.shared.clone(),
            }),
        };
        Instance::instantiate(&plugin).map(|instance| instance.manifest)
    }
}
