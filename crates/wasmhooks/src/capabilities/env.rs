//! Host environment variables a plugin may see: the operator's `env`
//! grant, by name. A plugin sees nothing else of the host's environment.

use wasmtime_wasi::WasiCtxBuilder;

use super::Capability;
use crate::Error;
use crate::policy::PluginPolicy;

/// No state: WASI holds the variables it was given.
pub(crate) struct Env;

impl Capability for Env {
    /// Passes each named variable the host has, with its value, into
    /// `wasi`; names the host lacks are left out.
    fn grant(policy: &PluginPolicy, wasi: &mut WasiCtxBuilder) -> Result<Self, Error> {
        for name in &policy.grants.env {
            if let Ok(value) = std::env::var(name) {
                wasi.env(name, value);
            }
        }
        Ok(Env)
    }
}
