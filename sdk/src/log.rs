//! Logging into the host's log, tagged with the plugin's name. Prefer these
//! to `println!`: they carry a level, and the host filters by it.

use crate::bindings::wasmhooks::plugin::{log, types::Level};

/// Logs at trace level.
pub fn trace(message: impl AsRef<str>) {
    log::log(Level::Trace, message.as_ref());
}

/// Logs at debug level.
pub fn debug(message: impl AsRef<str>) {
    log::log(Level::Debug, message.as_ref());
}

/// Logs at info level.
pub fn info(message: impl AsRef<str>) {
    log::log(Level::Info, message.as_ref());
}

/// Logs at warn level.
pub fn warn(message: impl AsRef<str>) {
    log::log(Level::Warn, message.as_ref());
}

/// Logs at error level.
pub fn error(message: impl AsRef<str>) {
    log::log(Level::Error, message.as_ref());
}
