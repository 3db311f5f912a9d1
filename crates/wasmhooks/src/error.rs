//! Errors of the host library. Every message names the plugin (or the file,
//! before a plugin has a name) and says what went wrong in words.

use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong while loading, checking or calling plugins.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operator config could not be read or is not valid.
    #[error("operator config {source_name}: {message}")]
    Policy {
        /// The file, or `<inline>`.
        source_name: String,
        /// What is wrong, with the line where the parser knows it.
        message: String,
    },
    /// A plugin file could not be read.
    #[error("cannot read plugin file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No plugin with this digest is on the operator's allowlist.
    #[error(
        "plugin file {file} (sha256 {digest}) is not on the operator's allowlist; \
         an operator can allow it with `wasmhooks digest {file}`"
    )]
    Unlisted {
        /// The file (or label) the bytes came from.
        file: String,
        /// Its sha256, hex.
        digest: String,
    },
    /// Not pinned, and no signature of a publisher the operator trusts.
    #[error(
        "plugin file {file} (sha256 {digest}) is not pinned by the operator, and {reason}; \
         expected a signature by {expected}"
    )]
    Unsigned {
        /// The file (or label) the bytes came from.
        file: String,
        /// Its sha256, hex.
        digest: String,
        /// What the signature check found.
        reason: String,
        /// The publishers and keys (fingerprints) that would have allowed it.
        expected: String,
    },
    /// The file carries an allowed plugin's name but not its pinned bytes.
    #[error(
        "plugin '{name}': {file} has sha256 {actual}, but the operator pinned {expected}; \
         the file was changed or rebuilt, so it is refused"
    )]
    DigestMismatch {
        /// The allowed plugin the file claims to be.
        name: String,
        /// The file.
        file: String,
        /// The digest the operator pinned.
        expected: String,
        /// The digest of the file's bytes.
        actual: String,
    },
    /// The bytes are not a WebAssembly component this host can compile.
    #[error("plugin '{name}': {file} is not a valid WebAssembly component: {reason}")]
    Invalid {
        /// The plugin's allowed name.
        name: String,
        /// The file.
        file: String,
        /// The decoder's or compiler's words.
        reason: String,
    },
    /// The component does not fit the `wasmhooks:plugin` world.
    #[error("plugin '{name}': {file} does not implement {world}: {reason}")]
    WrongInterface {
        /// The plugin's allowed name.
        name: String,
        /// The file.
        file: String,
        /// The interface expected, with the versions this host links.
        world: String,
        /// What is missing or mistyped.
        reason: String,
    },
    /// The component was built against a version of the WIT package this
    /// host does not link.
    #[error(
        "plugin '{name}': {file} targets wasmhooks:plugin@{targets}, which this host does not \
         run; it runs {supported}"
    )]
    UnsupportedVersion {
        /// The plugin's allowed name.
        name: String,
        /// The file.
        file: String,
        /// The version the plugin exports its hooks at.
        targets: String,
        /// The versions this host links, comma-separated.
        supported: String,
    },
    /// The plugin's manifest is unusable or contradicts the operator config.
    #[error("plugin '{name}': bad manifest: {reason}")]
    Manifest {
        /// The plugin's allowed name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A grant in the operator config cannot be given (a missing folder, say).
    #[error("plugin '{name}': cannot grant {what}: {reason}")]
    Grant {
        /// The plugin.
        name: String,
        /// The grant.
        what: String,
        /// Why not.
        reason: String,
    },
    /// A call into a plugin failed and the operator's policy for it is `fail`.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The job lists the same plugin twice.
    #[error("plugin '{0}' is listed twice in the job")]
    Duplicate(String),
    /// The WebAssembly engine (or the linker of the plugins' imports) could
    /// not be set up.
    #[error("cannot set up the WebAssembly engine: {0:#}")]
    Engine(#[source] wasmtime::Error),
    /// The compile cache's folder cannot be created.
    #[error("cannot use {} as the compile cache: {source}", dir.display())]
    CompileCache {
        /// The folder.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A host made before this process was forked, used in the child: its
    /// threads (the epoch ticker's, WASI's runtime's) are in the parent.
    #[error(
        "this host was made in process {made_in}, before it was forked: its threads are not in \
         this one; make a Host in this process"
    )]
    Forked {
        /// The process it was made in.
        made_in: u32,
    },
    /// A thread the host needs (the epoch ticker, the observer worker)
    /// could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// A failed call into one plugin: who, where, and why. The data map is left as
/// it was before the call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("plugin '{plugin}' failed in {call}: {cause}")]
pub struct CallError {
    /// The plugin's name.
    pub plugin: String,
    /// Which call failed.
    pub call: Call,
    /// What went wrong.
    pub cause: Cause,
}

/// Which call into a plugin failed; displayed as the WIT names it
/// (`init`, `save-state`, `phase 'on_step_end'`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Call {
    /// Instantiating the component (its start function, its imports).
    Instantiation,
    /// `describe`.
    Describe,
    /// `init`.
    Init,
    /// `on-phase`, at this phase.
    Phase(String),
    /// `save-state`.
    SaveState,
    /// `load-state`.
    LoadState,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Instantiation => f.write_str("instantiation"),
            Call::Describe => f.write_str("describe"),
            Call::Init => f.write_str("init"),
            Call::Phase(phase) => write!(f, "phase '{phase}'"),
            Call::SaveState => f.write_str("save-state"),
            Call::LoadState => f.write_str("load-state"),
        }
    }
}

