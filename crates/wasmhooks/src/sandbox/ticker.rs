//! The epoch ticker: one thread per process that advances the epoch of
//! every live engine every `TICK`, which is what makes wall-clock deadlines
//! fire inside running wasm. One for all: a process holds a host per
//! pipeline runner, worker or callback, and a thread each woke 500 times a
//! second for nothing. It ends by itself, within a tick, once no engine
//! is registered.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use wasmtime::{Engine, EngineWeak};

/// How often the epoch advances; deadlines are rounded up to it.
pub(crate) const TICK: Duration = Duration::from_millis(2);

/// The engines the ticker advances, and the process whose thread runs it
/// (a child forked from that process has no such thread).
struct Ticking {
    engines: Vec<(u64, EngineWeak)>,
    next: u64,
    running_in: Option<u32>,
}

static TICKING: Mutex<Ticking> = Mutex::new(Ticking {
    engines: Vec::new(),
    next: 0,
    running_in: None,
});

fn ticking() -> std::sync::MutexGuard<'static, Ticking> {
    TICKING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An engine's registration with the ticker; dropping it ends the ticks.
pub(crate) struct EpochTicker {
    id: u64,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> std::io::Result<Self> {
        let mut ticking = ticking();
        let this = std::process::id();
        if ticking.running_in != Some(this) {
            std::thread::Builder::new()
                .name("wasmhooks-epoch".into())
                .spawn(tick)?;
            ticking.running_in = Some(this);
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
        ticking().engines.retain(|(id, _)| *id != self.id);
    }
}

/// The ticker's thread: advances every registered engine, and ends when
/// none is left.
fn tick() {
    loop {
        std::thread::sleep(TICK);
        let mut ticking = ticking();
        ticking.engines.retain(|(_, weak)| match weak.upgrade() {
            Some(engine) => {
                engine.increment_epoch();
                true
            }
            None => false,
        });
        if ticking.engines.is_empty() {
            ticking.running_in = None;
            return;
        }
    }
}
