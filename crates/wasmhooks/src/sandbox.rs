//! The sandbox around one plugin instance: its store state, memory cap,
//! captured output, WASI grants, the epoch ticker behind wall-clock
//! deadlines, and the reading of traps into causes.

mod limiter;
mod output;
mod ticker;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::capabilities::clocks::{DeadlineView, MonotonicClock};
use crate::capabilities::env;
use crate::capabilities::filesystem::{FileStreams, WritesView};
use crate::capabilities::folders::Folders;
use crate::capabilities::log::PluginLog;
use crate::policy::PluginPolicy;
use crate::{Cause, Error};

pub(crate) use limiter::MemoryCap;
pub(crate) use output::Output;
pub(crate) use ticker::EpochTicker;

/// Entries a read-write folder may hold; past this the quota check would
/// take longer than the calls it guards.
/// Everything a plugin's store holds.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) memory: MemoryCap,
    pub(crate) folders: Folders,
    file_streams: FileStreams,
    pub(crate) log: PluginLog,
    pub(crate) stderr: Output,
    clock: MonotonicClock,
    deadline: Instant,
}

impl DeadlineView for PluginState {
    fn clock(&self) -> &MonotonicClock {
        &self.clock
    }

    fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl WritesView for PluginState {
    fn changed(&mut self) {
        self.folders.changed();
    }

    fn appended(&mut self, bytes: u64) {
        self.folders.appended(bytes);
    }

    fn may_grow(&mut self, bytes: u64) -> bool {
        let streams = &mut self.file_streams;
        self.folders.may_grow(bytes, || streams.unlinked_bytes())
    }

    fn file_streams(&mut self) -> &mut FileStreams {
        &mut self.file_streams
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl PluginState {
    /// A state with exactly the operator's grants: no ambient files,
    /// network, environment, arguments or stdin.
    pub(crate) fn new(policy: &PluginPolicy) -> Result<Self, Error> {
        let mut wasi = WasiCtxBuilder::new();
        let clock = MonotonicClock::new();
        wasi.monotonic_clock(clock.clone());
        let stdout = Output::new(Arc::from(policy.name.as_str()), "stdout");
        let stderr = Output::new(Arc::from(policy.name.as_str()), "stderr");
        wasi.stdout(stdout).stderr(stderr.clone());
        // Sockets are denied by WasiCtxBuilder's defaults; say so explicitly.
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        // Calls are synchronous: the caller waits for a file operation
        // either way, so doing it on this thread saves handing each write
        // to tokio's blocking pool and back (about 20 µs a line for a
        // logging plugin). It bounds nothing less: a call's deadline never
        // interrupted a host call in progress.
        wasi.allow_blocking_current_thread(true);
        let grants = &policy.grants;
        let folders = Folders::grant(
            &mut wasi,
            &policy.name,
            &grants.read,
            &grants.read_write,
            policy.limits.readwrite_quota_bytes,
        )?;
        env::grant(&mut wasi, &grants.env);
        let mut table = ResourceTable::new();
        // Every file, folder, stream and pollable a plugin holds is an entry;
        // files are descriptors of the host process as well, shared with the
        // host's own checkpoint writes and every other plugin.
        table.set_max_capacity(policy.limits.max_handles);
        Ok(PluginState {
            wasi: wasi.build(),
            table,
            memory: MemoryCap::new(policy.limits.memory_bytes),
            folders,
            file_streams: FileStreams::default(),
            log: PluginLog::new(&policy.name),
            stderr,
            clock,
            deadline: Instant::now(),
        })
    }

    /// Resets the per-call trackers before a call that must end by
    /// `deadline`.
    pub(crate) fn begin_call(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.memory.begin_call();
        self.log.begin_call();
        self.stderr.begin_call();
    }

    /// Checks the read-write folders' quotas after a call.
    pub(crate) fn check_quotas(&mut self) -> Result<(), Cause> {
        let streams = &mut self.file_streams;
        self.folders.check(|| streams.unlinked_bytes())
    }

    /// Bytes its read-write folders grew by since it started.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.folders.bytes_written()
    }
}

/// Reads a failed call's error as a cause a person understands.
pub(crate) fn classify(err: &wasmtime::Error, state: &PluginState, policy: &PluginPolicy) -> Cause {
    // With its wasm backtrace, for whoever debugs the plugin.
    tracing::debug!(plugin = %policy.name, "call failed: {err:?}");
    if let Some(requested) = state.memory.refused() {
        return Cause::MemoryLimit {
            limit: policy.limits.memory_bytes,
            requested,
        };
    }
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Cause::Exited(exit.0);
    }
    if let Some(wasmtime::component::ResourceTableError::Full) =
        err.downcast_ref::<wasmtime::component::ResourceTableError>()
    {
        return Cause::Trap(format!(
            "held more than {} WASI handles (open files, folders, streams) at once, \
             the operator's max_handles",
            policy.limits.max_handles
        ));
    }
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => Cause::OutOfFuel {
            limit: policy.limits.fuel,
        },
        Some(wasmtime::Trap::Interrupt) => Cause::Timeout {
            timeout: policy.limits.timeout,
        },
        Some(wasmtime::Trap::StackOverflow) => Cause::StackOverflow,
        Some(wasmtime::Trap::UnreachableCodeReached) => Cause::Crashed {
            message: state.stderr.call_tail(),
        },
        Some(wasmtime::Trap::MemoryOutOfBounds) => Cause::Trap(format!(
            "{} (in Rust, C and Zig plugins this is usually a stack overflow: \
             deep recursion ran past the stack kept in linear memory)",
            wasmtime::Trap::MemoryOutOfBounds
        )),
        Some(wasmtime::Trap::CannotLeaveComponent) => Cause::Trap(format!(
            "{} (the plugin called out while the host was passing it arguments or \
             letting it free results, where the component model forbids it; a \
             garbage collector running inside cabi_realloc does this)",
            wasmtime::Trap::CannotLeaveComponent
        )),
        Some(other) => Cause::Trap(other.to_string()),
        // Not a trap: an error a host function raised for the plugin (a
        // resource table full, say). Its root cause, without the wasm
        // backtrace, which went to the debug log above.
        None => Cause::Trap(crate::text::clean(
            &err.root_cause().to_string(),
            crate::text::MESSAGE,
        )),
    }
}
