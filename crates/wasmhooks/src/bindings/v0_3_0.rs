//! `wasmhooks:plugin@0.3.0`, frozen in `wit/v0.3.0/`: 0.2.0's interface
//! (typed scalars, keys and phases by position) and its hooks' shapes,
//! plus the `kv` import, state that outlives a call and a request, kept in
//! the plugin's namespace of the host's store (`capabilities::kv`).

use wasmtime::Store;

use crate::capabilities::kv::{Kv, KvError};
use crate::sandbox::PluginState;

wasmtime::component::bindgen!({
    path: "../../wit/v0.3.0",
    world: "plugin",
});

use self::wasmhooks::plugin::{kv, log, types};

/// The version: the one place it is written on the host's side (a test
/// checks it against the WIT's `package` line).
pub(crate) const VERSION: &str = "0.3.0";

super::unchanged_since_0_1_0!();

/// The hooks' shapes: 0.2.0's, unchanged.
pub(super) const SHAPES: &[(&str, &str)] = super::v0_2_0::SHAPES;

super::typed_since_0_2_0!();

fn lower_error(e: KvError) -> kv::KvError {
    match e {
        KvError::QuotaExceeded => kv::KvError::QuotaExceeded,
        KvError::InvalidKey => kv::KvError::InvalidKey,
        KvError::NotACounter => kv::KvError::NotACounter,
    }
}

impl kv::Host for Kv {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.namespace().get(&key)
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), kv::KvError> {
        self.namespace()
            .set(&key, value, ttl_ms)
            .map_err(lower_error)
    }

    fn delete(&mut self, key: String) {
        self.namespace().delete(&key);
    }

    fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, kv::KvError> {
        self.namespace()
            .increment(&key, delta, ttl_ms)
            .map_err(lower_error)
    }

    fn get_counter(&mut self, key: String) -> Result<i64, kv::KvError> {
        self.namespace().counter(&key).map_err(lower_error)
    }
}

/// Adds the `kv` import, for the `kv` capability.
pub(super) fn add_kv_to_linker<T: crate::capabilities::CapabilityView + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    fn get<T: crate::capabilities::CapabilityView>(state: &mut T) -> &mut Kv {
        &mut state.capabilities().kv
    }
    kv::add_to_linker::<_, HasSelf<Kv>>(linker, get::<T>)
}