/// Why a plugin call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Cause {
    /// The call used all the fuel the operator allows per call.
    #[error("ran out of fuel ({limit} units per call): it computes too long or loops forever")]
    OutOfFuel {
        /// Fuel allowed per call.
        limit: u64,
    },
    /// The plugin tried to grow its memory past the operator's cap.
    #[error("exceeded its memory limit of {limit} bytes (asked for {requested} bytes)")]
    MemoryLimit {
        /// Bytes allowed.
        limit: usize,
        /// Bytes the failed growth asked for in all.
        requested: usize,
    },
    /// The call ran past its wall-clock deadline.
    #[error("ran past its wall-clock deadline of {}", humanize(*timeout))]
    Timeout {
        /// The deadline per call.
        timeout: Duration,
    },
    /// The plugin's call stack overflowed.
    #[error("overflowed its call stack (unbounded or too deep recursion)")]
    StackOverflow,
    /// The plugin aborted (a Rust panic, a Python exception that escaped, an
    /// `abort()` in C...). `message` is what it printed to stderr last.
    #[error("crashed{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Crashed {
        /// The tail of the plugin's stderr, if it printed anything.
        message: Option<String>,
    },
    /// Any other trap.
    #[error("trapped: {0}")]
    Trap(String),
    /// The plugin returned an error of its own.
    #[error("returned an error: {0}")]
    Returned(String),
    /// The host failed the call, not the plugin (its background worker
    /// stopped, say).
    #[error("could not be called: {0}")]
    Host(String),
    /// Restarted after a trap, the plugin described itself (its phases, the
    /// keys it reads) differently from its first instance, which the hooks
    /// route and pass values by.
    #[error("restarted after a trap, it describes itself differently than when it started")]
    ChangedManifest,
    /// The plugin tried to write a key it has no grant for.
    #[error("tried to write key '{key}' without a grant (it may write: {allowed})")]
    ForbiddenKey {
        /// The key.
        key: String,
        /// The patterns the operator granted, comma-separated, or `nothing`.
        allowed: String,
    },
    /// A value did not have the type the key schema gives its key (boxed:
    /// every error carries a `Cause`, and this one is the largest).
    #[error("{0}")]
    WrongType(Box<TypeMismatch>),
    /// The plugin wrote a key only the host provides, under a pattern grant.
    #[error(
        "tried to write '{key}', which the host provides; only a grant naming it exactly allows that"
    )]
    HostKey {
        /// The key.
        key: String,
    },
    /// A value was not valid JSON.
    #[error("returned invalid JSON for key '{key}': {reason}")]
    InvalidJson {
        /// The key.
        key: String,
        /// The parser's words.
        reason: String,
    },
    /// A key was empty, too long or had control characters.
    #[error("returned an invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key, as returned.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The updates were larger than the operator allows.
    #[error("returned {size} bytes of updates, over the limit of {limit} bytes")]
    TooLarge {
        /// Bytes returned.
        size: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// The plugin called `exit` (WASI's `proc_exit`).
    #[error("the plugin exited with status {0}")]
    Exited(i32),
    /// `save-state` returned more than the operator allows.
    #[error("returned {size} bytes of state, over the limit of {limit} bytes")]
    StateTooLarge {
        /// Bytes returned.
        size: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// The updates would make plugins' keys in the data map larger than the
    /// operator allows a job.
    #[error(
        "its updates would bring the plugins' keys in the data map to {size} bytes, \
         over the job's limit of {limit} bytes"
    )]
    DataMapFull {
        /// Bytes plugins' keys would take.
        size: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// A read-write folder holds more than the operator allows.
    #[error("its read-write folder {folder} holds {used}, over its quota of {limit}")]
    QuotaExceeded {
        /// The folder as the plugin sees it.
        folder: String,
        /// What it holds, in words (bytes or entries).
        used: String,
        /// What it may hold.
        limit: String,
    },
}

fn humanize(d: Duration) -> String {
    if d.as_millis() < 10_000 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// A value of the wrong type for its key, as the key schema says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("set '{key}' to {found}, but {key} must be {expected} (the key schema)")]
pub struct TypeMismatch {
    /// The key.
    pub key: String,
    /// The type the schema gives it, in words.
    pub expected: String,
    /// What the plugin gave, in words.
    pub found: String,
}
