//! Host capabilities a plugin imports beyond WASI. Each is an `add_to_linker`
//! over a view of the store state, so more can be added side by side.

pub(crate) mod clocks;
pub(crate) mod filesystem;
pub(crate) mod log;
