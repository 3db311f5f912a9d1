//! Errors of the lifecycles.

use std::path::PathBuf;

/// Why a lifecycle stopped short.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// A plugin failed under the `fail` policy, or could not start.
    #[error(transparent)]
    Hook(#[from] wasmhooks::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The job's configuration or data is unusable.
    #[error("{0}")]
    Config(String),
    /// Ranks of a multi-process job lost touch.
    #[error("rank {rank}: {message}")]
    Collective {
        /// The rank that saw it.
        rank: usize,
        /// What happened.
        message: String,
    },
}

impl LifecycleError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| LifecycleError::Io { path, source }
    }
}
