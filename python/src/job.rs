//! A job bundle for Python: `job.toml` read and checked by the lifecycles
//! crate, the one implementation the CLI uses too.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::convert::to_py;
use crate::errors::{job_err, lifecycle_err};

/// A job bundle's folder and its `job.toml`, read and checked: every path
/// in it stays inside the folder, every number within the range the host
/// can act on, and an error names the field.
#[pyclass(module = "wasmhooks._native", frozen)]
pub(crate) struct Job {
    pub(crate) inner: wasmhooks_lifecycles::job::JobBundle,
}

#[pymethods]
impl Job {
    /// Reads and checks `DIR/job.toml` (at most 1 MiB, a regular file
    /// read without following a symlink).
    #[staticmethod]
    fn load(py: Python<'_>, dir: PathBuf) -> PyResult<Job> {
        py.detach(|| wasmhooks_lifecycles::job::JobBundle::load(&dir))
            .map(|inner| Job { inner })
            .map_err(|e| lifecycle_err(py, e, job_err))
    }

    /// The bundle's folder, absolute.
    #[getter]
    fn dir(&self) -> String {
        self.inner.dir.display().to_string()
    }

    /// The job's name.
    #[getter]
    fn name(&self) -> &str {
        &self.inner.spec.name
    }

    /// `job.toml` as a dict: what every plugin's `init` gets.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.inner.config)
    }

    /// The `[node]` table, checked (defaults filled in, paths relative to
    /// the bundle), or `None`.
    #[getter]
    fn node<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let value =
            serde_json::to_value(&self.inner.spec.node).map_err(|e| job_err(e.to_string()))?;
        to_py(py, &value)
    }

    fn __repr__(&self) -> String {
        format!("Job(name={:?}, dir={:?})", self.inner.spec.name, self.dir())
    }
}
