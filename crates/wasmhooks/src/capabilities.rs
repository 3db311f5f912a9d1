//! Host capabilities, each a module that owns its part of the operator's
//! policy, its linking and its checks: `folders` (read and read-write
//! grants, with quotas), `env` (environment variables by name), `log`
//! (messages into the host's log), `clocks` (a monotonic clock the deadline
//! cuts short) and `filesystem` (WASI's `open-at`, refusing what is not a
//! file or a folder; file writes on the calling thread; what may change a
//! folder, noted for the quotas). Each takes only what it needs of the
//! policy.

pub(crate) mod clocks;
pub(crate) mod env;
pub(crate) mod filesystem;
pub(crate) mod folders;
pub(crate) mod log;
