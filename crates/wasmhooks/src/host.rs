//! The `Host`: one wasmtime engine, the linker with every capability a plugin
//! may import, the operator's policy and the engine's place with the
//! process's epoch ticker, shared by every plugin loaded through it.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine, Strategy};

use crate::Error;
use crate::capabilities::kv::KvStore;
use crate::capabilities::{Capabilities, HostWide};
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
    pub(crate) compile_cache: Option<CompileCache>,
    /// The process it was made in: a forked child cannot use it.
    pub(crate) pid: u32,
    /// In a process forked from the one that first made a host, the tokio
    /// runtime WASI's waits run on (entered around every call): WASI's own
    /// is global, and in such a child it may be the parent's, whose threads
    /// are not there to wake a wait (a plugin's sleep hung forever).
    pub(crate) runtime: Option<tokio::runtime::Runtime>,
    /// What the capabilities share among every plugin and instance made
    /// through this host: the key-value store.
    pub(crate) capabilities: HostWide,
    _ticker: EpochTicker,
}

/// Where compiled plugins are kept, and the part of each entry's name that
/// changes with the engine's settings and the wasmtime version.
pub(crate) struct CompileCache {
    pub(crate) dir: PathBuf,
    pub(crate) engine_hash: String,
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
    /// load. Each entry is the plugin's compiled code as wasmtime serializes
    /// it, named by the plugin's sha256 and a hash of the engine's settings
    /// and wasmtime version, and a load maps it from its file rather than
    /// reading and decompressing it (a Rust plugin: about 0.2 ms against
    /// 1.8 ms through wasmtime's own compressed cache). The folder is
    /// trusted like the host binary, since it holds native code.
    pub fn with_compile_cache(policy: Policy, dir: impl Into<PathBuf>) -> Result<Self, Error> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| Error::CompileCache {
            dir: dir.clone(),
            source,
        })?;
        Self::build(policy, Some(dir))
    }

    fn build(policy: Policy, compile_cache: Option<PathBuf>) -> Result<Self, Error> {
        Ok(Host {
            shared: Arc::new(Shared::new(policy, compile_cache, Strategy::Cranelift)?),
        })
    }

    /// The operator's policy this host enforces.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// The folder compiled plugins are kept in, if any: plugins pulled from
    /// a registry are kept there too, so a machine pulls each once.
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.shared.compile_cache.as_ref().map(|c| c.dir.as_path())
    }

    /// The key-value store plugins keep state in (contract 0.3.0's `kv`):
    /// a namespace per plugin, shared by every instance made through this
    /// host (and its clones). A serving replica syncs it with the other
    /// replicas' through [`KvStore::take_changes`] and
    /// [`KvStore::apply_snapshot`].
    pub fn kv(&self) -> &Arc<KvStore> {
        &self.shared.capabilities.kv
    }
}

impl Shared {
    /// An engine of `strategy` with the plugin linker and its ticker: the
    /// host's own (Cranelift: plugins run many times), or, for `describe` of
    /// a file nobody allowed, Winch (its baseline compiler compiles an
    /// interpreter's 20 MB five times faster, and `describe` runs once).
    pub(crate) fn new(
        policy: Policy,
        compile_cache: Option<PathBuf>,
        strategy: Strategy,
    ) -> Result<Self, Error> {
        let mut config = Config::new();
        config
            .strategy(strategy)
            .consume_fuel(true)
            .epoch_interruption(true)
            .parallel_compilation(!forked());
        let engine = Engine::new(&config).map_err(Error::Engine)?;
        let compile_cache = compile_cache.map(|dir| {
            let mut hasher = std::hash::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            CompileCache {
                dir,
                engine_hash: format!("{:016x}", hasher.finish()),
            }
        });
        let linker = plugin_linker(&engine).map_err(Error::Engine)?;
        let ticker = EpochTicker::start(&engine).map_err(|source| Error::Thread {
            what: "epoch ticker",
            source,
        })?;
        let runtime = if forked() {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("wasmhooks-wasi")
                .enable_time()
                .enable_io()
                .build()
                .map_err(|source| Error::Thread {
                    what: "WASI runtime",
                    source,
                })?;
            Some(runtime)
        } else {
            None
        };
        Ok(Shared {
            engine,
            linker,
            policy,
            compile_cache,
            pid: std::process::id(),
            runtime,
            capabilities: HostWide::default(),
            _ticker: ticker,
        })
    }
}

/// Whether this process is a child forked from the one that first made a
/// host. Such a child inherits that process's thread pools (rayon's, for
/// parallel compilation; tokio's, for WASI's waits) without their threads,
/// so a host made there compiles on its own thread and runs WASI's waits
/// on a runtime of its own.
fn forked() -> bool {
    static FIRST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *FIRST.get_or_init(std::process::id) != std::process::id()
}

impl Shared {
    /// Refuses a host made in another process (before a fork).
    pub(crate) fn here(&self) -> Result<(), Error> {
        if self.pid == std::process::id() {
            Ok(())
        } else {
            Err(Error::Forked { made_in: self.pid })
        }
    }
}

fn plugin_linker(engine: &Engine) -> wasmtime::Result<Linker<PluginState>> {
    let mut linker = Linker::<PluginState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    // After WASI's: some capabilities shadow its functions.
    Capabilities::add_to_linker(&mut linker)?;
    Ok(linker)
}
