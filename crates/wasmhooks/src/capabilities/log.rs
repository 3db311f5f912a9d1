//! `wasmhooks:plugin/log`: plugin messages go to the host's `tracing` log,
//! tagged with the plugin's name. Each version's import (linked in
//! `bindings`) lands in [`PluginLog::record`].

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

impl PluginLog {
    pub(crate) fn new(plugin: &str) -> Self {
        PluginLog {
            plugin: plugin.to_owned(),
            this_call: 0,
            dropped: 0,
        }
    }

    /// Resets the per-call budget; reports what the last call dropped.
    pub(crate) fn begin_call(&mut self) {
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
