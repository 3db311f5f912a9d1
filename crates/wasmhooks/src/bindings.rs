//! Generated bindings for the `wasmhooks:plugin` world. Private: the public
//! API speaks in its own types (`Manifest`, `DataMap`), so a WIT change does
//! not ripple into every embedder.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
});

pub(crate) use self::wasmhooks::plugin::{log, types};

/// The world's name and version, for messages.
pub(crate) const WORLD: &str = "wasmhooks:plugin/hooks@0.1.0";
