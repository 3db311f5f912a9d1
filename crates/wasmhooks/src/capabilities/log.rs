//! `wasmhooks:plugin/log`: plugin messages go to the host's `tracing` log,
//! tagged with the plugin's name. Each version's import (generated and
//! linked in `bindings`) lands in [`PluginLog::record`].

use std::time::Instant;

use wasmtime::component::Linker;
use wasmtime_wasi::WasiCtxBuilder;

use super::{Capability, CapabilityView};
use crate::Error;
use crate::policy::PluginPolicy;

/// Longest message kept, in bytes; longer ones are cut.
const MAX_MESSAGE: usize = 4096;
/// Messages kept per call; more are counted but dropped.
const MAX_PER_CALL: usize = 1000;

/// Per-instance log state.
pub(crate) struct PluginLog {
    plugin: String,
    this_call: usize,
    dropped: usize,
}

impl Capability for PluginLog {
    /// Every plugin may log; its messages are tagged with its name.
    fn grant(policy: &PluginPolicy, _: &mut WasiCtxBuilder) -> Result<Self, Error> {
        Ok(PluginLog {
            plugin: policy.name.clone(),
            this_call: 0,
            dropped: 0,
        })
    }

    /// Each version's `log` import, from `bindings` (the interface is
    /// generated per version).
    fn add_to_linker<T: CapabilityView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        crate::bindings::add_log_to_linker(linker)
    }

    /// Resets the per-call budget; reports what the last call dropped.
    #[inline]
    fn begin_call(&mut self, _: Instant) {
        if self.dropped > 0 {
            tracing::warn!(plugin = %self.plugin, dropped = self.dropped, "plugin logged too much; messages dropped");
        }
        self.this_call = 0;
        self.dropped = 0;
    }
}

/// Severity of a message, whichever version of the interface it came by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl PluginLog {
    /// Records one message (each version's `log` import lands here).
    pub(crate) fn record(&mut self, level: Level, message: String) {
        if self.this_call >= MAX_PER_CALL {
            self.dropped += 1;
            return;
        }
        self.this_call += 1;
        let message = crate::text::clean(&message, MAX_MESSAGE);
        let plugin = self.plugin.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "wasmhooks::plugin", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "wasmhooks::plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "wasmhooks::plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "wasmhooks::plugin", plugin, "{message}"),
            Level::Error => tracing::error!(target: "wasmhooks::plugin", plugin, "{message}"),
        }
    }
}
