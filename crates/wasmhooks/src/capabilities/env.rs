//! Host environment variables a plugin may see: the operator's `env`
//! grant, by name. A plugin sees nothing else of the host's environment.

use wasmtime_wasi::WasiCtxBuilder;

/// Passes each named variable the host has, with its value, into `wasi`;
/// names the host lacks are left out.
pub(crate) fn grant(wasi: &mut WasiCtxBuilder, names: &[String]) {
    for name in names {
        if let Ok(value) = std::env::var(name) {
            wasi.env(name, value);
        }
    }
}
