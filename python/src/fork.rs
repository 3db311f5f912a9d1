//! Hooks across `fork`. A forked child has none of its parent's threads:
//! not the observer worker that runs a plugin's background calls, not the
//! epoch ticker that enforces its deadlines, and not a thread that was
//! inside a call and held the hooks' lock. Used from the child, the
//! parent's hooks would hang (waiting for a worker that never runs, or on a
//! lock nobody will release), or run plugins with no deadline. So every
//! fork is counted in the child, and hooks made before it refuse to run
//! there, with an error that says what to do: make a `Host` and `Hooks` in
//! the child (as the pipeline's batch hooks do).

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// Forks this process has been through, counted in each child.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// The fork generation of this process: hooks remember the one they were
/// made in.
pub(crate) fn generation() -> u64 {
    FORKS.load(Ordering::Relaxed)
}

/// Counts a fork; called in the child, before any Python code runs there.
#[pyfunction]
fn _forked() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Registers the count with `os.register_at_fork`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let forked = wrap_pyfunction!(_forked, m)?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("after_in_child", forked)?;
    py.import("os")?
        .getattr("register_at_fork")?
        .call((), Some(&kwargs))?;
    Ok(())
}

/// The error for hooks made in `born` and used in a later generation.
pub(crate) fn check(born: u64) -> PyResult<()> {
    if generation() == born {
        return Ok(());
    }
    Err(PyRuntimeError::new_err(
        "these hooks were made before this process was forked: their plugins' \
         background worker and deadline thread are in the parent, not here. \
         Make a Host and Hooks in the child",
    ))
}
