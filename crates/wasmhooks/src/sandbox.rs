//! The sandbox around one plugin instance: its store state, memory cap,
//! captured output, WASI grants, the epoch ticker behind wall-clock
//! deadlines, and the reading of traps into causes.

mod limiter;
mod output;
mod ticker;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::capabilities::clocks::{DeadlineView, MonotonicClock};
use crate::capabilities::log::PluginLog;
use crate::policy::PluginPolicy;
use crate::{Cause, Error};

pub(crate) use limiter::MemoryCap;
pub(crate) use output::Output;
pub(crate) use ticker::EpochTicker;

/// Entries a read-write folder may hold; past this the quota check would
/// take longer than the calls it guards.
const MAX_QUOTA_ENTRIES: usize = 10_000;

/// A read-write folder and its quota, checked after every call.
pub(crate) struct Quota {
    guest: String,
    root: crate::files::Root,
    limit: u64,
    /// What it held when the plugin started.
    start: u64,
    /// What it held after the last check.
    now: u64,
}

/// Everything a plugin's store holds.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) memory: MemoryCap,
    pub(crate) quotas: Vec<Quota>,
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
        let grants = &policy.grants;
        let mut quotas = Vec::new();
        let dirs = (grants.read.iter().map(|d| (d, FsPerms::ReadOnly)))
            .chain(grants.read_write.iter().map(|d| (d, FsPerms::ReadWrite)));
        for (dir, perms) in dirs {
            let grant_error = |reason: String| Error::Grant {
                name: policy.name.clone(),
                what: match perms {
                    FsPerms::ReadOnly => format!("read access to {}", dir.host.display()),
                    FsPerms::ReadWrite => format!("read-write access to {}", dir.host.display()),
                },
                reason,
            };
            if !dir.host.is_dir() {
                return Err(grant_error("no such folder".into()));
            }
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| grant_error(e.to_string()))?;
            if perms == FsPerms::ReadWrite {
                let root =
                    crate::files::Root::open(&dir.host).map_err(|e| grant_error(e.to_string()))?;
                let held = root
                    .usage(MAX_QUOTA_ENTRIES)
                    .map_err(|e| grant_error(e.to_string()))?
                    .bytes;
                quotas.push(Quota {
                    guest: dir.guest.clone(),
                    root,
                    limit: policy.limits.readwrite_quota_bytes,
                    start: held,
                    now: held,
                });
            }
        }
        for name in &policy.grants.env {
            if let Ok(value) = std::env::var(name) {
                wasi.env(name, value);
            }
        }
        let mut table = ResourceTable::new();
        // Every file, folder, stream and pollable a plugin holds is an entry;
        // files are descriptors of the host process as well, shared with the
        // host's own checkpoint writes and every other plugin.
        table.set_max_capacity(policy.limits.max_handles);
        Ok(PluginState {
            wasi: wasi.build(),
            table,
            memory: MemoryCap::new(policy.limits.memory_bytes),
            quotas,
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

    /// Checks every read-write folder against its quota after a call: what
    /// a call wrote past it fails the call (and every later one, until the
    /// folder is back under).
    pub(crate) fn check_quotas(&mut self) -> Result<(), Cause> {
        for q in &mut self.quotas {
            let usage = q
                .root
                .usage(MAX_QUOTA_ENTRIES)
                .map_err(|e| Cause::QuotaExceeded {
                    folder: q.guest.clone(),
                    used: format!("something the host cannot count ({e})"),
                    limit: format!("{} bytes", q.limit),
                })?;
            q.now = usage.bytes;
            if usage.entries > MAX_QUOTA_ENTRIES {
                return Err(Cause::QuotaExceeded {
                    folder: q.guest.clone(),
                    used: format!("more than {MAX_QUOTA_ENTRIES} entries"),
                    limit: format!("{MAX_QUOTA_ENTRIES} entries"),
                });
            }
            if usage.bytes > q.limit {
                return Err(Cause::QuotaExceeded {
                    folder: q.guest.clone(),
                    used: format!("{} bytes", usage.bytes),
                    limit: format!("{} bytes", q.limit),
                });
            }
        }
        Ok(())
    }

    /// Bytes the plugin's read-write folders grew by since it started.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.quotas
            .iter()
            .map(|q| q.now.saturating_sub(q.start))
            .sum()
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
