//! Loading: read a `.wasm`, check its digest against the operator's
//! allowlist before anything else, compile it, and check it fits the world.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::Error;
use crate::bindings::{PluginPre, WORLD};
use crate::engine::{Host, Shared};
use crate::policy::PluginPolicy;
use crate::sandbox::PluginState;

/// A plugin that passed the allowlist and compiled: ready to instantiate,
/// as many times as jobs need. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) inner: Arc<PluginInner>,
}

pub(crate) struct PluginInner {
    pub(crate) policy: PluginPolicy,
    pub(crate) file: String,
    pub(crate) pre: PluginPre<PluginState>,
    pub(crate) shared: Arc<Shared>,
}

impl Plugin {
    /// The name the operator allowed it under.
    pub fn name(&self) -> &str {
        &self.inner.policy.name
    }

    /// Its sha256, lowercase hex.
    pub fn digest(&self) -> &str {
        &self.inner.policy.sha256
    }

    /// Where it was loaded from.
    pub fn file(&self) -> &str {
        &self.inner.file
    }

    /// The operator's limits, error policy and grants for it.
    pub fn policy(&self) -> &PluginPolicy {
        &self.inner.policy
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name())
            .field("digest", &self.digest())
            .field("file", &self.file())
            .finish()
    }
}

/// The sha256 of `bytes`, lowercase hex: what the operator pins.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

impl Host {
    /// Loads a plugin file. The digest is checked before the bytes are
    /// compiled, so an unlisted or tampered file never reaches the compiler.
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<Plugin, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load_bytes(&path.display().to_string(), &bytes)
    }

    /// Loads a plugin from bytes; `file` names them in messages.
    pub fn load_bytes(&self, file: &str, bytes: &[u8]) -> Result<Plugin, Error> {
        let digest = sha256_hex(bytes);
        let policy = match self.policy().by_digest(&digest) {
            Some(p) => p.clone(),
            None => return Err(self.refusal(file, digest)),
        };
        let (_, pre) = compile(&self.shared, &policy.name, file, bytes)?;
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                policy,
                file: file.to_owned(),
                pre,
                shared: self.shared.clone(),
            }),
        })
    }

    /// Why a digest is refused: a file named like an allowed plugin was
    /// changed; anything else is simply not allowed.
    fn refusal(&self, file: &str, digest: String) -> Error {
        let stem = Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().replace('_', "-"))
            .unwrap_or_default();
        match self.policy().by_name(&stem) {
            Some(allowed) => Error::DigestMismatch {
                name: allowed.name.clone(),
                file: file.to_owned(),
                expected: allowed.sha256.clone(),
                actual: digest,
            },
            None => Error::Unlisted {
                file: file.to_owned(),
                digest,
            },
        }
    }
}

/// Compiles bytes and matches them against the `wasmhooks:plugin` world.
pub(crate) fn compile(
    shared: &Shared,
    name: &str,
    file: &str,
    bytes: &[u8],
) -> Result<(Component, PluginPre<PluginState>), Error> {
    let component = compile_component(shared, name, file, bytes)?;
    let wrong = |e: wasmtime::Error| Error::WrongInterface {
        name: name.to_owned(),
        file: file.to_owned(),
        world: WORLD,
        reason: format!("{e:#}"),
    };
    let instance_pre = shared.linker.instantiate_pre(&component).map_err(wrong)?;
    let pre = PluginPre::new(instance_pre).map_err(wrong)?;
    Ok((component, pre))
}

pub(crate) fn compile_component(
    shared: &Shared,
    name: &str,
    file: &str,
    bytes: &[u8],
) -> Result<Component, Error> {
    let invalid = |reason: String| Error::Invalid {
        name: name.to_owned(),
        file: file.to_owned(),
        reason,
    };
    if bytes.get(..4) != Some(b"\0asm") {
        return Err(invalid(
            "it does not start with the wasm magic number".into(),
        ));
    }
    if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Err(invalid(
            "it is a core wasm module, not a component; build for wasm32-wasip2, \
             or wrap it with `wasm-tools component new`"
                .into(),
        ));
    }
    Component::from_binary(&shared.engine, bytes).map_err(|e| invalid(format!("{e:#}")))
}
