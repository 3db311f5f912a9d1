//! Deadline-aware waits. Epoch interruption stops wasm code at its deadline,
//! but a plugin blocked in the host (`std::thread::sleep`, which becomes a
//! WASI clock subscription and a `poll`) runs no wasm code to interrupt. So
//! the two ways to wait on the monotonic clock are shadowed here: a wait
//! never lasts past the current call's deadline, and when it returns, the
//! epoch check in the plugin's code traps with `Timeout` as it should.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{HostMonotonicClock, WasiCtxBuilder};

use super::{Capability, CapabilityView};
use crate::Error;
use crate::policy::PluginPolicy;

/// The interface wasmtime-wasi links; its guests' older 0.2.x imports
/// resolve to it.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A slack past the deadline, so the ticker has advanced the epoch by the
/// time the wait returns.
const SLACK: Duration = Duration::from_millis(5);

/// A plugin's clock, and when the call in progress must end.
pub(crate) struct Clocks {
    clock: MonotonicClock,
    deadline: Instant,
}

impl Capability for Clocks {
    /// Every plugin has the clock; it is not the operator's to grant.
    fn grant(_: &PluginPolicy, wasi: &mut WasiCtxBuilder) -> Result<Self, Error> {
        let clock = MonotonicClock {
            origin: Arc::new(Instant::now()),
        };
        wasi.monotonic_clock(clock.clone());
        Ok(Clocks {
            clock,
            deadline: Instant::now(),
        })
    }

    fn add_to_linker<T: CapabilityView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        add_to_linker(linker)
    }

    #[inline]
    fn begin_call(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }
}

/// A plugin's monotonic clock, with an origin the host can read back.
#[derive(Clone)]
struct MonotonicClock {
    origin: Arc<Instant>,
}

impl MonotonicClock {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(*self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

impl HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.nanos(Instant::now())
    }
}

struct Wake(tokio::time::Instant);

#[wasmtime_wasi::async_trait]
impl Pollable for Wake {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.0).await;
    }
}

/// A pollable ready after `wait`, cut at the call's deadline.
fn wake_after<T: CapabilityView>(
    state: &mut T,
    wait: Duration,
) -> wasmtime::Result<Resource<DynPollable>> {
    let now = Instant::now();
    let deadline = state.capabilities().clocks.deadline;
    let left = deadline.saturating_duration_since(now) + SLACK;
    let until = tokio::time::Instant::from_std(now + wait.min(left));
    let table = state.ctx().table;
    let wake = table.push(Wake(until))?;
    subscribe(table, wake)
}

/// Shadows the monotonic clock's two subscriptions in a linker that already
/// has WASI.
fn add_to_linker<T: CapabilityView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |mut store, (nanos,): (u64,)| {
        Ok((wake_after(store.data_mut(), Duration::from_nanos(nanos))?,))
    })?;
    clock.func_wrap("subscribe-instant", |mut store, (when,): (u64,)| {
        let state = store.data_mut();
        let now = state.capabilities().clocks.clock.now();
        Ok((wake_after(
            state,
            Duration::from_nanos(when.saturating_sub(now)),
        )?,))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}
