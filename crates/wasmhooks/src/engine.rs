//! The `Host`: one wasmtime engine, the linker with every capability a plugin
//! may import, the operator's policy and the epoch ticker, shared by every
//! plugin loaded through it.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime::{Cache, CacheConfig, Config, Engine};

use crate::Error;
use crate::capabilities;
use crate::policy::Policy;
use crate::sandbox::{EpochTicker, PluginState};

/// Loads plugins under one operator policy. Cheap to clone; plugins and
/// hook sets keep what they need of it alive.
#[derive(Clone)]
pub struct Host {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<PluginState>,
    pub(crate) policy: Policy,
    _ticker: EpochTicker,
}

impl Host {
    /// Sets up the engine for sandboxed plugins: fuel metering and epoch
    /// deadlines on, WASI with nothing granted by default, and the
    /// `wasmhooks:plugin` imports.
    pub fn new(policy: Policy) -> Result<Self, Error> {
        Self::build(policy, None)
    }

    /// Like [`Host::new`], and keeps compiled plugins in `dir`, so that a
    /// plugin compiles once rather than at every start: a Python plugin
    /// (a whole interpreter) takes seconds to compile and milliseconds to
    /// load. Entries are keyed by the plugin's bytes, the engine's settings
    /// and the wasmtime version; the folder is trusted like the host binary,
    /// since it holds native code.
    pub fn with_compile_cache(policy: Policy, dir: impl Into<PathBuf>) -> Result<Self, Error> {
        Self::build(policy, Some(dir.into()))
    }

    fn build(policy: Policy, cache: Option<PathBuf>) -> Result<Self, Error> {
        let mut config = Config::new();
        config.consume_fuel(true).epoch_interruption(true);
        if let Some(dir) = cache {
            let mut cache = CacheConfig::new();
            cache.with_directory(dir);
            let cache =
                Cache::new(cache).map_err(|e| Error::Engine(format!("compile cache: {e:#}")))?;
            config.cache(Some(cache));
        }
        let engine = Engine::new(&config).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let linker = plugin_linker(&engine).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let ticker = EpochTicker::start(&engine).map_err(|e| Error::Engine(e.to_string()))?;
        Ok(Host {
            shared: Arc::new(Shared {
                engine,
                linker,
                policy,
                _ticker: ticker,
            }),
        })
    }

    /// The operator's policy this host enforces.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }
}

fn plugin_linker(engine: &Engine) -> wasmtime::Result<Linker<PluginState>> {
    let mut linker = Linker::<PluginState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    capabilities::clocks::add_to_linker(&mut linker)?;
    capabilities::filesystem::add_to_linker(&mut linker)?;
    capabilities::log::add_to_linker(&mut linker, |state| &mut state.log)?;
    Ok(linker)
}
