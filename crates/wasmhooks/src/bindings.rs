//! Generated bindings, one module per version of the `wasmhooks:plugin` WIT
//! package this host links. Each released version is frozen in
//! `wit/v<version>/` and keeps its own bindings here, so a plugin built
//! against it runs unchanged on later hosts. Private: the public API speaks
//! in its own types (`Manifest`, `DataMap`), so a WIT change does not ripple
//! into every embedder.

/// `wasmhooks:plugin@0.1.0`, frozen in `wit/v0.1.0/`.
pub(crate) mod v0_1_0 {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "plugin",
    });

    pub(crate) use self::wasmhooks::plugin::{log, types};

    /// The version: the one place it is written on the host's side (a test
    /// checks it against the WIT's `package` line).
    pub(crate) const VERSION: &str = "0.1.0";
}

pub(crate) use v0_1_0::{Plugin, PluginPre, log, types};

/// Every version this host runs plugins of, oldest first.
pub(crate) const SUPPORTED: &[&str] = &[v0_1_0::VERSION];

/// The interface a plugin exports, without its version.
pub(crate) const HOOKS: &str = "wasmhooks:plugin/hooks";

/// The version of the hooks interface a component exports, if it exports
/// one at all: what it was built against.
pub(crate) fn targeted_version(
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
) -> Option<String> {
    component
        .component_type()
        .exports(engine)
        .find_map(|(name, _)| Some(name.strip_prefix(HOOKS)?.strip_prefix('@')?.to_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_version_constant_matches_its_frozen_wit() {
        let wit = include_str!("../../../wit/v0.1.0/plugin.wit");
        let package = format!("package wasmhooks:plugin@{};", super::v0_1_0::VERSION);
        assert!(wit.lines().any(|l| l.trim() == package), "{package}");
    }
}
