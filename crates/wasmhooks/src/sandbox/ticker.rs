//! The epoch ticker: one thread per process that advances the epoch of
//! every live engine every `TICK`, which is what makes wall-clock deadlines
//! fire inside running wasm. One for all: a process holds a host per
//! pipeline runner, worker or callback, and a thread each woke 500 times a
//! second for nothing. It ends by itself, within a tick, once no engine
//! is registered.

use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use wasmtime::{Engine, EngineWeak};

/// How often the epoch advances; deadlines are rounded up to it.
pub(crate) const TICK: Duration = Duration::from_millis(2);

/// The engines one process's ticker advances. A child forked from that
/// process has neither its thread nor, if that thread held it at the fork,
/// a usable lock (waiting on it would hang the child's first host): so a
/// registry belongs to the process that made it, and a child makes its own.
struct Registry {
    pid: u32,
    ticking: Mutex<Ticking>,
}

#[derive(Default)]
struct Ticking {
    engines: Vec<(u64, EngineWeak)>,
    next: u64,
    /// Whether this registry's thread runs.
    running: bool,
}

impl Registry {
    fn new() -> Self {
        Registry {
            pid: std::process::id(),
            ticking: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ticking> {
        self.ticking.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

static REGISTRY: LazyLock<ArcSwap<Registry>> =
    LazyLock::new(|| ArcSwap::from_pointee(Registry::new()));

/// This process's registry (a fresh one, the first time a forked child
/// asks). Read without a lock, so a fork at any moment leaves it readable.
fn registry() -> Arc<Registry> {
    let current = REGISTRY.load_full();
    if current.pid == std::process::id() {
        return current;
    }
    REGISTRY.rcu(|current| {
        if current.pid == std::process::id() {
            current.clone()
        } else {
            Arc::new(Registry::new())
        }
    });
    REGISTRY.load_full()
}

/// An engine's registration with the ticker; dropping it ends the ticks.
pub(crate) struct EpochTicker {
    id: u64,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> std::io::Result<Self> {
        let registry = registry();
        let mut ticking = registry.lock();
        if !ticking.running {
            let registry = registry.clone();
            std::thread::Builder::new()
                .name("wasmhooks-epoch".into())
                .spawn(move || tick(&registry))?;
            ticking.running = true;
        }
        let id = ticking.next;
        ticking.next += 1;
        ticking.engines.push((id, engine.weak()));
        Ok(EpochTicker { id })
    }

    /// Ticks a deadline of `timeout` takes, rounded up, plus one for the
    /// partial tick under way.
    pub(crate) fn ticks(timeout: Duration) -> u64 {
        let tick = TICK.as_nanos();
        u64::try_from(timeout.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX / 2) + 1
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        // This process's registry: in a forked child, an engine of the
        // parent's is in none it can see, and nothing is to be done.
        registry().lock().engines.retain(|(id, _)| *id != self.id);
    }
}

/// The ticker's thread: advances every engine of its registry, and ends
/// when none is left.
fn tick(registry: &Registry) {
    loop {
        std::thread::sleep(TICK);
        let mut ticking = registry.lock();
        ticking.engines.retain(|(_, weak)| match weak.upgrade() {
            Some(engine) => {
                engine.increment_epoch();
                true
            }
            None => false,
        });
        if ticking.engines.is_empty() {
            ticking.running = false;
            return;
        }
    }
}
