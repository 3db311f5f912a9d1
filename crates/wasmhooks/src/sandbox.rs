//! The sandbox around one plugin instance: its store state (WASI's
//! context, the memory cap, captured output, and each capability's state,
//! granted from the operator's policy), the epoch ticker behind wall-clock
//! deadlines, and the reading of traps into causes.

mod limiter;
mod output;
mod ticker;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::capabilities::{Capabilities, CapabilityView, HostWide};
use crate::policy::PluginPolicy;
use crate::{Cause, Error};

pub(crate) use limiter::MemoryCap;
pub(crate) use output::Output;
pub(crate) use ticker::EpochTicker;

/// Everything a plugin's store holds: WASI's context and resource table,
/// the bounds the sandbox keeps on every plugin (its memory cap, its
/// captured stderr), and the state of each capability (`capabilities`).
pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) memory: MemoryCap,
    pub(crate) stderr: Output,
    pub(crate) capabilities: Capabilities,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl CapabilityView for PluginState {
    #[inline]
    fn capabilities(&mut self) -> &mut Capabilities {
        &mut self.capabilities
    }
}

impl PluginState {
    /// A state with exactly the operator's grants: no ambient files,
    /// network, environment, arguments or stdin. `host` is what the
    /// capabilities share among the host's plugins (the key-value store).
    pub(crate) fn new(host: &HostWide, policy: &PluginPolicy) -> Result<Self, Error> {
        let mut wasi = WasiCtxBuilder::new();
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
        let capabilities = Capabilities::grant(host, policy, &mut wasi)?;
        let mut table = ResourceTable::new();
        // Every file, folder, stream and pollable a plugin holds is an entry;
        // files are descriptors of the host process as well, shared with the
        // host's own checkpoint writes and every other plugin.
        table.set_max_capacity(policy.limits.max_handles);
        Ok(PluginState {
            wasi: wasi.build(),
            table,
            memory: MemoryCap::new(policy.limits.memory_bytes),
            stderr,
            capabilities,
        })
    }

    /// Resets the per-call trackers before a call that must end by
    /// `deadline`.
    pub(crate) fn begin_call(&mut self, deadline: Instant) {
        self.memory.begin_call();
        self.stderr.begin_call();
        self.capabilities.begin_call(deadline);
    }

    /// What the capabilities check after a call that returned in time (the
    /// read-write folders' quotas).
    pub(crate) fn end_call(&mut self) -> Result<(), Cause> {
        self.capabilities.end_call()
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
